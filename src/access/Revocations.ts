/**
 * Token revocation, and the end of push connections whose token stops being valid.
 *
 * `inner/revoke_tokens` refuses every token issued to some sessions (on one platform or on all) at
 * or before its moment. A revocation is one row of `token_revocations`, written together with a
 * PostgreSQL notification; every node keeps the latest moment per session and platform in memory,
 * so verifying a token never waits for the database. On PostgreSQL each node LISTENs and reads new
 * rows as soon as a notification arrives (a revocation made on one node holds on every node within
 * milliseconds), again each time its listening connection is re-established, and every 5 s whatever
 * happens (a safety net, not the path). Moments older than the token TTL are dropped: every token
 * issued before them has expired.
 *
 * Push connections register here with their token's claims: each is ended once, when its token
 * expires or when a revocation that covers it arrives (made on this node or read from the table).
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as SqlClient from "effect/sql/SqlClient"
import type * as SqlError from "effect/sql/SqlError"
import { AppConfig, isConfigured } from "../Config.ts"

/** What a verified token says, as push connections and revocations need it. */
export interface TokenClaims {
  readonly sid: string
  readonly platform: number
  /** When the token was issued, ms since the epoch. */
  readonly issuedMs: number
  /** When it expires, ms since the epoch. */
  readonly expMs: number
}

export type TokenEnd = "token expired" | "token revoked"

/** A push connection ended because of its token (expired or revoked). */
export class TokenEnded extends Schema.TaggedError<TokenEnded>()("TokenEnded", { reason: Schema.String }) {}

/** The channel a revocation notifies on PostgreSQL. */
const CHANNEL = "quickim_token_revocations"
/** Rows are read this often even without a notification. */
const POLL_EVERY = Duration.seconds(5)
/** After the listening connection fails, LISTEN again after this. */
const RELISTEN_AFTER = Duration.seconds(1)
/** Rows are read again for this long after a read: a row committed a little late is still seen. */
const OVERLAP_MS = 5_000
/** Kept past the TTL, for clock differences between nodes. */
const SLACK_MS = 60_000
const PRUNE_EVERY_MS = 60_000
/** setTimeout's longest delay (~24.8 days); a later expiry re-arms the timer. */
const MAX_TIMER_MS = 2 ** 31 - 1

interface Latest {
  /** Latest revocation on every platform, 0 when none. */
  all: number
  platforms: Map<number, number> | undefined
}

interface Watched {
  readonly platform: number
  readonly issuedMs: number
  readonly end: (reason: TokenEnd) => void
}

interface Row {
  readonly sessions: ReadonlyArray<string> | string
  readonly platform: number | null
  readonly revoked_at: string | number
  readonly polled_at: number
}

export class Revocations extends Context.Service<Revocations, {
  /**
   * From now on refuses every token issued to `sessions` (on `platform`, or on every platform) up
   * to now, on every node; returns that moment (ms). Tokens issued after the call returns are valid.
   */
  /** Fails with the SqlError when the row could not be written: the handler tells "database down" (503) apart. */
  readonly revoke: (
    sessions: ReadonlyArray<string>,
    platform: number | undefined
  ) => Effect.Effect<number, SqlError.SqlError>
  readonly isRevoked: (sid: string, platform: number, issuedMs: number) => boolean
  /** Calls `end` once, when the token expires or is revoked; the function returned unregisters. */
  readonly watch: (claims: TokenClaims, end: (reason: TokenEnd) => void) => () => void
}>()("quick-im/server/Revocations") {
  static readonly layer = Layer.effect(
    Revocations,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const sql = yield* SqlClient.SqlClient
      const keepMs = Duration.toMillis(config.tokenTtl) + SLACK_MS
      const latest = new Map<string, Latest>()
      const live = new Map<string, Set<Watched>>()

      /** Idempotent: a row read twice changes nothing. */
      const apply = (sessions: ReadonlyArray<string>, platform: number | null, revokedAt: number) => {
        for (const sid of sessions) {
          let entry = latest.get(sid)
          if (entry === undefined) latest.set(sid, entry = { all: 0, platforms: undefined })
          if (platform === null) entry.all = Math.max(entry.all, revokedAt)
          else {
            entry.platforms ??= new Map()
            entry.platforms.set(platform, Math.max(entry.platforms.get(platform) ?? 0, revokedAt))
          }
          const watched = live.get(sid)
          if (watched === undefined) continue
          for (const w of [...watched]) {
            if ((platform === null || platform === w.platform) && w.issuedMs <= revokedAt) w.end("token revoked")
          }
        }
      }

      const isRevoked = (sid: string, platform: number, issuedMs: number) => {
        const entry = latest.get(sid)
        if (entry === undefined) return false
        return issuedMs <= entry.all || issuedMs <= (entry.platforms?.get(platform) ?? 0)
      }

      const prune = (now: number) => {
        const cutoff = now - keepMs
        for (const [sid, entry] of latest) {
          if (entry.all < cutoff) entry.all = 0
          if (entry.platforms !== undefined) {
            for (const [platform, at] of entry.platforms) if (at < cutoff) entry.platforms.delete(platform)
          }
          if (entry.all === 0 && (entry.platforms?.size ?? 0) === 0) latest.delete(sid)
        }
      }

      // The window of rows still to read, in the database's clock (every node reads the same one).
      let since = 0
      let prunedAt = 0
      const read = Effect.gen(function* () {
        const rows = yield* sql<Row>`
          SELECT sessions, platform, revoked_at, (extract(epoch FROM now()) * 1000)::float8 AS polled_at
          FROM token_revocations WHERE created_at > to_timestamp(${since / 1000})`
        for (const row of rows) {
          const sessions = typeof row.sessions === "string" ? JSON.parse(row.sessions) : row.sessions
          apply(sessions, row.platform, Number(row.revoked_at))
        }
        if (rows.length > 0) since = Math.max(since, Number(rows[0].polled_at) - OVERLAP_MS)
        const now = yield* Clock.currentTimeMillis
        if (now - prunedAt >= PRUNE_EVERY_MS) {
          prunedAt = now
          prune(now)
          yield* sql`DELETE FROM token_revocations WHERE created_at < now() - ${keepMs} * interval '1 millisecond'`
        }
      })

      // At start: every revocation that may still refuse a token.
      const [{ now }] = yield* sql<{ now: number }>`SELECT (extract(epoch FROM now()) * 1000)::float8 AS now`.pipe(
        Effect.orDie
      )
      since = Number(now) - keepMs
      yield* Effect.orDie(read)
      // Other nodes revoke too (PostgreSQL); an embedded database has this node alone.
      const pg = yield* Effect.serviceOption(PgClient.PgClient)
      if (isConfigured(config.databaseUrl) && Option.isSome(pg)) {
        /**
         * Logs the first failure of a run of failures, not each; `ok` ends the run (for an effect
         * that never succeeds, such as listening, call it once it works again).
         */
        const quiet = (what: string) => {
          let failing = false
          const ok = Effect.sync(() => (failing = false))
          const guard = <E>(effect: Effect.Effect<void, E>) =>
            effect.pipe(
              Effect.tap(() => ok),
              Effect.catchCause((cause) =>
                failing ? Effect.void : Effect.andThen(
                  Effect.sync(() => (failing = true)),
                  Effect.logWarning(what, cause)
                )
              )
            )
          return { ok, guard }
        }
        const listening = quiet("listening for token revocations failed; listening again every second")
        // Listening: each notification (however many arrived at once) is one read. The read after
        // LISTEN catches up on whatever was revoked while this node was not listening.
        const listen = Effect.scoped(Effect.gen(function* () {
          const notifications = yield* pg.value.listen(CHANNEL)
          yield* listening.ok
          yield* read
          for (;;) {
            yield* Queue.take(notifications)
            yield* Queue.clear(notifications)
            yield* read
          }
        }))
        yield* listen.pipe(
          listening.guard,
          Effect.repeat(Schedule.spaced(RELISTEN_AFTER)),
          Effect.forkScoped
        )
        yield* read.pipe(
          quiet("reading token revocations failed; retrying every 5 s").guard,
          Effect.repeat(Schedule.spaced(POLL_EVERY)),
          Effect.forkScoped
        )
      }

      const revoke = Effect.fn("Revocations.revoke")(function* (
        sessions: ReadonlyArray<string>,
        platform: number | undefined
      ) {
        const unique = [...new Set(sessions)]
        const revokedAt = yield* Clock.currentTimeMillis
        // The row and its notification commit together (the notification goes out on commit).
        yield* sql`WITH added AS (
            INSERT INTO token_revocations (sessions, platform, revoked_at)
            VALUES (${JSON.stringify(unique)}::jsonb, ${platform ?? null}, ${revokedAt}) RETURNING 1)
          SELECT pg_notify(${CHANNEL}, '') FROM added`
        apply(unique, platform ?? null, revokedAt)
        // A token is revoked when issued at or before `revokedAt`: answer only once this node's clock
        // is past it, so a token asked for after the answer is valid.
        while ((yield* Clock.currentTimeMillis) <= revokedAt) yield* Effect.sleep(Duration.millis(1))
        return revokedAt
      })

      const watch = (claims: TokenClaims, end: (reason: TokenEnd) => void) => {
        let done = false
        let timer: ReturnType<typeof setTimeout> | undefined = undefined
        const unwatch = () => {
          done = true
          if (timer !== undefined) clearTimeout(timer)
          const set = live.get(claims.sid)
          set?.delete(watched)
          if (set?.size === 0) live.delete(claims.sid)
        }
        const watched: Watched = {
          platform: claims.platform,
          issuedMs: claims.issuedMs,
          end: (reason) => {
            if (done) return
            unwatch()
            end(reason)
          }
        }
        // Timers run on the wall clock, as token expiry does.
        const arm = () => {
          const left = claims.expMs - Date.now()
          if (left <= 0) return watched.end("token expired")
          timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS))
        }
        let set = live.get(claims.sid)
        if (set === undefined) live.set(claims.sid, set = new Set())
        set.add(watched)
        // Revoked or expired between its verification and now: ended just after the caller registered.
        queueMicrotask(() => {
          if (isRevoked(claims.sid, claims.platform, claims.issuedMs)) watched.end("token revoked")
          else if (!done) arm()
        })
        return unwatch
      }

      return Revocations.of({ revoke, isRevoked, watch })
    })
  )
}
