/**
 * Durability across real process restarts, on the embedded PostgreSQL and a configured one: messages, memberships and
 * MsgId order survive; start-up refuses unsafe configurations with a clear message.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { freePort, runToExit, spawnServer } from "./support/process.ts"
import { tempDir, testDatabaseUrl } from "./support/server.ts"

const secret = "restart-test-secret-restart-test-secret"

describe.each(["embedded", "postgres"] as const)("restart on %s", (db) => {
  it("messages and memberships survive a process restart and new ids sort after old ones", async () => {
    const dataDir = tempDir()
    const env: Record<string, string> = db === "postgres"
      ? { DATABASE_URL: testDatabaseUrl(), QUICKIM_JWT_SECRET: secret }
      : { QUICKIM_DATA_DIR: dataDir, QUICKIM_JWT_SECRET: secret }
    const alice = `alice-${crypto.randomUUID()}`
    const bob = `bob-${crypto.randomUUID()}`
    const first = await spawnServer({ env })
    let conversation: string
    const before: Array<string> = []
    try {
      const aliceToken = await first.token(alice)
      conversation =
        (await first.post("/inner/create_conversation", { sessions: [alice, bob] })).body.data.ConversationId
      for (let i = 0; i < 5; i++) {
        before.push(
          (await first.post("/send_msg", { conversation_id: conversation, content: `b${i}` }, aliceToken)).body.data
            .MsgID
        )
      }
      await first.post("/leave_conversation", { conversation_id: conversation }, await first.token(bob))
    } finally {
      assert.include([0, "SIGTERM"], await first.stop(), first.output())
    }
    // A graceful stop ran its finalizers: the data directory lock is released.
    if (db === "embedded") assert.isFalse(Fs.existsSync(Path.join(dataDir, "quick-im.lock")))

    const second = await spawnServer({ env })
    try {
      const aliceToken = await second.token(alice)
      const history = await second.post("/get_conversation_last_30_msg", { conversation_id: conversation! }, aliceToken)
      assert.deepStrictEqual(history.body.data.Msg.map((m: any) => m.MsgId), before)
      const bobToken = await second.token(bob)
      assert.isFalse(
        (await second.post("/check_joined_conversation", { conversation_id: conversation! }, bobToken)).body.data
          .Joined
      )
      const after =
        (await second.post("/send_msg", { conversation_id: conversation!, content: "after" }, aliceToken)).body.data
          .MsgID
      assert.isTrue(after > before[before.length - 1], `${after} > ${before[before.length - 1]}`)
      const detail = await second.post("/get_conversation_detail", { conversation_id: conversation! }, aliceToken)
      assert.strictEqual(detail.body.data.LastMsgID, after)
    } finally {
      assert.include([0, "SIGTERM"], await second.stop(), second.output())
    }
  })
})

describe("start-up checks", () => {
  it("a second process on the same data directory refuses to start and names the holder", async () => {
    const dataDir = tempDir()
    const first = await spawnServer({ env: { QUICKIM_DATA_DIR: dataDir } })
    try {
      const second = await runToExit({ env: { QUICKIM_DATA_DIR: dataDir, PORT: String(await freePort()) } })
      assert.notStrictEqual(second.code, 0)
      assert.include(second.output, "is in use by process")
      // The first one still serves.
      assert.strictEqual((await first.raw("/healthz", { method: "GET" })).status, 200)
    } finally {
      await first.stop()
    }
  })

  it("PostgreSQL without QUICKIM_JWT_SECRET refuses to start", async () => {
    const result = await runToExit({
      env: { DATABASE_URL: testDatabaseUrl(), QUICKIM_JWT_SECRET: "", PORT: String(await freePort()) }
    })
    assert.notStrictEqual(result.code, 0)
    assert.include(result.output, "QUICKIM_JWT_SECRET is required")
  })

  it("a generated key is kept in the data dir, so tokens stay valid across restarts", async () => {
    const dataDir = tempDir()
    const first = await spawnServer({ env: { QUICKIM_DATA_DIR: dataDir, QUICKIM_JWT_SECRET: "" } })
    const token = await first.token("carol")
    await first.stop()
    const second = await spawnServer({ env: { QUICKIM_DATA_DIR: dataDir, QUICKIM_JWT_SECRET: "" } })
    try {
      const reply = await second.post("/get_joined_conversation", {}, token)
      assert.strictEqual(reply.body.code, 0)
    } finally {
      await second.stop()
    }
  })
})
