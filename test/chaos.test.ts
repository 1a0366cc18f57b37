/**
 * The chaos harness of `npm run chaos`, short: 90 s of faults (a node killed with SIGKILL at
 * 20, 60 and 80 s, each back on its runner address 3 s later; PostgreSQL restarted at 40 s) under
 * 300 push clients closing and resuming at random. Timings are printed, not asserted.
 */
import { assert, describe, it } from "@effect/vitest"
import { runChaos } from "./support/chaos.ts"
import { summary } from "./support/chaosReport.ts"

describe("chaos", () => {
  it(
    "under node kills and a PostgreSQL restart, no client of any protocol misses, repeats after dedupe or reorders an acknowledged message",
    { timeout: 300_000 },
    async () => {
      const run = await runChaos({
        clients: 300,
        conversations: 120,
        rate: 40,
        seconds: 90,
        faultEverySeconds: 20,
        nodeDownSeconds: 3,
        postgresDownSeconds: 4,
        settleSeconds: 15,
        churnMeanSeconds: 30,
        seed: 20261204,
        ...(process.env.QUICKIM_TEST_NODE_LOGS ? { logs: `${process.env.QUICKIM_TEST_NODE_LOGS}/chaos` } : {}),
        progress: () => {}
      })
      console.log(summary(run).join("\n"))
      assert.isUndefined(run.unsettled)
      assert.deepStrictEqual(run.events.map((e) => e.what).filter((w) => w !== "settled"), [
        "kill",
        "up",
        "pg-stop",
        "pg-start",
        "kill",
        "up",
        "kill",
        "up"
      ])
      assert.isAbove(run.sends.length, 1000, "enough traffic to mean something")
      assert.strictEqual(run.abandoned, 0)
      for (const [protocol, f] of Object.entries(run.findings.byProtocol)) {
        assert.isAbove(f.churned, 0, `${protocol} clients closed and resumed at random`)
        assert.deepStrictEqual(
          { lost: f.lost, duplicates: f.duplicates, outOfOrder: f.outOfOrder, foreign: f.foreign },
          { lost: 0, duplicates: 0, outOfOrder: 0, foreign: 0 },
          `${protocol}: ${run.findings.examples.slice(0, 10).join("\n")}`
        )
      }
      assert.deepStrictEqual(run.findings.history, { missing: 0, repeated: 0, unacknowledged: 0 })
    }
  )
})
