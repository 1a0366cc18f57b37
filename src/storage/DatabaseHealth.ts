/**
 * Whether this node can reach PostgreSQL now, so that requests during an outage are answered
 * 503 / 10006 at once instead of waiting for the database to come back.
 *
 * Waiting is what they did otherwise: Effect cluster keeps its shard locks in the database, and
 * while it cannot refresh them it holds no shard, so a request for a Conversation entity is retried
 * by the cluster until the locks are taken again (measured: sends unanswered for the whole of a
 * 30 s outage). A store operation that fails for want of the database, or a probe (`SELECT 1`,
 * every second) that fails, marks the database lost; a probe that answers marks it back.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as SqlClient from "effect/sql/SqlClient"
import { DatabaseUnavailable } from "../domain/Conversation.ts"
import { Waiters } from "./Waiters.ts"

/** How often a reachable database is probed, and how long a probe may take before it counts as lost. */
const PROBE_EVERY = Duration.seconds(1)
const PROBE_TIMEOUT = Duration.seconds(5)
/** How often a lost database is probed: the node serves again within this of PostgreSQL's return. */
const RETRY_EVERY = Duration.millis(250)

/** The SQLSTATE of a SqlError from PostgreSQL, or undefined for anything else. */
const sqlState = (error: unknown): string | undefined => {
  const e = error as { _tag?: unknown; reason?: { cause?: { code?: unknown } } }
  const code = e?._tag === "SqlError" ? e.reason?.cause?.code : undefined
  return typeof code === "string" ? code : undefined
}

/**
 * SQLSTATE classes and codes meaning "no database here" rather than "this statement is wrong":
 * 08 connection exceptions, 57P01–57P05 (shutdown, crash, not accepting connections yet,
 * idle-session timeout), 53300 too many connections.
 */
const unreachableState = (code: string) => code.startsWith("08") || code.startsWith("57P") || code === "53300"

/**
 * Whether `error` is a SqlError saying the database could not be reached or the connection broke.
 * For a write this also means its outcome is unknown: it may have committed.
 */
export const isDatabaseUnreachable = (error: unknown): boolean => {
  if ((error as { _tag?: unknown })?._tag !== "SqlError") return false
  if ((error as { reason?: { _tag?: unknown } }).reason?._tag === "ConnectionError") return true
  const code = sqlState(error)
  return code !== undefined && unreachableState(code)
}

/** Whether `error` is a SqlError of SQLSTATE class 22 (data exception): the statement's data was refused, nothing written. */
export const isInvalidData = (error: unknown): boolean => sqlState(error)?.startsWith("22") === true

/**
 * Whether a failure's cause holds a unique violation (SQLSTATE 23505): another writer stored the
 * same key first (for a conversation's commit: a previous host still writing while the conversation
 * is hosted here). The statement wrote nothing; tried again on fresh state, it can succeed.
 */
export const causeIsUniqueViolation = (cause: Cause.Cause<unknown>) =>
  cause.reasons.some((r) => Cause.isFailReason(r) && sqlState(r.error) === "23505")

/** Whether a failure's cause holds an unreachable-database error (see isDatabaseUnreachable). */
export const causeIsUnreachable = (cause: Cause.Cause<unknown>) =>
  cause.reasons.some((r) => Cause.isFailReason(r) && isDatabaseUnreachable(r.error))

export class DatabaseHealth extends Context.Service<DatabaseHealth, {
  readonly reachable: () => boolean
  /** Takes note of a store operation's failure: one for want of the database marks it lost. */
  readonly observe: (cause: Cause.Cause<unknown>) => Effect.Effect<void>
  /**
   * `effect`, unless the database is lost: then DatabaseUnavailable at once, and also as soon as
   * the database is lost while `effect` runs (it is interrupted; its outcome is unknown, so a send
   * retried with its client_msg_id is answered with its MsgId if it did commit).
   */
  readonly whileReachable: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | DatabaseUnavailable, R>
  /**
   * Calls `listener` once, when the database is next lost (not when it is lost already); the
   * returned function takes it back. For a wait that answers by callback, this is `whileReachable`
   * without the two fibers of its race (ConversationSender's sends to a conversation active here).
   */
  readonly onLost: (listener: () => void) => () => void
}>()("quick-im/storage/DatabaseHealth") {
  static readonly layer = Layer.effect(
    DatabaseHealth,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      let reachable = true
      // Called once when the database is next lost: the waits answered DatabaseUnavailable then.
      const listeners = new Waiters()
      const onLost = (listener: () => void) => listeners.add(listener)
      const unavailable = Effect.fail(new DatabaseUnavailable())
      /** Fails with DatabaseUnavailable when the database is next lost. */
      const untilLost = Effect.callback<never, DatabaseUnavailable>((resume) =>
        Effect.sync(onLost(() => resume(unavailable)))
      )
      const markLost = (cause: Cause.Cause<unknown>) =>
        Effect.suspend(() => {
          if (!reachable) return Effect.void
          reachable = false
          listeners.callAll()
          return Effect.logWarning("database unreachable: answering 503 until it answers again", cause)
        })
      const markBack = Effect.suspend(() => {
        if (reachable) return Effect.void
        reachable = true
        return Effect.logInfo("database reachable again")
      })
      const probe = sql`SELECT 1`.pipe(
        Effect.timeout(PROBE_TIMEOUT),
        Effect.matchCauseEffect({ onSuccess: () => markBack, onFailure: markLost })
      )
      yield* probe.pipe(
        Effect.andThen(Effect.suspend(() => Effect.sleep(reachable ? PROBE_EVERY : RETRY_EVERY))),
        Effect.forever,
        Effect.forkScoped
      )
      return DatabaseHealth.of({
        reachable: () => reachable,
        observe: (cause) => causeIsUnreachable(cause) ? markLost(cause) : Effect.void,
        whileReachable: (effect) => Effect.suspend(() => reachable ? Effect.raceFirst(effect, untilLost) : unavailable),
        onLost
      })
    })
  )
}
