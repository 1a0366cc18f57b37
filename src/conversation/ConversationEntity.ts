/**
 * The Conversation entity: the single writer of one conversation. It keeps membership, the last
 * MsgId and the sequence in memory (rebuilt from SQL on activation), drains its mailbox in batches
 * so that sends arriving together share one transaction (GroupCommit), answers a send only after
 * its commit, and hands each committed batch to Delivery (push/), which takes it to the members.
 */
import { Cause, Clock, Duration, Effect, Layer, Metric, Option, Queue, Schedule, Scope, Semaphore } from "effect"
import { Entity, type Envelope } from "effect/cluster"
import { AppConfig } from "../Config.ts"
import {
  ConversationNotFound,
  ConversationTypeOutOfRange,
  DatabaseUnavailable,
  EmptyMembers,
  isConversationTypeInRange,
  UnstorableMessage
} from "../domain/Conversation.ts"
import { aboutMessages, debugEnabled } from "../observability/Logging.ts"
import { entityActivations } from "../observability/Telemetry.ts"
import { Delivery } from "../push/Delivery.ts"
import { ConversationStore, toMsgData } from "../storage/ConversationStore.ts"
import { causeIsUnreachable } from "../storage/DatabaseHealth.ts"
import { commitSends, isUnstorable, traced } from "./GroupCommit.ts"
import * as Membership from "./Membership.ts"
import { makeStateHolder } from "./State.ts"
import { Conversation, type Send } from "./Protocol.ts"
import * as Reading from "./Reading.ts"

type Request = Envelope.Request<any>
type SendRequest = Envelope.Request<typeof Send>

/** How soon a conversation reloads after a write whose outcome is unknown, and retries. */
const RELOAD_AFTER = "1 second"

const entityLayer = (maxIdleTime: Duration.Duration) =>
  Conversation.toLayerQueue(
    Effect.gen(function* () {
      const id = (yield* Entity.CurrentAddress).entityId
      yield* Metric.update(entityActivations("Conversation"), 1)
      const store = yield* ConversationStore
      const config = yield* AppConfig
      const debug = debugEnabled(config.logLevel)
      const tracing = config.otlpEndpoint !== undefined
      const scope = yield* Scope.Scope
      const self = (yield* Conversation.client)(id)
      // Hand-overs left undone when this conversation stops go to its next host: it hands over
      // everything after the position recorded here, however old (read when it loads), before
      // anything new. The position is written first: the Redeliver starts the next host, which may
      // be this node at once (a conversation passivating here), and it reads the position as it loads.
      const warn = (what: string) => (cause: Cause.Cause<unknown>) =>
        Effect.logWarning(what, cause).pipe(Effect.annotateLogs({ conversationId: id }))
      const handovers = yield* (yield* Delivery).open(id, ({ handedThrough }) =>
        Effect.andThen(
          handedThrough === undefined ? Effect.void : store.markRedeliverAfter(id, handedThrough).pipe(
            Effect.timeout("2 seconds"),
            Effect.catchCause(warn("could not record how far hand-overs went"))
          ),
          self.Redeliver(undefined, { discard: true }).pipe(
            Effect.timeout("2 seconds"),
            Effect.catchCause(warn("could not leave a redelivery for the next host"))
          )
        ))

      return (mailbox, replier) => {
        const holder = makeStateHolder(id, store, config.resumeWindow, handovers)
        const load = holder.load
        const reading = Reading.make(id, store, handovers)
        /** A reload is scheduled (see failAll). */
        let reloading = false
        // Requests and a scheduled reload take turns.
        const lock = Semaphore.makeUnsafe(1)
        const reply = (request: Request, value: unknown) => replier.succeed(request as any, value as any)
        const fail = (request: Request, error: unknown) => replier.fail(request as any, error as any)

        /**
         * A write whose outcome is unknown: reload state before the next one, and answer
         * DatabaseUnavailable (503 / 10006 at the edge: retry) when the database could not be reached
         * or the connection broke, a defect (10002) for anything else. The entity runs with fatal
         * defects off, so the answer is final: the cluster does not restart the entity and replay
         * these requests (which, for a request that can never succeed, went on forever and left the
         * conversation answering nobody).
         *
         * The write may have committed all the same (the connection was lost after COMMIT). So the
         * state is reloaded soon, whether or not another request comes (a database outage ends, and
         * the sender may never retry), and everything after the last position known to be handed
         * over goes to the members then: a message that exists reaches every member.
         */
        const failAll = (requests: ReadonlyArray<Request>, cause: Cause.Cause<unknown>) =>
          Effect.gen(function* () {
            if (Cause.hasInterruptsOnly(cause)) return yield* Effect.failCause(cause as Cause.Cause<never>)
            if (holder.drop(true) && !reloading) {
              reloading = true
              yield* Effect.sleep(RELOAD_AFTER).pipe(
                Effect.andThen(lock.withPermit(load)),
                Effect.retry({ schedule: Schedule.spaced(RELOAD_AFTER) }),
                Effect.ensuring(Effect.sync(() => (reloading = false))),
                Effect.forkIn(scope)
              )
            }
            const unreachable = causeIsUnreachable(cause)
            yield* (unreachable
              ? Effect.logWarning("conversation write failed: database unreachable", cause)
              : Effect.logError("conversation write failed", cause)).pipe(Effect.annotateLogs({ conversationId: id }))
            const defect = Cause.die(Cause.squash(cause))
            for (const r of requests) {
              // Redeliver declares no errors: it is retried by its next host whatever happens here.
              if (unreachable && r.tag !== "Redeliver") yield* fail(r, new DatabaseUnavailable())
              else yield* replier.failCause(r as any, defect as any)
            }
          })

        /**
         * The database refused the sends' data (a NUL or unpaired surrogate that got past the edge):
         * nothing was written. Each send is tried again alone, on reloaded state, so only the
         * offending one fails, with its own error, once (the store logged why).
         */
        const refuseInvalid = (requests: ReadonlyArray<SendRequest>) =>
          Effect.gen(function* () {
            holder.drop(false)
            if (requests.length > 1) {
              for (const r of requests) yield* handleSends([r])
              return
            }
            yield* fail(requests[0], new UnstorableMessage({ conversationId: id }))
          })

        const sendBatch = (requests: ReadonlyArray<SendRequest>): Effect.Effect<void> =>
          Effect.gen(function* () {
            const current = yield* load
            if (current === null) {
              for (const r of requests) yield* fail(r, new ConversationNotFound({ conversationId: id }))
              return
            }
            const now = yield* Clock.currentTimeMillis
            const { answers, rows } = yield* commitSends(
              store,
              id,
              current.state,
              current.clock,
              requests.map((r) => r.payload),
              now
            )
            if (rows.length > 0) {
              if (debug) {
                yield* Effect.logDebug("messages committed").pipe(
                  Effect.annotateLogs(aboutMessages(id, rows.map((r) => r.msg_id)))
                )
              }
              const span = tracing ? Option.getOrUndefined(yield* Effect.option(Effect.currentSpan)) : undefined
              yield* handovers.offer(
                current.state.members,
                rows[rows.length - 1].seq,
                rows.map(toMsgData),
                now + handovers.budget,
                span
              )
            }
            for (let i = 0; i < requests.length; i++) {
              const answer = answers[i]
              if ("_tag" in answer) yield* fail(requests[i], answer)
              else yield* reply(requests[i], answer)
            }
          }).pipe(
            Effect.catchCause((cause) => isUnstorable(cause) ? refuseInvalid(requests) : failAll(requests, cause))
          )

        const handleSends = (requests: ReadonlyArray<SendRequest>) =>
          tracing ? traced(id, requests, sendBatch(requests)) : sendBatch(requests)

        const handleOne = (request: Request) =>
          Effect.gen(function* () {
            if (request.tag === "Redeliver") {
              // Starting is the point: `load` hands the resume window over again.
              yield* load
              return yield* reply(request, undefined)
            }
            const payload = request.payload as any
            if (request.tag === "Create" && !isConversationTypeInRange(payload.conversationType)) {
              return yield* fail(
                request,
                new ConversationTypeOutOfRange({ conversationType: payload.conversationType })
              )
            }
            if (request.tag === "Create" || request.tag === "Join" || request.tag === "Remove") {
              const sessions = [...new Set<string>(payload.sessions)]
              if (sessions.length === 0) return yield* fail(request, new EmptyMembers())
              const current = yield* load
              if (request.tag === "Create") {
                if (current === null) {
                  yield* store.create(id, payload.conversationType, sessions, payload)
                  holder.created(payload.conversationType, sessions)
                }
                return yield* reply(request, undefined)
              }
              if (current === null) return yield* fail(request, new ConversationNotFound({ conversationId: id }))
              const byBackend = payload.byBackend === true
              const changed = request.tag === "Join"
                ? yield* Membership.join(store, id, current.state, sessions, byBackend, config.publicJoin ?? "open")
                : yield* Membership.remove(store, id, current.state, sessions, byBackend)
              if (!Array.isArray(changed)) return yield* fail(request, changed)
              reading.membersChanged(
                current.state.members,
                changed,
                request.tag === "Join" ? "joined" : byBackend ? "kicked" : "left"
              )
              return yield* reply(request, undefined)
            }
            const current = yield* load
            if (current === null) return yield* fail(request, new ConversationNotFound({ conversationId: id }))
            const answer = yield* reading.handle(request, current.state)
            return yield* "failure" in answer ? fail(request, answer.failure) : reply(request, answer.success)
          }).pipe(Effect.catchCause((cause) => failAll([request], cause)))

        return Queue.takeBetween(mailbox, 1, config.groupCommitMax).pipe(
          Effect.flatMap((batch) =>
            lock.withPermit(
              Effect.gen(function* () {
                let i = 0
                while (i < batch.length) {
                  if (batch[i].tag === "Send") {
                    let j = i
                    while (j < batch.length && batch[j].tag === "Send") j++
                    yield* handleSends(batch.slice(i, j) as Array<SendRequest>)
                    i = j
                  } else {
                    yield* handleOne(batch[i])
                    i++
                  }
                }
                // A defect no handler caught must not end the loop (with fatal defects off, nothing
                // would restart it): whoever is still unanswered in the batch gets it (answers are
                // given once, so the others are untouched).
              }).pipe(Effect.catchCause((cause) => failAll(batch, cause)))
            )
          ),
          Effect.forever,
          Effect.orDie
        ) as Effect.Effect<never>
      }
    }),
    // A defect answers its own request only: no restart that would replay the mailbox (see failAll).
    { maxIdleTime, disableFatalDefects: true }
  )

/** Idle conversations passivate after `QUICKIM_ENTITY_IDLE` and rebuild their state from SQL when next used. */
export const ConversationEntityNoDeps = Layer.unwrap(Effect.map(AppConfig, (c) => entityLayer(c.entityIdle)))

/** With what it builds on: its store and the hand-over of committed messages to their mailboxes. */
export const ConversationEntityLive = ConversationEntityNoDeps.pipe(
  Layer.provide([Delivery.layer, ConversationStore.layer])
)
