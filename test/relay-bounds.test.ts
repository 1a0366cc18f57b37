/**
 * Relays between nodes stay well below the 16 MB frame Effect cluster's runner transport accepts
 * (a larger one breaks the connection it came on): batches are split by a bound of their size.
 * A relay that gets no answer is given up (its contents go as entity messages) after 5 s, or as
 * soon as its node is known to be gone or restarted.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Duration, Effect } from "effect"
import { TestClock } from "effect/testing"
import { relayWatchdog } from "../src/cluster/NodeLink.ts"
import { boundBytes, chunked, ITEM_BYTES } from "../src/push/MailboxRelay.ts"
import type { MsgData } from "../src/domain/Conversation.ts"

const message = (i: number, content: string): MsgData => ({
  MsgId: `m${String(i).padStart(6, "0")}`,
  ConversationID: "c",
  FromSession: "s",
  SendTime: "2026-12-03 00:00:00",
  Status: 0,
  Type: 1,
  Content: content,
  Seq: i + 1
})

describe("relay bounds", () => {
  it("the bound is never below the JSON the relay really carries, whatever the content", () => {
    for (const content of ["plain", "中文内容".repeat(1000), '\u0001\u0002"\\'.repeat(5000), "😀".repeat(3000)]) {
      const messages = [message(1, content), message(2, content)]
      const actual = new TextEncoder().encode(JSON.stringify(messages)).length
      assert.isAtLeast(boundBytes(messages), actual)
    }
  })

  it("a burst of large messages is split into parts within the item bound, in order, nothing lost", () => {
    const messages = Array.from({ length: 300 }, (_, i) => message(i, "x".repeat(60_000)))
    const parts = chunked(messages)
    assert.isAbove(parts.length, 1)
    for (const part of parts) assert.isAtMost(boundBytes(part), ITEM_BYTES)
    assert.deepStrictEqual(parts.flat().map((m) => m.MsgId), messages.map((m) => m.MsgId))
  })

  it("small batches stay whole, and a message larger than the bound goes alone", () => {
    const small = [message(1, "a"), message(2, "b")]
    assert.deepStrictEqual(chunked(small), [small])
    const huge = message(3, "\u0001".repeat(ITEM_BYTES / 4))
    const parts = chunked([message(1, "a"), huge, message(4, "b")])
    assert.deepStrictEqual(parts.map((p) => p.map((m) => m.MsgId)), [["m000001"], ["m000003"], ["m000004"]])
  })
})

describe("relay watchdog", () => {
  /** Runs the watchdog against routes whose state the test sets, in the test clock's time. */
  const watch = (routes: { gone: boolean; startedAt: number | undefined }) =>
    Effect.gen(function* () {
      const fiber = yield* relayWatchdog("127.0.0.1:9", {
        gone: () => routes.gone,
        startedAt: () => routes.startedAt
      }, yield* Clock.currentTimeMillis).pipe(Effect.forkChild)
      yield* Effect.yieldNow
      /** Whether the watchdog has given up on the relay after `millis` more of the test clock. */
      const after = (millis: number) =>
        TestClock.adjust(Duration.millis(millis)).pipe(
          Effect.andThen(Effect.sync(() => fiber.pollUnsafe() !== undefined))
        )
      return after
    })
  const now = Clock.currentTimeMillis

  it.effect("a relay to a node that came back on the same address is given up at once, not after 5 s", () =>
    Effect.gen(function* () {
      const routes = { gone: false, startedAt: (yield* now) - 60_000 as number | undefined }
      const after = yield* watch(routes)
      assert.isFalse(yield* after(1000))
      // The node was killed and started again: its heartbeat never went stale, but a process that
      // started after the relay went out reports from its address now.
      routes.startedAt = yield* now
      assert.isTrue(yield* after(250))
    }))

  it.effect("without any change the relay gets 5 s, and a node that left ends it sooner", () =>
    Effect.gen(function* () {
      const steady = yield* watch({ gone: false, startedAt: (yield* now) - 60_000 })
      assert.isFalse(yield* steady(4750))
      assert.isTrue(yield* steady(250))
      // A first report arriving late, from a process that was already running when the relay went
      // out (it may well answer), is no reason to give up.
      const fresh = { gone: false, startedAt: undefined as number | undefined }
      const first = yield* watch(fresh)
      fresh.startedAt = (yield* now) - 1
      assert.isFalse(yield* first(2000))
      const leaving = { gone: false, startedAt: (yield* now) - 60_000 as number | undefined }
      const left = yield* watch(leaving)
      leaving.gone = true
      assert.isTrue(yield* left(250))
    }))
})
