/**
 * The same source serves under Node ≥ 22 (type stripping), when such a Node is installed
 * (the optional `node22` package brings one on linux-x64).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { execFileSync } from "node:child_process"
import { heapLimitMb, root, spawnServer } from "./support/process.ts"
import { tempDir } from "./support/server.ts"

const node22 = [process.env.QUICKIM_TEST_NODE, Path.join(root, "node_modules/node22/bin/node")]
  .find((p): p is string => p !== undefined && p.length > 0 && Fs.existsSync(p))

describe("Node runtime", () => {
  it.skipIf(node22 === undefined)("serves the API under Node 22 from the TypeScript source", async () => {
    const server = await spawnServer({ runtime: { node: node22! }, env: { QUICKIM_DATA_DIR: tempDir() } })
    try {
      const token = await server.token("node-user")
      const created = await server.post("/create_conversation", { conversation_type: 1 }, token)
      const id = created.body.data.ConversationId
      const sent = await server.post("/send_msg", { conversation_id: id, content: "from node" }, token)
      assert.strictEqual(sent.body.code, 0)
      const last = await server.post("/get_conversation_lastone_msg", { conversation_id: id }, token)
      assert.strictEqual(last.body.data.Msg[0].MsgId, sent.body.data.MsgID)
      assert.strictEqual(last.body.data.Msg[0].Content, "from node")
      // Started with the same V8 settings as under Deno (src/RuntimeFlags.ts).
      const limit = await heapLimitMb(server)
      assert.isTrue(limit >= 1536 && limit < 1800, `heap limit ${limit} MB`)
    } finally {
      await server.stop()
    }
  })

  it.skipIf(node22 === undefined)(
    "the client SDK runs under Node 22: a message sent and received over each protocol",
    async () => {
      const server = await spawnServer({ env: { QUICKIM_DATA_DIR: tempDir() } })
      try {
        for (const protocol of ["ws", "sse", "poll"]) {
          const out = execFileSync(node22!, [Path.join(root, "test/fixtures/sdk-smoke.ts"), server.url, protocol], {
            encoding: "utf8",
            timeout: 30_000
          })
          assert.strictEqual(out.trim(), `hello over ${protocol}`)
        }
      } finally {
        await server.stop()
      }
    }
  )
})
