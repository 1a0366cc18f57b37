/**
 * Every read the API makes is served by an index (but the inbox's sort by last activity): each statement the store's read functions run
 * is captured and EXPLAINed on PostgreSQL (sequential scans disabled, so the planner shows what an
 * index can serve). Every scan of our tables must have an index condition and no plan may sort.
 */
import { NodeCrypto } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { SqlClient, Statement } from "effect/sql"
import { AppConfig } from "../src/Config.ts"
import { ConversationStore } from "../src/storage/ConversationStore.ts"
import { ReadStore } from "../src/storage/ReadStore.ts"
import { DatabaseLive } from "../src/storage/Database.ts"
import { settingsFor } from "./support/server.ts"

const StoreLive = Layer.merge(ConversationStore.layer, ReadStore.layer).pipe(
  Layer.provideMerge(DatabaseLive),
  Layer.provide(AppConfig.make(settingsFor("postgres"))),
  Layer.provide(NodeCrypto.layerDigest)
)

interface PlanNode {
  readonly "Node Type": string
  readonly "Relation Name"?: string
  readonly "Index Cond"?: string
  readonly Plans?: ReadonlyArray<PlanNode>
}

const walk = (node: PlanNode, visit: (n: PlanNode) => void) => {
  visit(node)
  for (const child of node.Plans ?? []) walk(child, visit)
}

describe("indexes", () => {
  it.live("every history, detail, membership, joined-list, unread and member-list read is an index range scan without a sort", () =>
    Effect.gen(function* () {
      const store = yield* ConversationStore
      const reads = yield* ReadStore
      const sql = yield* SqlClient.SqlClient
      const id = `idx-${crypto.randomUUID()}`
      yield* store.create(id, 0, ["me", "other"])
      const rows = Array.from({ length: 40 }, (_, i) => ({
        conversation_id: id,
        msg_id: `22222-2222-2222-2${"23456789ABCDEFGHJKLMNPQRSTUVWXYZ"[i % 32]}${i < 32 ? "2" : "3"}`,
        seq: i + 1,
        from_session: "me",
        send_time: "2026-01-01T00:00:00.000+00:00",
        status: 0,
        type: 0,
        content: `${i}`,
        client_msg_id: null
      })).sort((a, b) => a.msg_id < b.msg_id ? -1 : 1).map((r, i) => ({ ...r, seq: i + 1 }))
      yield* store.appendMessages(id, rows)
      const ids = rows.map((r) => r.msg_id)

      const captured: Array<readonly [string, ReadonlyArray<unknown>]> = []
      const capture: Statement.Transformer = (statement) =>
        Effect.sync(() => {
          captured.push(statement.compile())
          return statement
        })
      yield* Effect.all([
        store.isMember(id, "me"),
        store.exists([id]),
        store.joined("me"),
        store.detail(id, "me"),
        store.lastMsgId(id),
        store.range(id, ids[5], ids[20], false, "me"),
        store.before(id, ids[35], true, "me"),
        store.after(id, ids[3], false, "me"),
        store.last(id, 30, false, "me"),
        store.findByClientIds(id, [{ session: "me", clientMsgId: "k" }]),
        // Read state: unread counts and member pages (the inbox sorts by activity, which no index holds).
        reads.unread("me", undefined),
        reads.unread("me", [id]),
        reads.members(id, 200, undefined),
        reads.members(id, 200, { joinedAt: "1700000000000000", session: "me" })
      ]).pipe(Effect.provideService(Statement.CurrentTransformer, capture))
      assert.strictEqual(captured.length, 14)

      yield* sql.withTransaction(Effect.gen(function* () {
        yield* sql`SET LOCAL enable_seqscan = off`
        // Bitmap scans lose index order; with them off, a Sort left in the plan means no index gives the order.
        yield* sql`SET LOCAL enable_bitmapscan = off`
        for (const [text, params] of captured) {
          const [row] = yield* sql.unsafe<{ "QUERY PLAN": Array<{ Plan: PlanNode }> }>(
            `EXPLAIN (FORMAT JSON) ${text}`,
            params as Array<any>
          )
          const plan = row["QUERY PLAN"][0].Plan
          walk(plan, (node) => {
            assert.notStrictEqual(node["Node Type"], "Sort", `sorts: ${text}`)
            if (node["Relation Name"] !== undefined) {
              assert.notStrictEqual(node["Node Type"], "Seq Scan", `seq scan: ${text}`)
              assert.isString(node["Index Cond"], `${node["Node Type"]} without index condition: ${text}`)
            }
          })
        }
      }))
    }).pipe(Effect.provide(StoreLive)))
})
