/**
 * Relays between nodes stay well below the 16 MB frame Effect cluster's runner transport accepts
 * (a larger one breaks the connection it came on): batches are split by a bound of their size.
 */
import { assert, describe, it } from "@effect/vitest"
import { boundBytes, chunked, ITEM_BYTES } from "../src/cluster/NodeInbox.ts"
import type { MsgData } from "../src/domain/Conversation.ts"

const message = (i: number, content: string): MsgData => ({
  MsgId: `m${String(i).padStart(6, "0")}`,
  ConversationID: "c",
  FromSession: "s",
  SendTime: "2026-12-03 00:00:00",
  Status: 0,
  Type: 1,
  Content: content
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
