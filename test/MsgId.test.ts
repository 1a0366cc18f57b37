import { assert, describe, it } from "@effect/vitest"
import { decode, encode, MsgIdClock, MsgIdPattern } from "../src/domain/MsgId.ts"

describe("MsgId", () => {
  it("100k ids for one conversation in a tight loop are unique and strictly increasing", () => {
    const clock = new MsgIdClock("87ba7679-b682-47e7-8499-0385dda22b66", 1, undefined)
    const now = Date.now()
    let previous = ""
    const seen = new Set<string>()
    for (let i = 0; i < 100_000; i++) {
      // The wall clock barely moves: thousands of ids share a millisecond.
      const id = clock.next(now + Math.floor(i / 5000))
      assert.match(id, MsgIdPattern)
      assert.isTrue(id > previous, `${id} should sort after ${previous}`)
      seen.add(id)
      previous = id
    }
    assert.strictEqual(seen.size, 100_000)
  })

  it("keeps increasing after a restart even when the clock stepped back", () => {
    const first = new MsgIdClock("c1", 2, undefined)
    const last = first.next(2_000_000_000_000)
    const restarted = new MsgIdClock("c1", 2, last)
    const next = restarted.next(1_900_000_000_000)
    assert.isTrue(next > last)
    assert.strictEqual(decode(next).conversationType, 2)
  })

  it("round-trips its parts and matches the reference layout", () => {
    const id = encode({ millis: 1697986744069, seq: 7, conversationType: 3, hash: 12345 })
    assert.match(id, MsgIdPattern)
    assert.deepStrictEqual(decode(id), { millis: 1697986744069, seq: 7, conversationType: 3, hash: 12345 })
    // The reference's example ids decode to October 2023, as their SendTime says.
    const example = decode("EDCZL-SY32-243Y-VWQ")
    assert.strictEqual(new Date(example.millis).getUTCFullYear(), 2023)
  })

  it("encodes as the 80-bit number's base32 digits, at every edge of every field", () => {
    // The layout in BigInt arithmetic, as the id was first written.
    const ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    const reference = (p: { millis: number; seq: number; conversationType: number; hash: number }) => {
      let n = (BigInt(p.millis) << 38n) | (BigInt(p.seq) << 26n) | (BigInt(p.conversationType) << 22n)
        | BigInt(p.hash)
      let out = ""
      for (let i = 0; i < 16; i++) {
        out = ALPHABET[Number(n & 31n)] + out
        n >>= 5n
      }
      return `${out.slice(0, 5)}-${out.slice(5, 9)}-${out.slice(9, 13)}-${out.slice(13)}`
    }
    const millis = [0, 1, 2, 3, 4, 1697986744069, 2 ** 40, 2 ** 42 - 1, 2 ** 42 - 4]
    const seqs = [0, 1, 4095]
    const types = [0, 1, 15]
    const hashes = [0, 1, 2 ** 22 - 1]
    let seed = 7
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return Math.floor((seed / 2 ** 31) * n)
    }
    for (let i = 0; i < 2000; i++) millis.push(random(2 ** 21) * 2 ** 21 + random(2 ** 21))
    for (const m of millis) {
      for (const seq of seqs) {
        for (const conversationType of types) {
          for (const hash of hashes) {
            const parts = { millis: m, seq, conversationType, hash }
            assert.strictEqual(encode(parts), reference(parts), JSON.stringify(parts))
          }
        }
      }
    }
  })
})
