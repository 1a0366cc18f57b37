/**
 * Cold start (issue 13, point 6): three nodes started at the same moment on an empty database all
 * come up, hold every shard between them, and serve a send. Repeated, since a race shows only
 * sometimes.
 */
import { assert, describe, it } from "@effect/vitest"
import { settled, startCluster } from "./support/cluster.ts"

describe("cold start", () => {
  for (const attempt of [1, 2, 3]) {
    it(`three nodes started together on an empty database all come up (attempt ${attempt})`, async () => {
      const cluster = await startCluster(3, {}, { together: true })
      try {
        await settled(cluster, 3)
        const [one, two, three] = cluster.nodes
        const token = await one.token(`cold-${attempt}`)
        const id = (await two.post("/create_conversation", {}, token)).body.data.ConversationId
        assert.strictEqual((await three.post("/send_msg", { conversation_id: id, content: "up" }, token)).body.code, 0)
        for (const node of cluster.nodes) {
          assert.notMatch(
            node.output(),
            /relation .* already exists|duplicate key value/,
            "no start-up race in the log"
          )
        }
      } finally {
        await cluster.stop()
      }
    }, 120_000)
  }
})
