/**
 * The `quick-im` command line as a user runs it: a real process per command against a real server
 * on PostgreSQL, checking its output and exit code (0 done, 1 refused or unreachable, 2 a wrong
 * command line), `tail` following a session with resume, and help for every command.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as Path from "node:path"
import { sleep } from "./support/push.ts"
import { denoBin, root, spawnServer } from "./support/process.ts"
import { settingsFor, startServer, testDatabaseUrl, type TestServer } from "./support/server.ts"

const unique = (name: string) => `${name}-${crypto.randomUUID().slice(0, 8)}`
const main = Path.join(root, "src/main.ts")

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Starts the CLI with `args`; `output()` has what it printed so far. */
const start = (args: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  const child = spawn(denoBin, ["run", "-A", main, ...args], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  let stderr = ""
  child.stdout.on("data", (d) => (stdout += d))
  child.stderr.on("data", (d) => (stderr += d))
  return { child, output: () => ({ stdout, stderr }) }
}

/** Runs the CLI with `args` to its end. */
const run = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  new Promise<Run>((resolve) => {
    const { child, output } = start(args, env)
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, ...output() })
    })
  })

describe("cli", () => {
  let server: TestServer
  let env: Record<string, string>
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
    env = { QUICKIM_URL: server.url }
  })
  afterAll(() => server?.stop())

  const ok = async (args: ReadonlyArray<string>) => {
    const r = await run(args, env)
    assert.strictEqual(r.code, 0, `${args.join(" ")}: ${r.stdout}${r.stderr}`)
    return r.stdout.trim()
  }

  it("token, conversation create|join|kick|archive and send do what they say, checked through the API", async () => {
    const alice = unique("alice")
    const bob = unique("bob")
    const carol = unique("carol")
    const token = await ok(["token", "--session", alice, "--platform", "2"])
    const check = await server.post("/get_joined_conversation", {}, token)
    assert.strictEqual(check.body.code, 0, "the printed token is accepted")

    const conversation = await ok(["conversation", "create", alice, bob, "--type", "3"])
    const detail = await server.post("/get_conversation_detail", { conversation_id: conversation }, token)
    assert.strictEqual(detail.body.data.ConversationType, 3)

    const msgId = await ok(["send", "--session", alice, conversation, "hello from the cli", "--client-msg-id", "k1"])
    assert.strictEqual(await ok(["send", "--session", alice, conversation, "again", "--client-msg-id", "k1"]), msgId)
    const last = await server.post("/get_conversation_lastone_msg", { conversation_id: conversation }, token)
    assert.strictEqual(last.body.data.Msg[0].MsgId, msgId)
    assert.strictEqual(last.body.data.Msg[0].Content, "hello from the cli")

    assert.include(await ok(["conversation", "join", conversation, carol]), carol)
    const carolToken = await server.token(carol)
    const joined = await server.post("/check_joined_conversation", { conversation_id: conversation }, carolToken)
    assert.isTrue(joined.body.data.Joined)
    await ok(["conversation", "kick", conversation, carol])
    const kicked = await server.post("/check_joined_conversation", { conversation_id: conversation }, carolToken)
    assert.isFalse(kicked.body.data.Joined)

    await ok(["conversation", "archive", conversation])
    const archived = await server.post("/get_conversation_detail", { conversation_id: conversation }, token)
    assert.isTrue(archived.body.data.IsArchive)
    await ok(["conversation", "archive", "--undo", conversation])
  })

  it("tail follows a session, first what came after --cursor, then live messages, each once", async () => {
    const alice = unique("alice")
    const conversation = await ok(["conversation", "create", alice])
    const first = await ok(["send", "--session", alice, conversation, "before"])
    const missed = await ok(["send", "--session", alice, conversation, "missed while away"])
    const { child, output } = start(["tail", "--session", alice, "--cursor", first, "--json"], env)
    try {
      const lines = () => output().stdout.split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l))
      for (let i = 0; i < 200 && lines().length < 1; i++) await sleep(50)
      const live = await ok(["send", "--session", alice, conversation, "live"])
      for (let i = 0; i < 200 && lines().length < 2; i++) await sleep(50)
      assert.deepStrictEqual(lines().map((m) => m.MsgId), [missed, live], output().stderr)
      assert.include(output().stderr, "connected over ws")
    } finally {
      child.kill()
    }
  })

  it("inbox lists a session's conversations, most recent first, with unread counts", async () => {
    const alice = unique("alice")
    const bob = unique("bob")
    const quiet = await ok(["conversation", "create", alice, bob])
    const busy = await ok(["conversation", "create", alice, bob])
    await ok(["send", "--session", bob, quiet, "old news"])
    await sleep(5)
    await ok(["send", "--session", bob, busy, "one"])
    await ok(["send", "--session", bob, busy, "two"])
    const lines = (await ok(["inbox", "--session", alice])).split("\n")
    assert.strictEqual(lines.length, 3, lines.join("\n"))
    assert.match(lines[0], new RegExp(`^\\(2\\)  ${busy}  .*${bob}: two$`))
    assert.match(lines[1], new RegExp(`^\\(1\\)  ${quiet}  .*${bob}: old news$`))
    assert.strictEqual(lines[2], "3 unread")
    const json = (await ok(["inbox", "--session", bob, "--json", "--limit", "1", "--all"])).split("\n").map((l) =>
      JSON.parse(l)
    )
    assert.deepStrictEqual(json.map((e) => [e.ConversationId, e.Unread]), [[busy, 0], [quiet, 0]])
  })

  it("cluster status prints the view", async () => {
    const out = await ok(["cluster", "status"])
    assert.include(out, "mode: single, 300 shards per group")
    assert.include(out, server.url)
  })

  it("says what went wrong in plain words, with exit 1 for a refusal or no server and 2 for a wrong command line", async () => {
    const refused = await run(["conversation", "join", "no-such-conversation", "someone"], env)
    assert.strictEqual(refused.code, 1)
    assert.include(refused.stdout + refused.stderr, "refused: conversation no-such-conversation not found (code 90020)")
    const nobody = await run(["--url", "http://127.0.0.1:9", "token", "--session", "x"], env)
    assert.strictEqual(nobody.code, 1)
    assert.include(nobody.stdout + nobody.stderr, "could not reach http://127.0.0.1:9")
    const missing = await run(["send", "--session", "x"], env)
    assert.strictEqual(missing.code, 2)
    assert.include(missing.stdout + missing.stderr, "Missing required argument")
    const unknown = await run(["bogus"], env)
    assert.strictEqual(unknown.code, 2)
    assert.include(unknown.stdout + unknown.stderr, 'Unknown subcommand "bogus"')
  })

  it("every command has help", async () => {
    for (
      const command of [
        ["serve"],
        ["migrate"],
        ["token"],
        ["conversation"],
        ["conversation", "create"],
        ["conversation", "join"],
        ["conversation", "kick"],
        ["conversation", "archive"],
        ["send"],
        ["tail"],
        ["inbox"],
        ["cluster"],
        ["cluster", "status"]
      ]
    ) {
      const r = await run([...command, "--help"], env)
      assert.strictEqual(r.code, 0, command.join(" "))
      assert.include(r.stdout, "DESCRIPTION", command.join(" "))
      assert.include(r.stdout, `quick-im ${command.join(" ")}`, command.join(" "))
    }
  })

  it("migrate applies the migrations and exits; serve runs a node", async () => {
    const migrated = await run(["migrate"], { DATABASE_URL: testDatabaseUrl(), QUICKIM_LOG_FORMAT: "json" })
    assert.strictEqual(migrated.code, 0, migrated.stdout + migrated.stderr)
    assert.include(migrated.stdout, "database migrated")
    const node = await spawnServer({
      args: ["serve"],
      env: { DATABASE_URL: testDatabaseUrl(), QUICKIM_JWT_SECRET: "test-secret-test-secret-test-secret" }
    })
    try {
      assert.strictEqual((await node.raw("/healthz", { method: "GET" })).status, 200)
    } finally {
      await node.stop()
    }
  })
})
