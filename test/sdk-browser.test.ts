/**
 * The client SDK in a browser: bundled for the browser with `deno bundle`, loaded by a page in
 * headless Chromium from another origin (CORS), it receives its own messages through the async
 * iterator over ws, sse and poll; the token and the conversation come from the backend (the test),
 * and the page's own attempt to call an inner endpoint is refused.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { hasChromium, launchChromium } from "./support/browser.ts"
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Path from "node:path"
import { denoBin, root } from "./support/process.ts"
import { settingsFor, startServer, type TestServer } from "./support/server.ts"

describe.skipIf(!hasChromium)("client SDK in a browser", () => {
  let server: TestServer
  let site: Http.Server
  let bundle: string
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
    const out = Path.join(root, "test/artifacts/sdk-browser.js")
    Fs.mkdirSync(Path.dirname(out), { recursive: true })
    execFileSync(denoBin, [
      "bundle",
      "--platform",
      "browser",
      "--format",
      "esm",
      "-o",
      out,
      Path.join(root, "test/fixtures/sdk-browser.ts")
    ], { cwd: root, stdio: "pipe" })
    bundle = Fs.readFileSync(out, "utf8")
    site = Http.createServer((req, res) => {
      if (req.url === "/sdk.js") {
        res.writeHead(200, { "content-type": "text/javascript" })
        return res.end(bundle)
      }
      res.writeHead(200, { "content-type": "text/html" })
      res.end(`<!doctype html><html><body><script type="module" src="/sdk.js"></script></body></html>`)
    })
    await new Promise<void>((r) => site.listen(0, "127.0.0.1", r))
  }, 120_000)
  afterAll(async () => {
    site?.close()
    await server?.stop()
  })

  it("subscribes and receives over ws, sse and poll from a page", async () => {
    const browser = await launchChromium()
    try {
      const page = await browser.newPage()
      const errors: Array<string> = []
      page.on("pageerror", (e) => errors.push(e.message))
      await page.goto(`http://127.0.0.1:${(site.address() as AddressInfo).port}/`)
      await page.waitForFunction(() => (globalThis as any).quickImScenario !== undefined)
      for (const protocol of ["ws", "sse", "poll"]) {
        const session = `browser-${crypto.randomUUID().slice(0, 8)}`
        const token = await server.token(session)
        const conversation = (await server.post("/inner/create_conversation", { sessions: [session] })).body.data
          .ConversationId
        const received = await page.evaluate(
          ([url, t, c, p]) => (globalThis as any).quickImScenario(url, t, c, p),
          [server.url, token, conversation, protocol]
        )
        assert.deepStrictEqual(received, [`${protocol} one`, `${protocol} two`, `${protocol} three`])
      }
      // The page (another origin, a loopback address) calling an inner endpoint itself with a
      // request that needs no preflight: the browser cannot read the answer, and the server refused it.
      const intruder = `intruder-${crypto.randomUUID().slice(0, 8)}`
      const attempt = await page.evaluate(([url, session]) =>
        fetch(`${url}/inner/create_conversation`, {
          method: "POST",
          headers: { "content-type": "text/plain" },
          body: JSON.stringify({ sessions: [session] })
        }).then((r) => `read ${r.status}`, (e) => `blocked: ${e.message}`), [server.url, intruder])
      assert.match(attempt, /^blocked/)
      const joined = await server.post("/get_joined_conversation", {}, await server.token(intruder))
      assert.deepStrictEqual(joined.body.data.Conversations, [])
      assert.deepStrictEqual(errors, [])
    } finally {
      await browser.close()
    }
  })
})
