/**
 * The web console end to end in headless Chromium against a real server on PostgreSQL: two
 * sessions in two pages sign in, one creates a conversation, the other joins it, and they converse
 * live (one over WebSocket, one over SSE); history pages back; the operator tab shows the cluster
 * view and metrics; a page signs in again with a pasted token. The page mints its tokens through
 * inner/get_token, which QUICKIM_CONSOLE_SIGN_IN opens to it. Screenshots go to test/artifacts/.
 * A second pair of pages shows the read state: the server's unread badges and inbox order, "read
 * by N" under one's own messages, typing, and member changes.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { hasChromium, launchChromium } from "./support/browser.ts"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { root } from "./support/process.ts"
import { settingsFor, startServer, type TestServer } from "./support/server.ts"

/** The page's own `document`, in functions evaluated in the browser. */
declare const document: any

const artifacts = Path.join(root, "test/artifacts")
const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 6)}`

describe.skipIf(!hasChromium)("web console", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres", { consoleSignIn: true }))
    Fs.mkdirSync(artifacts, { recursive: true })
  })
  afterAll(() => server?.stop())

  type Page = Awaited<ReturnType<Awaited<ReturnType<typeof launchChromium>>["newPage"]>>
  /** Signs `session` in on `page` in dev mode, its push over `protocol`; waits until push is connected. */
  const signIn = async (page: Page, session: string, protocol: string) => {
    await page.goto(`${server.url}/console`)
    await page.getByLabel("Session").fill(session)
    await page.getByLabel("Push over").selectOption(protocol)
    await page.getByRole("button", { name: "Sign in" }).click()
    await page.waitForSelector("#chat:not([hidden])")
    await page.waitForFunction(() => document.getElementById("status")!.textContent!.includes("connected"))
  }

  /** Alice over WebSocket and Bob over SSE, each signed in on a page of its own; the pages' script errors. */
  const twoSessions = async (browser: Awaited<ReturnType<typeof launchChromium>>) => {
    const alice = unique("alice")
    const bob = unique("bob")
    const pageA = await (await browser.newContext({ viewport: { width: 1100, height: 720 } })).newPage()
    const pageB = await (await browser.newContext({ viewport: { width: 1100, height: 720 } })).newPage()
    const errors: Array<string> = []
    for (const page of [pageA, pageB]) page.on("pageerror", (e) => errors.push(e.message))
    await signIn(pageA, alice, "ws")
    await signIn(pageB, bob, "sse")
    return { alice, bob, errors, pageA, pageB }
  }

  it("two sessions in two pages converse live; history pages back; the operator tab shows the cluster", async () => {
    const browser = await launchChromium()
    try {
      const { alice, bob, errors, pageA, pageB } = await twoSessions(browser)

      // Every form control has a label a screen reader can announce.
      const unlabeled = await pageA.evaluate(() =>
        [...document.querySelectorAll("input, select")].filter((el: any) =>
          (el as any).labels?.length === 0 && !el.getAttribute("aria-label")
        ).length
      )
      assert.strictEqual(unlabeled, 0)

      await pageA.getByRole("button", { name: "New conversation" }).click()
      await pageA.waitForFunction(() => document.getElementById("room-id")!.textContent!.length > 0)
      const conversation = (await pageA.textContent("#room-id"))!
      await pageB.getByLabel("Join by id").fill(conversation)
      await pageB.getByRole("button", { name: "Join" }).click()
      await pageB.waitForFunction((id) => document.getElementById("room-id")!.textContent === id, conversation)

      const say = async (page: typeof pageA, text: string) => {
        await page.getByLabel("Message", { exact: true }).fill(text)
        await page.keyboard.press("Enter")
      }
      const sees = (page: typeof pageA, text: string) =>
        page.waitForFunction(
          (t) => [...document.querySelectorAll("#messages li p")].some((p) => p.textContent === t),
          text,
          { timeout: 15_000 }
        )
      await say(pageA, "hi bob")
      await sees(pageB, "hi bob")
      await say(pageB, "hi alice, over sse")
      await sees(pageA, "hi alice, over sse")
      await sees(pageA, "hi bob") // the sender's own pages receive too
      // Each message shows once in each page.
      for (const page of [pageA, pageB]) {
        assert.deepStrictEqual(await page.$$eval("#messages li:not(.note) p", (ps) => ps.map((p) => p.textContent)), [
          "hi bob",
          "hi alice, over sse"
        ])
      }
      Fs.writeFileSync(Path.join(artifacts, "console.png"), await pageA.screenshot({ fullPage: true }))

      // History: 40 more messages, then the page shows the newest 30 and pages back to the rest.
      const token = await server.token(alice)
      for (let i = 0; i < 40; i++) {
        await server.post("/send_msg", { conversation_id: conversation, content: `bulk ${i}` }, token)
      }
      // Signing in again with a token the backend minted (what works without QUICKIM_CONSOLE_SIGN_IN).
      await pageB.reload()
      await pageB.getByLabel("Or a token").fill(await server.token(bob))
      await pageB.getByRole("button", { name: "Sign in" }).click()
      await pageB.waitForSelector("#chat:not([hidden])")
      await pageB.getByRole("button", { name: new RegExp(`^${conversation.slice(0, 8)}`) }).click()
      await pageB.waitForFunction(() => document.querySelectorAll("#messages li").length === 30)
      await pageB.getByRole("button", { name: "Load older messages" }).click()
      await pageB.waitForFunction(() => document.querySelectorAll("#messages li").length === 42)
      const texts = await pageB.$$eval("#messages li p", (ps) => ps.map((p) => p.textContent))
      assert.deepStrictEqual(texts.slice(0, 3), ["hi bob", "hi alice, over sse", "bulk 0"])
      assert.strictEqual(texts[41], "bulk 39")

      await pageA.getByRole("tab", { name: "Operator" }).click()
      await pageA.waitForSelector("#nodes tr")
      await pageA.waitForFunction(() =>
        Number(document.querySelector('[data-metric="quickim_sends_total"]')?.textContent?.split(" ")[0]) >= 42
      )
      assert.include(await pageA.textContent("#nodes"), server.url)
      Fs.writeFileSync(Path.join(artifacts, "console-operator.png"), await pageA.screenshot({ fullPage: true }))
      assert.deepStrictEqual(errors, [])
    } finally {
      await browser.close()
    }
  })

  it("a message pushed while a conversation's history loads stays listed after it", async () => {
    const browser = await launchChromium()
    try {
      const { bob, errors, pageA, pageB } = await twoSessions(browser)
      const opened = async (page: typeof pageA, id: string) =>
        await page.waitForFunction((x) => document.getElementById("room-id")!.textContent === x, id)
      const create = async () => {
        const before = await pageA.textContent("#room-id")
        await pageA.getByRole("button", { name: "New conversation" }).click()
        await pageA.waitForFunction((b) => {
          const t = document.getElementById("room-id")!.textContent
          return t.length > 0 && t !== b
        }, before)
        return (await pageA.textContent("#room-id"))!
      }
      const first = await create()
      await pageB.getByLabel("Join by id").fill(first)
      await pageB.getByRole("button", { name: "Join" }).click()
      await opened(pageB, first)
      await create()

      // Alice opens the first again; its history is held on its way back until Bob's message is on screen.
      let held!: () => void
      const fetched = new Promise<void>((resolve) => (held = resolve))
      let release!: () => void
      const released = new Promise<void>((resolve) => (release = resolve))
      await pageA.route("**/get_conversation_last_30_msg", async (route) => {
        const response = await route.fetch()
        held()
        await released
        await route.fulfill({ response })
      })
      await pageA.getByRole("button", { name: new RegExp(`^${first.slice(0, 8)}`) }).click()
      await fetched
      const sent = await server.post(
        "/send_msg",
        { conversation_id: first, content: "while loading" },
        await server.token(bob)
      )
      assert.strictEqual(sent.body.code, 0)
      await pageA.waitForFunction(() =>
        [...document.querySelectorAll("#messages li p")].some((p: any) => p.textContent === "while loading")
      )
      release()
      // The history is in once the compose box has the focus (open's last step but marking read).
      await pageA.waitForFunction(() => document.activeElement?.id === "text")
      const texts = await pageA.$$eval("#messages li p", (ps) => ps.map((p) => p.textContent))
      assert.include(texts, "while loading")
      assert.deepStrictEqual(errors, [])
    } finally {
      await browser.close()
    }
  })

  it("read state: unread badges and inbox order from the server, read by N, typing, member changes", async () => {
    const browser = await launchChromium()
    try {
      const { alice, bob, errors, pageA, pageB } = await twoSessions(browser)
      const roomId = (page: typeof pageA) => page.textContent("#room-id")
      const newConversation = async () => {
        const before = await roomId(pageA)
        await pageA.getByRole("button", { name: "New conversation" }).click()
        await pageA.waitForFunction((b) => {
          const t = document.getElementById("room-id")!.textContent
          return t.length > 0 && t !== b
        }, before)
        return (await roomId(pageA))!
      }
      const join = async (id: string) => {
        await pageB.getByLabel("Join by id").fill(id)
        await pageB.getByRole("button", { name: "Join" }).click()
        await pageB.waitForFunction((x) => document.getElementById("room-id")!.textContent === x, id)
      }
      const notes = (page: typeof pageA) => page.$$eval("#messages li.note p", (ps) => ps.map((p) => p.textContent))

      // Member changes: alice, in the conversation she created, sees bob join.
      const first = await newConversation()
      await join(first)
      await pageA.waitForFunction(() => document.querySelectorAll("#messages li.note").length === 1)
      assert.deepStrictEqual(await notes(pageA), [`${bob} joined`])
      const second = await newConversation()
      await join(second)

      // Bob has `second` open; alice writes in `first`: bob's list puts it first with one unread.
      await pageA.getByRole("button", { name: new RegExp(`^${first.slice(0, 8)}`) }).click()
      await pageA.waitForFunction((x) => document.getElementById("room-id")!.textContent === x, first)
      await pageA.getByLabel("Message", { exact: true }).fill("are you there?")
      await pageA.keyboard.press("Enter")
      await pageB.waitForFunction(
        (x) => document.querySelector("#conversations li button")?.getAttribute("data-id") === x,
        first
      )
      await pageB.waitForFunction(() =>
        document.querySelector("#conversations li button")!.textContent!.endsWith("(1 unread)")
      )
      // Under alice's message: nobody has read it yet; bob opens the conversation, and it says so.
      await pageA.waitForFunction(() => document.querySelector("#messages [data-receipt]")?.textContent === "read by 0")
      await pageB.getByRole("button", { name: new RegExp(`^${first.slice(0, 8)}`) }).click()
      await pageA.waitForFunction(() => document.querySelector("#messages [data-receipt]")?.textContent === "read by 1")
      await pageB.waitForFunction(() =>
        document.querySelector("#conversations li button")!.getAttribute("data-unread") === "0"
      )
      // Typing: bob types, alice sees it.
      await pageB.getByLabel("Message", { exact: true }).pressSequentially("ok")
      await pageA.waitForFunction((b) => document.getElementById("typing")!.textContent === `${b} typing…`, bob)
      Fs.writeFileSync(Path.join(artifacts, "console-read-state.png"), await pageA.screenshot({ fullPage: true }))
      // Bob leaves through the API: alice, who reopened the conversation since, sees it.
      await server.post("/leave_conversation", { conversation_id: first }, await server.token(bob))
      await pageA.waitForFunction(() => document.querySelectorAll("#messages li.note").length === 1)
      assert.deepStrictEqual(await notes(pageA), [`${bob} left`])
      assert.deepStrictEqual(errors, [])
    } finally {
      await browser.close()
    }
  })
})
