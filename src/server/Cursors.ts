/**
 * The opaque page cursors of `get_inbox` and `get_conversation_members`: base64url JSON of where
 * the page continues. A cursor comes back from the client, so it is checked field by field before
 * any of it reaches SQL; anything else is refused with 400 / 10001.
 */
import * as Effect from "effect/Effect"
import { BadRequest, ErrorCode } from "../api/Errors.ts"
import { isStorableText } from "../domain/Conversation.ts"
import type { InboxCursor, MembersCursor } from "../storage/ReadStore.ts"

const invalid = new BadRequest({ code: ErrorCode.InvalidParameter, error: "cursor is not one this server gave" })

const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")

const decodeJson = (cursor: string): Record<string, unknown> | undefined => {
  try {
    const value = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8"))
    return typeof value === "object" && value !== null && !Array.isArray(value) ? value : undefined
  } catch {
    return undefined
  }
}

const INT64_MAX = (1n << 63n) - 1n
/** A bigint in text within int64 (microsecond times, and the xids of a snapshot). */
const isInt64 = (s: unknown, min = -INT64_MAX): s is string =>
  typeof s === "string" && /^-?\d{1,19}$/.test(s) && BigInt(s) >= min && BigInt(s) <= INT64_MAX

/** An id as the contract allows it (1 to 128 characters, storable: no NUL, no unpaired surrogate). */
const isId = (s: unknown): s is string => typeof s === "string" && s.length >= 1 && s.length <= 128 && isStorableText(s)

/**
 * A `pg_snapshot` as PostgreSQL writes it, `xmin:xmax:xip,...`, held to what PostgreSQL accepts
 * (xmin ≤ xmax, each in-progress xid in [xmin, xmax) and ascending) so that parsing it cannot fail.
 */
const isSnapshot = (s: unknown): s is string => {
  if (typeof s !== "string" || s.length > 2048) return false
  const m = /^(\d{1,19}):(\d{1,19}):((?:\d{1,19})(?:,\d{1,19})*)?$/.exec(s)
  if (m === null) return false
  const xmin = BigInt(m[1])
  const xmax = BigInt(m[2])
  if (xmin < 1n || xmax > INT64_MAX || xmin > xmax) return false
  let previous = xmin - 1n
  for (const x of m[3] === undefined ? [] : m[3].split(",")) {
    const xid = BigInt(x)
    if (xid < xmin || xid >= xmax || xid <= previous) return false
    previous = xid
  }
  return true
}

export const encodeInboxCursor = (c: InboxCursor) => encode({ s: c.snapshot, a: c.activity, c: c.conversationId })

export const decodeInboxCursor = (cursor: string | null | undefined) =>
  Effect.suspend((): Effect.Effect<InboxCursor | undefined, BadRequest> => {
    if (cursor === undefined || cursor === null) return Effect.succeed(undefined)
    const v = decodeJson(cursor)
    if (v === undefined || !isSnapshot(v.s) || !isInt64(v.a) || !isId(v.c)) return Effect.fail(invalid)
    return Effect.succeed({ snapshot: v.s, activity: v.a, conversationId: v.c })
  })

export const encodeMembersCursor = (c: MembersCursor) => encode({ j: c.joinedAt, s: c.session })

export const decodeMembersCursor = (cursor: string | null | undefined) =>
  Effect.suspend((): Effect.Effect<MembersCursor | undefined, BadRequest> => {
    if (cursor === undefined || cursor === null) return Effect.succeed(undefined)
    const v = decodeJson(cursor)
    // Within 2^53 microseconds of 1970 (years 1685 to 2255): exact through the float arithmetic of
    // PostgreSQL's interval, and far inside what its timestamps hold.
    if (v === undefined || !isInt64(v.j) || BigInt(v.j as string) ** 2n > (1n << 106n) || !isId(v.s)) {
      return Effect.fail(invalid)
    }
    return Effect.succeed({ joinedAt: v.j, session: v.s })
  })
