/**
 * Browser clients behave as the server expects: headless Chromium opens a page served by the test,
 * whose script uses the browser's own EventSource and WebSocket on /notify (token in the query),
 * receives messages, and resumes with Last-Event-ID after EventSource reconnects by itself.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { hasChromium, launchChromium } from "./support/browser.ts"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import { freePort } from "./support/process.ts"
import { settingsFor, startServer, type TestServer } from "./support/server.ts"

const page = (api: string, token: string) =>
  `<!doctype html><html><body><script>
  window.sse = []; window.ws = []; window.sseOpens = 0
  const es = new EventSource(${JSON.stringify(`${api}/notify?protoc=sse&token=${token}`)})
  es.onopen = () => { window.sseOpens++ }
  es.addEventListener("message", (e) => window.sse.push({ id: e.lastEventId, data: JSON.parse(e.data) }))
  const socket = new WebSocket(${JSON.stringify(`${api.replace("http", "ws")}/notify?protoc=ws&token=${token}`)})
  socket.onopen = () => { window.wsOpen = true }
  socket.onmessage = (e) => window.ws.push(JSON.parse(e.data))
</script></body></html>`

describe.skipIf(!hasChromium)("browser clients", () => {
  let server: TestServer
  let site: Http.Server
  let settings: ReturnType<typeof settingsFor>
  beforeAll(async () => {
    settings = settingsFor("embedded", { port: await freePort() })
    server = await startServer(settings)
  })
  afterAll(async () => {
    site?.close()
    await server?.stop()
  })

  it("EventSource and WebSocket in Chromium receive pushes, and EventSource resumes by Last-Event-ID", async () => {
    const sender = `sender-${crypto.randomUUID()}`
    const reader = `reader-${crypto.randomUUID()}`
    const senderToken = await server.token(sender)
    const readerToken = await server.token(reader, 3)
    const conversation = (await server.post("/inner/create_conversation", { sessions: [sender, reader] })).body.data
      .ConversationId
    const send = async (content: string) =>
      (await server.post("/send_msg", { conversation_id: conversation, content }, senderToken)).body.data
        .MsgID as string

    site = Http.createServer((_, res) => {
      res.writeHead(200, { "content-type": "text/html" })
      res.end(page(server.url, readerToken))
    })
    await new Promise<void>((r) => site.listen(0, "127.0.0.1", r))
    const siteUrl = `http://127.0.0.1:${(site.address() as AddressInfo).port}/`

    const browser = await launchChromium()
    try {
      const tab = await browser.newPage()
      await tab.goto(siteUrl)
      await tab.waitForFunction(() => (window as any).wsOpen === true && (window as any).sseOpens === 1)
      const first = [await send("one"), await send("two")]
      await tab.waitForFunction(() => (window as any).sse.length >= 2 && (window as any).ws.length >= 2)
      const state = await tab.evaluate(() => ({ sse: (window as any).sse, ws: (window as any).ws }))
      assert.deepStrictEqual(state.ws.map((m: any) => m.MsgId), first)
      assert.deepStrictEqual(state.sse.map((e: any) => e.id), first, "lastEventId is the MsgId")
      assert.strictEqual(state.sse[0].data.Content, "one")

      // Restart the server on the same port and data: the page's EventSource reconnects by itself
      // with Last-Event-ID; what is sent before it is back arrives once, by replay or live.
      await server.stop()
      server = await startServer(settings)
      const whileAway = [await send("three"), await send("four")]
      await tab.waitForFunction(() => (window as any).sse.length >= 4, undefined, { timeout: 20_000 })
      const after = await tab.evaluate(() => ({ sse: (window as any).sse, opens: (window as any).sseOpens }))
      assert.isAtLeast(after.opens, 2, "EventSource reconnected")
      assert.deepStrictEqual(
        [...new Set(after.sse.map((e: any) => e.id))],
        [...first, ...whileAway],
        "every message once after dedupe, in order"
      )
    } finally {
      await browser.close()
    }
  })
})
