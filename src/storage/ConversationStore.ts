/**
 * SQL access for conversations, members and messages. Writes are called only by the owning
 * Conversation entity; reads serve the HTTP handlers directly.
 */
import type * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as SqlClient from "effect/sql/SqlClient"
import type * as SqlError from "effect/sql/SqlError"
import {
  type ConversationDetail,
  ConversationNotFound,
  type MsgData,
  UnstorableMessage
} from "../domain/Conversation.ts"
import { AppConfig, DEFAULT_MAX_HISTORY_BYTES } from "../Config.ts"
import {
  defaultCommitBounds,
  makeCommitBatcher,
  type MessageRow,
  type MovedRead,
  type ReadMove
} from "./CommitBatcher.ts"
import { DatabaseHealth, isInvalidData } from "./DatabaseHealth.ts"
import { queryDuration, storeActivity, storeOperation } from "../observability/Telemetry.ts"

export interface ConversationState {
  readonly conversationType: number
  readonly lastMsgId: string | undefined
  readonly lastSeq: number
  readonly members: Map<string, number>
  /** Each member's read position (seq 0 and null: nothing read); the entity keeps it, as it is its only writer. */
  readonly reads: Map<string, Position>
  /** Set by a host that stopped with hand-overs outstanding: everything after it is handed over again. */
  readonly redeliverAfter: string | undefined
  /**
   * The start of what was dropped for some member within two resume windows (markGap), if anything
   * was: a host that died as it dropped them may not have told the members.
   */
  readonly gapFrom?: string | undefined
}

export type { MessageRow, MovedRead, ReadMove } from "./CommitBatcher.ts"

export interface StoredMessage {
  readonly msg_id: string
  readonly conversation_id: string
  readonly from_session: string
  readonly send_time: string
  readonly status: number
  readonly type: number
  readonly content: string
  /** bigint: the driver may give it as a string. */
  readonly seq: number | string
}

export const toMsgData = (r: StoredMessage): MsgData => ({
  MsgId: r.msg_id,
  ConversationID: r.conversation_id,
  FromSession: r.from_session,
  SendTime: r.send_time,
  Status: Number(r.status),
  Type: Number(r.type),
  Content: r.content,
  Seq: Number(r.seq)
})

/** `sql.insert` takes a non-empty list; callers never pass an empty one. */
const rowsOf = <A extends object>(rows: ReadonlyArray<A>) =>
  rows as unknown as readonly [Record<string, unknown>, ...Array<Record<string, unknown>>]

export const PAGE = 30
export const RANGE_LIMIT = 1000
/** What a message adds to a history answer beyond its content and sender: ids, time and JSON keys. */
export const MESSAGE_OVERHEAD_BYTES = 160

type Sql<A> = Effect.Effect<A, SqlError.SqlError>

/**
 * A statement whose data the database refused (SQLSTATE class 22: NUL, unpaired surrogates and the
 * like wrote nothing) fails as the conversation's UnstorableMessage, logged here with the SQL detail.
 */
const refusingData = <A>(id: string, effect: Sql<A>): Effect.Effect<A, SqlError.SqlError | UnstorableMessage> =>
  Effect.catchIf(
    effect,
    isInvalidData,
    (error) =>
      Effect.logWarning("the database refused a message's data", error).pipe(
        Effect.annotateLogs({ conversationId: id }),
        Effect.andThen(Effect.fail(new UnstorableMessage({ conversationId: id })))
      )
  )

const timedAlready = new WeakSet<object>()

/**
 * How long after a conversation dropped messages for a member (conversation_gaps.gap_at) a replay still
 * reads them however old: forty resume windows (10 minutes by default). A member told of the gap
 * replays within it unless its mailbox stays out of reach that long while its connection gets
 * other messages.
 */
export const gapMemoryMillis = (resumeWindow: Duration.Duration) => 40 * Duration.toMillis(resumeWindow)

/** An operation that times itself, counts itself in flight and informs DatabaseHealth: timedStore leaves it as it is. */
const timesItself = <F extends object>(operation: F): F => {
  timedAlready.add(operation)
  return operation
}

/**
 * Every operation of a store timed into `quickim_db_query_duration_seconds{op}` and counted while in
 * flight, and its failures shown to DatabaseHealth (one for want of the database marks it lost).
 */
export const timedStore = <S extends object>(store: S, health: DatabaseHealth["Service"]): S => {
  const out: Record<string, unknown> = {}
  const watched = (metric: Metric.Metric<number, unknown>, effect: Effect.Effect<unknown, unknown>) =>
    Effect.tapCause(storeOperation(metric, effect), health.observe)
  for (const [op, value] of Object.entries(store)) {
    if (timedAlready.has(value)) {
      out[op] = value
      continue
    }
    const metric = queryDuration(op)
    out[op] = Effect.isEffect(value)
      ? watched(metric, value as Effect.Effect<unknown, unknown>)
      : (...args: Array<unknown>) =>
        watched(metric, (value as (...a: Array<unknown>) => Effect.Effect<unknown>)(...args))
  }
  return out as S
}

/** A conversation's own fields (extension): set by the backend, announced to members when they change. */
export interface ConversationInfo {
  readonly isArchive: boolean
  readonly name: string
  readonly extra: string
}

/** Where a member's read position starts when it joins: the last message then (seq 0, null: none). */
export interface Position {
  readonly seq: number
  readonly msgId: string | null
}

export class ConversationStore extends Context.Service<ConversationStore, {
  readonly load: (id: string) => Sql<Option.Option<ConversationState>>
  readonly create: (
    id: string,
    conversationType: number,
    sessions: ReadonlyArray<string>,
    info?: { readonly name?: string | undefined; readonly extra?: string | undefined }
  ) => Sql<void>
  /**
   * Adds members after the message at `at`, their read position there: history from before the join
   * never counts as unread. `liftBans` (the backend adding them): their bans go in the same transaction.
   */
  readonly addMembers: (id: string, sessions: ReadonlyArray<string>, at: Position, liftBans: boolean) => Sql<void>
  /** Sets what is given of the name and extra data; the conversation's fields after it (None: no such id). */
  readonly update: (
    id: string,
    change: { readonly name?: string | undefined; readonly extra?: string | undefined }
  ) => Sql<Option.Option<ConversationInfo>>
  readonly info: (id: string) => Sql<Option.Option<ConversationInfo>>
  /** `ban` (a kick by the backend): the sessions are also recorded as banned, in the same transaction. */
  readonly removeMembers: (id: string, sessions: ReadonlyArray<string>, ban: boolean) => Sql<void>
  /** Those of `sessions` the backend removed from the conversation and did not add again. */
  readonly bannedAmong: (id: string, sessions: ReadonlyArray<string>) => Sql<ReadonlyArray<string>>
  /** All or nothing, in one transaction: fails with the first unknown id and changes nothing then. */
  readonly setArchive: (
    ids: ReadonlyArray<string>,
    isArchive: boolean
  ) => Effect.Effect<void, SqlError.SqlError | ConversationNotFound>
  /** Fails with UnstorableMessage when the database refused the rows' data (nothing was written). */
  readonly appendMessages: (
    id: string,
    rows: ReadonlyArray<MessageRow>,
    handedThrough?: string
  ) => Effect.Effect<void, SqlError.SqlError | UnstorableMessage>
  /**
   * Moves read positions forward (never back), in a statement shared with other conversations'
   * commits (CommitBatcher); the positions it moved.
   */
  readonly moveReads: (id: string, moves: ReadonlyArray<ReadMove>) => Sql<ReadonlyArray<MovedRead>>
  /** Fails with UnstorableMessage when the database refused the keys' data. */
  readonly findByClientIds: (
    id: string,
    keys: ReadonlyArray<{ readonly session: string; readonly clientMsgId: string }>
  ) => Effect.Effect<
    ReadonlyArray<{ session: string; clientMsgId: string; msgId: string; seq: number; sendTime: string }>,
    SqlError.SqlError | UnstorableMessage
  >
  readonly isMember: (id: string, session: string) => Sql<boolean>
  readonly exists: (ids: ReadonlyArray<string>) => Sql<ReadonlyArray<string>>
  readonly joined: (session: string) => Sql<ReadonlyArray<string>>
  /** With `session`'s read state: None when the conversation does not exist or it is not a member. */
  readonly detail: (id: string, session: string) => Sql<Option.Option<ConversationDetail>>
  readonly lastMsgId: (id: string) => Sql<string | null>
  /**
   * Records how far a stopping host handed everything over. Each commit records it too (how far its
   * host had handed everything over when it wrote: `appendMessages`' `handedThrough`), so that a host
   * killed between a commit and its hand-over leaves it to the next one.
   */
  readonly markRedeliverAfter: (id: string, after: string) => Sql<void>
  /** A stopping host handed everything over through `last`, its last message: nothing is owed. */
  readonly clearRedeliverAfter: (id: string, last: string) => Sql<void>
  /**
   * Records that messages `from` … `to` were dropped for some member (Delivery): replays read them
   * for the gap memory (Replay). A range recorded within the resume window is widened, an older one replaced.
   */
  readonly markGap: (id: string, from: string, to: string) => Sql<void>
  /**
   * History pages. With `reader`, only if that session is a member (else nothing), in the same
   * statement: a history read is one round trip (the caller tells "not a member" from "no messages"
   * only when the page comes back empty).
   */
  readonly range: (
    id: string,
    start: string,
    end: string,
    desc: boolean,
    reader?: string
  ) => Sql<ReadonlyArray<MsgData>>
  readonly before: (id: string, anchor: string, desc: boolean, reader?: string) => Sql<ReadonlyArray<MsgData>>
  readonly after: (id: string, anchor: string, desc: boolean, reader?: string) => Sql<ReadonlyArray<MsgData>>
  readonly last: (id: string, count: number, desc: boolean, reader?: string) => Sql<ReadonlyArray<MsgData>>
  /** The newest `count` messages after `floor`, oldest first (a re-hosted conversation's hand-over). */
  readonly newestAfter: (id: string, floor: string, count: number) => Sql<ReadonlyArray<MsgData>>
  readonly ping: Sql<void>
}>()("quick-im/ConversationStore") {
  /** With the node's DatabaseHealth, which the store's failures inform and the HTTP handlers consult. */
  static readonly layer = Layer.effect(
    ConversationStore,
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const health = yield* DatabaseHealth
      const config = yield* AppConfig
      const batcher = makeCommitBatcher(sql, config.commitsInFlight, {
        maxRows: config.commitMaxRows ?? defaultCommitBounds.maxRows,
        maxBytes: config.commitMaxBytes ?? defaultCommitBounds.maxBytes
      })
      const maxHistoryBytes = config.maxHistoryBytes ?? DEFAULT_MAX_HISTORY_BYTES
      const columns = sql`msg_id, conversation_id, from_session, send_time, status, type, content, seq`
      const ordered = (rows: ReadonlyArray<StoredMessage>, rowsAreDesc: boolean, desc: boolean) => {
        const out = rows.map(toMsgData)
        return rowsAreDesc === desc ? out : out.reverse()
      }
      /**
       * A history page: up to `limit` messages from the anchor on, in `direction`, cut at a message
       * boundary once their bytes (content and sender as UTF-8, plus MESSAGE_OVERHEAD_BYTES each) would
       * pass QUICKIM_MAX_HISTORY_BYTES, but always the first one. PostgreSQL sums as it walks the
       * index, so neither side holds more than the page; the client pages on from the last id it got.
       */
      const page = (
        id: string,
        where: typeof columns,
        direction: "ASC" | "DESC",
        limit: number,
        reader: string | undefined
      ) => {
        const dir = direction === "ASC" ? sql`ASC` : sql`DESC`
        const member = reader === undefined ? sql`` : sql`AND EXISTS (
            SELECT 1 FROM conversation_members WHERE conversation_id = ${id} AND session_id = ${reader})`
        return sql<StoredMessage>`SELECT ${columns} FROM (
            SELECT ${columns}, row_number() OVER w AS n,
              sum(octet_length(content) + octet_length(from_session) + ${MESSAGE_OVERHEAD_BYTES}) OVER w AS bytes
            FROM messages WHERE conversation_id = ${id} AND ${where} ${member}
            WINDOW w AS (ORDER BY msg_id ${dir} ROWS UNBOUNDED PRECEDING)
            ORDER BY msg_id ${dir} LIMIT ${limit}
          ) page WHERE n = 1 OR bytes <= ${maxHistoryBytes}`.pipe(
          // The subquery's order carries through; sorted again here (already sorted: linear) to not depend on it.
          Effect.map((rows) =>
            [...rows].sort((a: StoredMessage, b: StoredMessage) =>
              (a.msg_id < b.msg_id) === (direction === "ASC") ? -1 : 1
            )
          )
        )
      }

      // Every send's commit: timed, counted in flight and shown to DatabaseHealth as timedStore does,
      // but by the batcher's callback rather than by an effect per wrapper.
      const appendDuration = queryDuration("appendMessages")
      const metricContext = yield* Effect.context<never>()
      const appendFailed = (id: string, cause: Cause.Cause<SqlError.SqlError>) =>
        Effect.andThen(health.observe(cause), refusingData(id, Effect.failCause(cause)))
      const appendMessages = (id: string, rows: ReadonlyArray<MessageRow>, handedThrough?: string) =>
        Effect.suspend(() => {
          const started = performance.now()
          let outcome: Effect.Effect<void, SqlError.SqlError | UnstorableMessage> | undefined
          let resume: ((effect: Effect.Effect<void, SqlError.SqlError | UnstorableMessage>) => void) | undefined
          const free = batcher.submit(rows, [], (exit) => {
            storeActivity.inFlight--
            appendDuration.updateUnsafe((performance.now() - started) / 1000, metricContext)
            outcome = Exit.isSuccess(exit) ? Effect.void : appendFailed(id, exit.cause)
            if (resume !== undefined) resume(outcome)
          }, handedThrough ?? null)
          // Counted once queued (the callback, which counts it out, comes later: never from submit).
          storeActivity.inFlight++
          const answered = Effect.callback<void, SqlError.SqlError | UnstorableMessage>((r) => {
            if (outcome !== undefined) r(outcome)
            else resume = r
          })
          return free ? Effect.andThen(batcher.start, answered) : answered
        })

      return ConversationStore.of(timedStore({
        load: (id) =>
          Effect.gen(function* () {
            const rows = yield* sql<{
              conversation_type: string
              last_msg_id: string | null
              last_seq: string
              redeliver_after: string | null
              gap_from: string | null
              gap_at: string | null
            }>`SELECT c.conversation_type, c.last_msg_id, c.last_seq, c.redeliver_after, g.gap_from, g.gap_at
              FROM conversations c LEFT JOIN conversation_gaps g ON g.conversation_id = c.id WHERE c.id = ${id}`
            if (rows.length === 0) return Option.none()
            const members = yield* sql<
              { session_id: string; joined_seq: string; read_seq: string; read_msg_id: string | null }
            >`SELECT session_id, joined_seq, read_seq, read_msg_id FROM conversation_members
              WHERE conversation_id = ${id}`
            const row = rows[0]
            return Option.some({
              conversationType: Number(row.conversation_type),
              lastMsgId: row.last_msg_id ?? undefined,
              lastSeq: Number(row.last_seq),
              members: new Map(members.map((m) => [m.session_id, Number(m.joined_seq)])),
              reads: new Map(members.map((m) => [m.session_id, { seq: Number(m.read_seq), msgId: m.read_msg_id }])),
              redeliverAfter: row.redeliver_after ?? undefined,
              gapFrom:
                row.gap_at !== null && Number(row.gap_at) >= Date.now() - 2 * Duration.toMillis(config.resumeWindow)
                  ? row.gap_from ?? undefined
                  : undefined
            })
          }),
        create: (id, conversationType, sessions, info) =>
          sql.withTransaction(Effect.gen(function* () {
            yield* sql`INSERT INTO conversations ${
              sql.insert({
                id,
                conversation_type: conversationType,
                name: info?.name ?? "",
                extra: info?.extra ?? ""
              })
            }
              ON CONFLICT (id) DO NOTHING`
            yield* sql`INSERT INTO conversation_members ${
              sql.insert(rowsOf(sessions.map((s) => ({ conversation_id: id, session_id: s, joined_seq: 0 }))))
            } ON CONFLICT DO NOTHING`
          })),
        addMembers: (id, sessions, at, liftBans) => {
          const add = sql`INSERT INTO conversation_members ${
            sql.insert(rowsOf(sessions.map((s) => ({
              conversation_id: id,
              session_id: s,
              joined_seq: at.seq,
              read_seq: at.seq,
              read_msg_id: at.msgId
            }))))
          } ON CONFLICT DO NOTHING`
          return liftBans
            ? sql.withTransaction(Effect.gen(function* () {
              yield* sql`DELETE FROM conversation_bans WHERE conversation_id = ${id} AND ${
                sql.in("session_id", sessions)
              }`
              yield* add
            }))
            : add.pipe(Effect.asVoid)
        },
        removeMembers: (id, sessions, ban) => {
          const remove = sql`DELETE FROM conversation_members WHERE conversation_id = ${id} AND ${
            sql.in("session_id", sessions)
          }`
          return ban
            ? sql.withTransaction(Effect.gen(function* () {
              yield* remove
              yield* sql`INSERT INTO conversation_bans ${
                sql.insert(rowsOf(sessions.map((s) => ({ conversation_id: id, session_id: s }))))
              } ON CONFLICT DO NOTHING`
            }))
            : remove.pipe(Effect.asVoid)
        },
        bannedAmong: (id, sessions) =>
          sessions.length === 0
            ? Effect.succeed([])
            : sql<{ session_id: string }>`SELECT session_id FROM conversation_bans
              WHERE conversation_id = ${id} AND ${sql.in("session_id", sessions)}`.pipe(
              Effect.map((rows) => rows.map((r) => r.session_id))
            ),
        // Not through the Conversation entities: one transaction cannot span many entities, and none
        // of them needs the flag (no rule reads it; their writes never touch the column). Row locks
        // order this against their commits, which set only the last-message columns: nothing is lost.
        // The rows are locked in id order first, which also proves that every one exists.
        setArchive: (ids, isArchive) => {
          const unique = [...new Set(ids)]
          if (unique.length === 0) return Effect.void
          return sql.withTransaction(Effect.gen(function* () {
            const found = yield* sql<{ id: string }>`SELECT id FROM conversations WHERE ${sql.in("id", unique)}
              ORDER BY id FOR UPDATE`
            const have = new Set(found.map((r) => r.id))
            const missing = unique.find((id) => !have.has(id))
            if (missing !== undefined) return yield* new ConversationNotFound({ conversationId: missing })
            yield* sql`UPDATE conversations SET is_archive = ${isArchive} WHERE ${sql.in("id", unique)}`
          }))
        },
        appendMessages: timesItself(appendMessages),
        moveReads: (_id, moves) => batcher.append([], moves),
        findByClientIds: (id, keys) =>
          refusingData(
            id,
            sql<{ from_session: string; client_msg_id: string; msg_id: string; seq: string; send_time: string }>`
            SELECT from_session, client_msg_id, msg_id, seq, send_time FROM messages
            WHERE conversation_id = ${id} AND ${sql.in("client_msg_id", [...new Set(keys.map((k) => k.clientMsgId))])}`
              .pipe(Effect.map((rows) =>
                rows.map((r) => ({
                  session: r.from_session,
                  clientMsgId: r.client_msg_id,
                  msgId: r.msg_id,
                  seq: Number(r.seq),
                  sendTime: r.send_time
                }))
              ))
          ),
        isMember: (id, session) =>
          sql`SELECT 1 FROM conversation_members WHERE conversation_id = ${id} AND session_id = ${session}`.pipe(
            Effect.map((rows) => rows.length > 0)
          ),
        exists: (ids) =>
          ids.length === 0
            ? Effect.succeed([])
            : sql<{ id: string }>`SELECT id FROM conversations WHERE ${sql.in("id", ids)}`.pipe(
              Effect.map((rows) => rows.map((r) => r.id))
            ),
        joined: (session) =>
          sql<{ conversation_id: string }>`SELECT conversation_id FROM conversation_members
            WHERE session_id = ${session} ORDER BY joined_at, conversation_id`.pipe(
            Effect.map((rows) => rows.map((r) => r.conversation_id))
          ),
        detail: (id, session) =>
          sql<{
            id: string
            last_msg_id: string | null
            last_send_time: string | null
            is_delete: boolean
            conversation_type: string
            last_send_session: string | null
            is_archive: boolean
            name: string
            extra: string
            unread: string
            read_msg_id: string | null
          }>`SELECT c.id, c.last_msg_id, c.last_send_time, c.is_delete, c.conversation_type, c.last_send_session,
              c.is_archive, c.name, c.extra, c.last_seq - m.read_seq AS unread, m.read_msg_id
            FROM conversations c JOIN conversation_members m ON m.conversation_id = c.id AND m.session_id = ${session}
            WHERE c.id = ${id}`.pipe(
            Effect.map((rows) =>
              Option.map(Option.fromNullishOr(rows[0]), (r) => ({
                ConversationID: r.id,
                LastMsgID: r.last_msg_id,
                LastSendTime: r.last_send_time,
                IsDelete: r.is_delete,
                ConversationType: Number(r.conversation_type),
                LastSendSession: r.last_send_session,
                IsArchive: r.is_archive,
                Name: r.name,
                Extra: r.extra,
                Unread: Number(r.unread),
                ReadMsgId: r.read_msg_id
              }))
            )
          ),
        update: (id, change) =>
          sql<{ is_archive: boolean; name: string; extra: string }>`UPDATE conversations SET
              name = COALESCE(${change.name ?? null}::text, name), extra = COALESCE(${
            change.extra ?? null
          }::text, extra)
            WHERE id = ${id} RETURNING is_archive, name, extra`.pipe(
            Effect.map((rows) =>
              Option.map(
                Option.fromNullishOr(rows[0]),
                (r) => ({ isArchive: r.is_archive, name: r.name, extra: r.extra })
              )
            )
          ),
        info: (id) =>
          sql<{ is_archive: boolean; name: string; extra: string }>`SELECT is_archive, name, extra FROM conversations
            WHERE id = ${id}`.pipe(
            Effect.map((rows) =>
              Option.map(
                Option.fromNullishOr(rows[0]),
                (r) => ({ isArchive: r.is_archive, name: r.name, extra: r.extra })
              )
            )
          ),
        markRedeliverAfter: (id, after) =>
          Effect.asVoid(sql`UPDATE conversations SET redeliver_after = ${after} WHERE id = ${id}`),
        clearRedeliverAfter: (id, last) =>
          Effect.asVoid(
            sql`UPDATE conversations SET redeliver_after = NULL WHERE id = ${id} AND last_msg_id = ${last}
              AND redeliver_after IS NOT NULL`
          ),
        markGap: (id, from, to) =>
          Effect.suspend(() => {
            const now = Date.now()
            // A drop within the resume window of the last one belongs to the same episode (a node
            // dying, a stalled commit): the range widens. An older range is replaced: its members
            // were told long ago, and a range kept growing would have every replay repeat all of it.
            const fresh = sql`g.gap_at >= ${now - Duration.toMillis(config.resumeWindow)}`
            return Effect.asVoid(sql`INSERT INTO conversation_gaps AS g (conversation_id, gap_from, gap_to, gap_at)
              VALUES (${id}, ${from}, ${to}, ${now})
              ON CONFLICT (conversation_id) DO UPDATE SET
                gap_from = CASE WHEN ${fresh} AND g.gap_from < EXCLUDED.gap_from THEN g.gap_from ELSE EXCLUDED.gap_from END,
                gap_to = CASE WHEN ${fresh} AND g.gap_to > EXCLUDED.gap_to THEN g.gap_to ELSE EXCLUDED.gap_to END,
                gap_at = EXCLUDED.gap_at`)
          }),
        lastMsgId: (id) =>
          sql<{ last_msg_id: string | null }>`SELECT last_msg_id FROM conversations WHERE id = ${id}`.pipe(
            Effect.map((rows) => rows[0]?.last_msg_id ?? null)
          ),
        range: (id, start, end, desc, reader) =>
          page(id, sql`msg_id >= ${start} AND msg_id <= ${end}`, "ASC", RANGE_LIMIT, reader).pipe(
            Effect.map((rows) => ordered(rows, false, desc))
          ),
        before: (id, anchor, desc, reader) =>
          page(id, sql`msg_id < ${anchor}`, "DESC", PAGE, reader).pipe(
            Effect.map((rows) => ordered(rows, true, desc))
          ),
        after: (id, anchor, desc, reader) =>
          page(id, sql`msg_id > ${anchor}`, "ASC", PAGE, reader).pipe(
            Effect.map((rows) => ordered(rows, false, desc))
          ),
        last: (id, count, desc, reader) =>
          page(id, sql`TRUE`, "DESC", count, reader).pipe(
            Effect.map((rows) => ordered(rows, true, desc))
          ),
        newestAfter: (id, floor, count) =>
          sql<StoredMessage>`SELECT ${columns} FROM messages WHERE conversation_id = ${id}
            AND msg_id > ${floor} ORDER BY msg_id DESC LIMIT ${count}`.pipe(
            Effect.map((rows) => ordered(rows, true, false))
          ),
        ping: sql`SELECT 1`.pipe(Effect.asVoid)
      }, health))
    })
  ).pipe(Layer.provideMerge(DatabaseHealth.layer))
}
