/**
 * How fast and how much one client may grow what a node holds: token buckets per session and per
 * remote address for sends, public creates and joins, push connects and polls, and a cap on the
 * live push connections of one session. Over a limit the answer is 429 with code 10008 and
 * `Retry-After` (seconds). Every limit is per node; inner endpoints are never limited.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as HttpEffect from "effect/http/HttpEffect"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import { isIP } from "node:net"
import { ErrorCode, TooManyRequests } from "../api/Errors.ts"
import { CurrentSession } from "../api/Security.ts"
import {
  AppConfig,
  DEFAULT_MAX_CONNECTIONS_PER_SESSION,
  defaultRateLimits,
  type Rate,
  type RateKind
} from "../Config.ts"
import { makeAllowList, remoteAddressOf } from "./Access.ts"

interface Bucket {
  tokens: number
  at: number
  /** When the key last moved to the back of the map's order (ms). */
  moved: number
}

/** How often a key seen again moves to the back of the order, at most (ms). */
const REORDER_EVERY = 1000

/**
 * Token buckets by key, at most `maxKeys` of them: a key seen again moves to the back of the map's
 * order, so the one forgotten first is the least recently seen (by then usually refilled, so
 * forgetting it changes nothing). It moves at most once a second: each move takes the key out of
 * the map and puts it back, and a map churned by every request keeps what it held alive through
 * V8's young collections (see src/storage/Waiters.ts).
 */
export class Buckets {
  private readonly buckets = new Map<string, Bucket>()
  readonly rate: Rate
  readonly maxKeys: number
  constructor(rate: Rate, maxKeys: number) {
    this.rate = rate
    this.maxKeys = maxKeys
  }

  get size() {
    return this.buckets.size
  }

  /** Takes one token for `key` at `now` (ms): 0 when taken, else the ms until one is there. */
  take(key: string, now: number): number {
    const { perSecond, burst } = this.rate
    let bucket = this.buckets.get(key)
    if (bucket === undefined) {
      if (this.buckets.size >= this.maxKeys) this.buckets.delete(this.buckets.keys().next().value!)
      bucket = { tokens: burst, at: now, moved: now }
      this.buckets.set(key, bucket)
    } else {
      bucket.tokens = Math.min(burst, bucket.tokens + (Math.max(0, now - bucket.at) * perSecond) / 1000)
      bucket.at = now
      if (now - bucket.moved >= REORDER_EVERY || now < bucket.moved) {
        bucket.moved = now
        this.buckets.delete(key)
        this.buckets.set(key, bucket)
      }
    }
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1
      return 0
    }
    return Math.ceil(((1 - bucket.tokens) * 1000) / perSecond)
  }
}

/**
 * The key of a remote address: IPv4 as it is (also IPv4-mapped IPv6), IPv6 by its /64, the
 * smallest block one subscriber usually holds, so a host cannot step around its limit by address.
 */
export const addressKey = (remote: string) => {
  if (remote.startsWith("::ffff:") && isIP(remote.slice(7)) === 4) return remote.slice(7)
  if (isIP(remote) !== 6) return remote
  const [head, tail = ""] = remote.split("::")
  const left = head === "" ? [] : head.split(":")
  const right = tail === "" ? [] : tail.split(":")
  const groups = remote.includes("::")
    ? [...left, ...Array(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right]
    : left
  return groups.slice(0, 4).map((g) => g.toLowerCase().replace(/^0+(?=.)/, "")).join(":") + "::/64"
}

/** A refused push connect: answered before any upgrade or stream (NotifyRoutes, WebSocketGateway). */
export interface LimitRefusal {
  readonly status: 429
  readonly code: number
  readonly error: string
  /** Seconds, for `Retry-After`. */
  readonly retryAfter: number
}

const seconds = (ms: number) => Math.max(1, Math.ceil(ms / 1000))

const what: Record<RateKind, string> = {
  sends: "sends",
  creates: "conversations created",
  joins: "joins",
  connects: "push connects",
  polls: "polls",
  marks: "mark_read and typing calls"
}

export class RateLimits extends Context.Service<RateLimits, {
  /** Takes one `kind` for `session` from `address`: 0 when allowed, else the ms to wait. */
  readonly take: (kind: RateKind, session: string, address: string | undefined) => Effect.Effect<number>
  /** In an HttpApi handler: the caller's `kind` limits, failing 429/10008 with `Retry-After`. */
  readonly guard: (
    kind: RateKind
  ) => Effect.Effect<void, TooManyRequests, CurrentSession | HttpServerRequest.HttpServerRequest>
  /**
   * Takes one `kind` for `session` from `address` at `nowMs`, with no effect: undefined when
   * allowed, else the refusal `guard` answers (429/10008, its `retryAfter` for `Retry-After`).
   */
  readonly admit: (
    kind: RateKind,
    session: string,
    address: string | undefined,
    nowMs: number
  ) => LimitRefusal | undefined
  /**
   * A push connection (`connects`) or poll (`polls`) for `session`: its rate and the session's live
   * connections on this node. Gives the function that releases the connection's place (idempotent).
   */
  readonly admitPush: (
    kind: "connects" | "polls",
    session: string,
    address: string | undefined
  ) => Effect.Effect<() => void, LimitRefusal>
}>()("quick-im/server/RateLimits") {
  static readonly layer = Layer.effect(
    RateLimits,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const settings = config.rateLimits ?? defaultRateLimits
      const maxConnections = config.maxConnectionsPerSession ?? DEFAULT_MAX_CONNECTIONS_PER_SESSION
      const exempt = yield* Effect.try(() => makeAllowList(settings.addressExempt))
      const limits = (rates: Readonly<Record<RateKind, Rate>>) => {
        const out = {} as Record<RateKind, Buckets | undefined>
        for (const kind of Object.keys(rates) as Array<RateKind>) {
          out[kind] = rates[kind].perSecond > 0 ? new Buckets(rates[kind], settings.maxKeys) : undefined
        }
        return out
      }
      const perSession = limits(settings.perSession)
      const perAddress = limits(settings.perAddress)
      // Exemption is asked once per address seen recently, not per request.
      const exemptCache = new Map<string, boolean>()
      const isExempt = (address: string) => {
        let known = exemptCache.get(address)
        if (known === undefined) {
          if (exemptCache.size >= 1024) exemptCache.clear()
          known = exempt(address)
          exemptCache.set(address, known)
        }
        return known
      }

      /** 0 when `kind` is allowed for `session` from `address` at `now`, else the ms to wait. */
      const takeAt = (kind: RateKind, session: string, address: string | undefined, now: number) => {
        const bySession = perSession[kind]?.take(session, now) ?? 0
        if (bySession > 0) return bySession
        const byAddress = perAddress[kind]
        if (byAddress === undefined || address === undefined || address === "" || isExempt(address)) return 0
        return byAddress.take(addressKey(address), now)
      }
      const take = (kind: RateKind, session: string, address: string | undefined) =>
        Effect.map(Clock.currentTimeMillis, (now) => takeAt(kind, session, address, now))

      const refusal = (kind: RateKind, waitMs: number): LimitRefusal => ({
        status: 429,
        code: ErrorCode.TooManyRequests,
        error: `too many ${what[kind]}: retry after ${seconds(waitMs)} s`,
        retryAfter: seconds(waitMs)
      })

      const refuse = (refused: LimitRefusal) =>
        Effect.gen(function* () {
          yield* HttpEffect.appendPreResponseHandler((_, response) =>
            Effect.succeed(HttpServerResponse.setHeader(response, "retry-after", String(refused.retryAfter)))
          )
          return yield* new TooManyRequests({ code: refused.code, error: refused.error })
        })

      const admit = (kind: RateKind, session: string, address: string | undefined, now: number) => {
        const wait = takeAt(kind, session, address, now)
        return wait === 0 ? undefined : refusal(kind, wait)
      }
      const check = (kind: RateKind, session: string, request: HttpServerRequest.HttpServerRequest, now: number) => {
        const refused = admit(kind, session, remoteAddressOf(request), now)
        return refused === undefined ? Effect.void : refuse(refused)
      }

      // Read the caller and the time without a generator, and answer at once when allowed.
      const guard = (kind: RateKind) =>
        Effect.clockWith((clock) =>
          Effect.contextWith((context: Context.Context<CurrentSession | HttpServerRequest.HttpServerRequest>) =>
            check(
              kind,
              Context.get(context, CurrentSession).sid,
              Context.get(context, HttpServerRequest.HttpServerRequest),
              clock.currentTimeMillisUnsafe()
            )
          )
        )

      const open = new Map<string, number>()
      // The session's place is checked first, so a refusal for too many connections costs no connect.
      const admitPush = (kind: "connects" | "polls", session: string, address: string | undefined) =>
        Effect.suspend((): Effect.Effect<() => void, LimitRefusal> => {
          if (maxConnections > 0 && (open.get(session) ?? 0) >= maxConnections) {
            return Effect.fail({
              status: 429,
              code: ErrorCode.TooManyRequests,
              error: `too many push connections for this session (at most ${maxConnections}): close one first`,
              retryAfter: 1
            })
          }
          return Effect.flatMap(take(kind, session, address), (wait) => {
            if (wait > 0) return Effect.fail(refusal(kind, wait))
            open.set(session, (open.get(session) ?? 0) + 1)
            let released = false
            return Effect.succeed(() => {
              if (released) return
              released = true
              const left = (open.get(session) ?? 1) - 1
              if (left <= 0) open.delete(session)
              else open.set(session, left)
            })
          })
        })

      return RateLimits.of({ take, guard, admit, admitPush })
    })
  )
}
