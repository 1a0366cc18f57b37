/**
 * Message ids in the reference format `XXXXX-XXXX-XXXX-XXX`: 80 bits packed as
 * [42-bit unix ms][12-bit sequence][4-bit conversation type][22-bit conversation hash],
 * written big-endian in a base32 alphabet whose order matches the numbers', so string
 * order is id order. A `MsgIdClock` per conversation makes ids strictly increasing even
 * for bursts in one millisecond, across restarts and when the wall clock steps back.
 */
import * as Schema from "effect/Schema"

const ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
const SEQ_BITS = 12n
const TYPE_BITS = 4n
const HASH_BITS = 22n
const LOW_BITS = SEQ_BITS + TYPE_BITS + HASH_BITS
const SEQ_MAX = (1 << Number(SEQ_BITS)) - 1
const TIME_MAX = 2 ** 42 - 1

export const MsgIdPattern = /^[2-9A-HJ-NP-Z]{5}-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{3}$/

/** A message id as clients see it. */
export const MsgId = Schema.String.check(Schema.isPattern(MsgIdPattern, { message: "invalid MsgId format" }))

/** Conversation types fit the 4 bits the id reserves for them. */
export const CONVERSATION_TYPE_MAX = 15

/** 22-bit FNV-1a hash of a conversation id: a fixed suffix for every id of one conversation. */
export const conversationHash = (conversationId: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < conversationId.length; i++) {
    h ^= conversationId.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h & ((1 << Number(HASH_BITS)) - 1)
}

export interface MsgIdParts {
  readonly millis: number
  readonly seq: number
  readonly conversationType: number
  readonly hash: number
}

/** `count` base32 digits of `value` (below 32 ** count), most significant first, appended to `out`. */
const digits = (out: Array<string>, value: number, count: number) => {
  const start = out.length
  for (let i = 0; i < count; i++) out.push("")
  for (let i = count - 1; i >= 0; i--) {
    out[start + i] = ALPHABET[value % 32]
    value = Math.floor(value / 32)
  }
}

/**
 * The id of `parts`, in two 40-bit halves of plain numbers (BigInt arithmetic allocated on every
 * step, and every send makes an id): the high half is the time's top 40 bits, the low half its two
 * last bits above the sequence, the type and the hash.
 */
export const encode = (parts: MsgIdParts): string => {
  const low = (parts.millis % 4) * 2 ** 38 + parts.seq * 2 ** 26 + (parts.conversationType & 0xf) * 2 ** 22
    + parts.hash
  const out: Array<string> = []
  digits(out, Math.floor(parts.millis / 4), 8)
  digits(out, low, 8)
  return `${out[0]}${out[1]}${out[2]}${out[3]}${out[4]}-${out[5]}${out[6]}${out[7]}${out[8]}-${out[9]}${out[10]}${
    out[11]
  }${out[12]}-${out[13]}${out[14]}${out[15]}`
}

export const decode = (id: string): MsgIdParts => {
  let n = 0n
  for (const ch of id) {
    if (ch === "-") continue
    n = (n << 5n) | BigInt(ALPHABET.indexOf(ch))
  }
  return {
    millis: Number(n >> LOW_BITS),
    seq: Number((n >> (TYPE_BITS + HASH_BITS)) & BigInt(SEQ_MAX)),
    conversationType: Number((n >> HASH_BITS) & 0xfn),
    hash: Number(n & ((1n << HASH_BITS) - 1n))
  }
}

/**
 * Issues the ids of one conversation. `last` is the newest id already stored (or
 * undefined), so a restarted writer continues above it whatever the clock says.
 */
export class MsgIdClock {
  private millis: number
  private seq: number
  private readonly hash: number
  readonly conversationType: number

  constructor(conversationId: string, conversationType: number, last: string | undefined) {
    this.conversationType = conversationType
    this.hash = conversationHash(conversationId)
    if (last === undefined) {
      this.millis = -1
      this.seq = SEQ_MAX
    } else {
      const parts = decode(last)
      this.millis = parts.millis
      this.seq = parts.seq
    }
  }

  /** The next id at wall-clock time `now` (ms): never below the previous one. */
  next(now: number): string {
    if (now > this.millis) {
      this.millis = Math.min(now, TIME_MAX)
      this.seq = 0
    } else if (this.seq < SEQ_MAX) {
      this.seq++
    } else {
      // 4096 ids in one millisecond, or the clock went back: borrow the next millisecond.
      this.millis++
      this.seq = 0
    }
    return encode({ millis: this.millis, seq: this.seq, conversationType: this.conversationType, hash: this.hash })
  }

  /** The millisecond the last issued id carries (may run ahead of the wall clock in bursts). */
  get lastMillis(): number {
    return this.millis
  }
}
