/**
 * The Conversation entity: the single writer of one conversation. It keeps membership, the last
 * MsgId and the sequence in memory (rebuilt from SQL on activation), drains its mailbox in batches
 * so that sends arriving together share one transaction (GroupCommit), answers a send only after
 * its commit, and hands each committed batch to Delivery (push/), which takes it to the members.
 */
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import type * as Scheduler from "effect/Scheduler"
import * as Scope from "effect/Scope"
import type * as Tracer from "effect/Tracer"
import * as Entity from "effect/cluster/Entity"
import type * as Envelope from "effect/cluster/Envelope"
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
import { ConversationStore, type MessageRow, toMsgData } from "../storage/ConversationStore.ts"
import { causeIsUniqueViolation, causeIsUnreachable } from "../storage/DatabaseHealth.ts"
import { advance, commitSends, type Committed, isUnstorable, needsLookup, number, traced } from "./GroupCommit.ts"
import { type Lane, LocalConversations, type LocalRefusal, type LocalSend } from "./LocalConversations.ts"
import * as Membership from "./Membership.ts"
import { type Loaded, makeStateHolder, type StateHolder } from "./State.ts"
import { Conversation, type Send } from "./Protocol.ts"
import * as Reading from "./Reading.ts"

type Request = Envelope.Request<any>
/** A reload of the conversation's state after a write of unknown outcome (see failAll), run by the loop. */
interface Reload {
  readonly _tag: "Reload"
  readonly tag: "Reload"
  readonly done: Deferred.Deferred<void, unknown>
}
/** What the entity's loop takes: its mailbox's requests, sends handed to it in this process, reloads. */
type Item = Request | LocalSend | Reload
type SendItem = Envelope.Request<typeof Send> | LocalSend

const isLocal = (item: Item): item is LocalSend => item._tag === "LocalSend"
const isReload = (item: Item): item is Reload => item._tag === "Reload"

/** How soon a conversation reloads after a write whose outcome is unknown, and retries. */
const RELOAD_AFTER = "1 second"

const entityLayer = (maxIdleTime: Duration.Duration) =>
  Conversation.toLayerQueue(
    Effect.gen(function* () {
      const id = (yield* Entity.CurrentAddress).entityId
      yield* Metric.update(entityActivations("Conversation"), 1)
      const store = yield* ConversationStore
      const config = yield* AppConfig
      const locals = yield* LocalConversations
      const debug = debugEnabled(config.logLevel)
      const tracing = config.otlpEndpoint !== undefined
      const clock = yield* Effect.clockWith(Effect.succeed)
      const scope = yield* Scope.Scope
      const self = (yield* Conversation.client)(id)
      const warn = (what: string) => (cause: Cause.Cause<unknown>) =>
        Effect.logWarning(what, cause).pipe(Effect.annotateLogs({ conversationId: id }))
      /** The state's holder of the entity's run (set as it starts). */
      let holder: StateHolder | undefined
      // Each commit records how far hand-overs went when it was written (a host killed right after
      // a commit leaves the rest to the next host). A stop with everything handed over says so, so
      // that the next host does not hand the last batch over again.
      const settledAll = (last: string | undefined) =>
        holder?.mayOwe() !== true || last === undefined || last === ""
          ? Effect.void
          : store.clearRedeliverAfter(id, last).pipe(
            Effect.timeout("2 seconds"),
            // Without the database (its outage stops every conversation at once) the record stays,
            // and the next host hands the last batch over again: nothing to warn about.
            Effect.catchCause((cause) =>
              causeIsUnreachable(cause) || Cause.isTimeoutError(Cause.squash(cause))
                ? Effect.void
                : warn("could not record that every hand-over was done")(cause)
            )
          )
      // Hand-overs left undone when this conversation stops go to its next host: it hands over
      // everything after the position recorded here, however old (read when it loads), before
      // anything new. The position is written first: the Redeliver starts the next host, which may
      // be this node at once (a conversation passivating here), and it reads the position as it loads.
      const leaveOwed = (handedThrough: string | undefined) =>
        Effect.andThen(
          handedThrough === undefined ? Effect.void : store.markRedeliverAfter(id, handedThrough).pipe(
            Effect.timeout("2 seconds"),
            Effect.catchCause(warn("could not record how far hand-overs went"))
          ),
          self.Redeliver(undefined, { discard: true }).pipe(
            Effect.timeout("2 seconds"),
            Effect.catchCause(warn("could not leave a redelivery for the next host"))
          )
        )
      const handovers = yield* (yield* Delivery).open(
        id,
        ({ handedThrough, settled }) => settled ? settledAll(handedThrough) : leaveOwed(handedThrough),
        (from, to) => store.markGap(id, from, to)
      )

      return (mailbox, replier) => {
        const state = makeStateHolder(id, store, config.resumeWindow, handovers)
        holder = state
        const load = state.load
        const reading = Reading.make(id, store, handovers)
        /** A reload is scheduled (see failAll). */
        let reloading = false
        /** Puts an item in the loop's queue; false once the entity is stopping (set with the queue below). */
        let enqueue: (item: Item) => boolean = () => false
        /** Answers a send taken by direct call, once (`undefined`: not begun, the sender goes round by the entity message). */
        const settle = (send: LocalSend, outcome: Exit.Exit<any, LocalRefusal> | undefined) => {
          if (send.answered) return
          send.answered = true
          send.resume(outcome)
        }
        const reply = (item: Item, value: unknown) =>
          isLocal(item)
            ? Effect.sync(() => settle(item, Exit.succeed(value)))
            : replier.succeed(item as any, value as any)
        const fail = (item: Item, error: unknown) =>
          isLocal(item)
            ? Effect.sync(() => settle(item, Exit.fail(error as LocalRefusal)))
            : isReload(item)
            ? Effect.sync(() => Deferred.doneUnsafe(item.done, Exit.fail(error)))
            : replier.fail(item as any, error as any)
        const failCause = (item: Item, cause: Cause.Cause<unknown>) =>
          isLocal(item)
            ? Effect.sync(() => settle(item, Exit.failCause(cause as Cause.Cause<LocalRefusal>)))
            : isReload(item)
            ? Effect.sync(() => Deferred.doneUnsafe(item.done, Exit.failCause(cause)))
            : replier.failCause(item as any, cause as any)
        /**
         * The state loaded again, by the loop, so that no request runs meanwhile; nothing to do when
         * the entity is stopping (its next host loads anew).
         */
        const reload = Effect.suspend(() => {
          const done = Deferred.makeUnsafe<void, unknown>()
          return enqueue({ _tag: "Reload", tag: "Reload", done }) ? Deferred.await(done) : Effect.void
        })

        /**
         * A write whose outcome is unknown: reload state before the next one, and answer
         * DatabaseUnavailable (503 / 10006 at the edge: retry) when the database could not be reached
         * or the connection broke, or another host wrote the same key first (a previous host of the
         * conversation still writing: the retry numbers after it), a defect (10002) for anything
         * else. The entity runs with fatal defects off, so the answer is final: the cluster does not
         * restart the entity and replay these requests (which, for a request that can never succeed,
         * went on forever and left the conversation answering nobody).
         *
         * The write may have committed all the same (the connection was lost after COMMIT). So the
         * state is reloaded soon, whether or not another request comes (a database outage ends, and
         * the sender may never retry), and everything after the last position known to be handed
         * over goes to the members then: a message that exists reaches every member.
         */
        const failAll = (requests: ReadonlyArray<Item>, cause: Cause.Cause<unknown>) =>
          Effect.gen(function* () {
            if (Cause.hasInterruptsOnly(cause)) return yield* Effect.failCause(cause as Cause.Cause<never>)
            if (state.drop(true) && !reloading) {
              reloading = true
              yield* Effect.sleep(RELOAD_AFTER).pipe(
                Effect.andThen(reload),
                Effect.retry({ schedule: Schedule.spaced(RELOAD_AFTER) }),
                Effect.ensuring(Effect.sync(() => (reloading = false))),
                Effect.forkIn(scope)
              )
            }
            const unreachable = causeIsUnreachable(cause)
            const elsewhere = !unreachable && causeIsUniqueViolation(cause)
            yield* (unreachable
              ? Effect.logWarning("conversation write failed: database unreachable", cause)
              : elsewhere
              ? Effect.logWarning("conversation written by another host meanwhile: state reloaded", cause)
              : Effect.logError("conversation write failed", cause)).pipe(Effect.annotateLogs({ conversationId: id }))
            const defect = Cause.die(Cause.squash(cause))
            for (const r of requests) {
              // Redeliver declares no errors: it is retried by its next host whatever happens here.
              if ((unreachable || elsewhere) && r.tag !== "Redeliver") yield* fail(r, new DatabaseUnavailable())
              else yield* failCause(r, defect)
            }
          })

        /**
         * The database refused the sends' data (a NUL or unpaired surrogate that got past the edge):
         * nothing was written. Each send is tried again alone, on reloaded state, so only the
         * offending one fails, with its own error, once (the store logged why).
         */
        const refuseInvalid = (requests: ReadonlyArray<SendItem>) =>
          Effect.gen(function* () {
            state.drop(false)
            if (requests.length > 1) {
              for (const r of requests) yield* handleSends([r])
              return
            }
            yield* fail(requests[0], new UnstorableMessage({ conversationId: id }))
          })

        /** Sends taken by direct call, each answered now. */
        const settleAll = (requests: ReadonlyArray<LocalSend>, answers: Committed["answers"]) => {
          for (let i = 0; i < requests.length; i++) {
            const answer = answers[i]
            settle(requests[i], "_tag" in answer ? Exit.fail(answer) : Exit.succeed(answer))
          }
        }
        /** Each send's answer, in order; sends taken by direct call all answered in one step. */
        const answerAll = (requests: ReadonlyArray<SendItem>, answers: Committed["answers"]) => {
          if (requests.every(isLocal)) return Effect.sync(() => settleAll(requests as Array<LocalSend>, answers))
          return Effect.forEach(requests, (request, i) => {
            const answer = answers[i]
            return "_tag" in answer ? fail(request, answer) : reply(request, answer)
          }, { discard: true })
        }

        /** The committed rows to Delivery, which takes them to the members. */
        const handOver = (members: ReadonlyMap<string, number>, rows: ReadonlyArray<MessageRow>, now: number) => {
          const offer = (span?: Tracer.Span) =>
            handovers.offer(members, rows[rows.length - 1].seq, rows.map(toMsgData), now + handovers.budget, span)
          const offered = tracing
            ? Effect.flatMap(Effect.option(Effect.currentSpan), (span) => offer(Option.getOrUndefined(span)))
            : offer()
          return debug
            ? Effect.andThen(
              Effect.logDebug("messages committed").pipe(
                Effect.annotateLogs(aboutMessages(id, rows.map((r) => r.msg_id)))
              ),
              offered
            )
            : offered
        }

        const sendLoaded = (requests: ReadonlyArray<SendItem>, current: Loaded | null) => {
          if (current === null) {
            return Effect.forEach(requests, (r) => fail(r, new ConversationNotFound({ conversationId: id })), {
              discard: true
            })
          }
          const now = clock.currentTimeMillisUnsafe()
          const sends = requests.map((r) => r.payload)
          if (tracing || debug || needsLookup(current.state, sends)) {
            return Effect.flatMap(
              commitSends(store, id, current.state, current.clock, sends, now, handovers.handedThrough()),
              ({ answers, rows }) => {
                if (rows.length === 0) return answerAll(requests, answers)
                state.committed()
                return Effect.andThen(handOver(current.state.members, rows, now), answerAll(requests, answers))
              }
            )
          }
          // Every send's case: numbered, written and handed over with no effect but the write's.
          const { answers, rows } = number(id, current.state, current.clock, sends, now, new Map())
          if (rows.length === 0) return answerAll(requests, answers)
          return Effect.flatMap(store.appendMessages(id, rows, handovers.handedThrough()), () => {
            advance(current.state, rows)
            state.committed()
            const members = current.state.members
            const left = handovers.offerNow(
              members,
              rows[rows.length - 1].seq,
              rows.map(toMsgData),
              now + handovers.budget
            )
            if (left === undefined && requests.every(isLocal)) {
              settleAll(requests as Array<LocalSend>, answers)
              return Effect.void
            }
            return Effect.andThen(left ?? Effect.void, answerAll(requests, answers))
          })
        }

        // Loaded already is every send's case: no effect to read the state.
        const sendBatch = (requests: ReadonlyArray<SendItem>): Effect.Effect<void> => {
          const current = state.current()
          return (current !== undefined
            ? sendLoaded(requests, current)
            : Effect.flatMap(load, (loaded) => sendLoaded(requests, loaded))).pipe(
              Effect.catchCause((cause) => isUnstorable(cause) ? refuseInvalid(requests) : failAll(requests, cause))
            )
        }

        const handleSends = (requests: ReadonlyArray<SendItem>) =>
          tracing ? traced(id, requests, sendBatch(requests)) : sendBatch(requests)

        const handleOne = (request: Request | Reload) =>
          Effect.gen(function* () {
            if (isReload(request)) {
              const loaded = yield* Effect.exit(load)
              return Deferred.doneUnsafe(request.done, Exit.asVoid(loaded))
            }
            if (request.tag === "Touch") return yield* reply(request, undefined)
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
                  state.created(payload.conversationType, sessions)
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

        // Sends by direct call (LocalConversations) and the mailbox's requests meet in one queue:
        // the loop below takes them in arrival order, in batches, one batch at a time (reloads too).
        /** When the cluster last saw a message of this entity's (see Touch). */
        let lastMessage = Date.now()
        const touchEvery = Duration.toMillis(maxIdleTime) / 3

        /** The rest of a batch that was interrupted (the entity stopping): sends not begun go round by the entity message. */
        const abandon = (batch: ReadonlyArray<Item>, begun: number) =>
          Effect.sync(() => {
            for (let k = 0; k < batch.length; k++) {
              const item = batch[k]
              if (isLocal(item)) settle(item, k < begun ? Exit.fail(new DatabaseUnavailable()) : undefined)
            }
          })

        // The loop's queue, in arrival order, and its wake while it waits for an item. The wake is
        // scheduled, not called: the sends that arrive meanwhile (one read of the sockets) join the batch.
        let inbox: Array<Item> = []
        let wake: ((next: Effect.Effect<Array<Item>>) => void) | undefined
        /** Where the wake is scheduled: the loop fiber's dispatcher (set as the loop starts). */
        let dispatcher: Scheduler.SchedulerDispatcher | undefined
        const put = (item: Item) => {
          inbox.push(item)
          if (wake === undefined) return
          const resume = wake
          wake = undefined
          dispatcher!.scheduleTask(() => resume(takeSome), 0)
        }
        const some = (): Array<Item> => {
          if (inbox.length <= config.groupCommitMax) {
            const batch = inbox
            inbox = []
            return batch
          }
          return inbox.splice(0, config.groupCommitMax)
        }
        const takeSome = Effect.sync(some)
        const next = Effect.callback<Array<Item>>((resume) => {
          if (inbox.length > 0) return resume(Effect.succeed(some()))
          wake = resume
        })

        /** The batch under way (undefined between batches) and how many of its items were begun. */
        let underWay: Array<Item> | undefined
        let begun = 0

        /** After a batch: a conversation busy with direct calls only tells the cluster it is in use now and then. */
        const touched = (direct: boolean): Effect.Effect<void> => {
          underWay = undefined
          const now = Date.now()
          if (!direct) {
            lastMessage = now
            return Effect.void
          }
          if (now - lastMessage < touchEvery) return Effect.void
          lastMessage = now
          return self.Touch(undefined, { discard: true }).pipe(
            Effect.catchCause(warn("could not keep the conversation active")),
            Effect.forkIn(scope),
            Effect.asVoid
          )
        }

        const run = () =>
          next.pipe(
            Effect.flatMap((batch) => {
              // Empty only if the entity stopped between the wake and this take: nothing to do.
              if (batch.length === 0) return Effect.void
              underWay = batch
              begun = 0
              let direct = false
              // Every send's case: a batch of sends only, handled at once (no generator to step through).
              const sendsOnly = batch.every((item) => item.tag === "Send")
              if (sendsOnly) {
                begun = batch.length
                direct = batch.some(isLocal)
              }
              const handled = sendsOnly ? handleSends(batch as Array<SendItem>) : Effect.gen(function* () {
                let i = 0
                while (i < batch.length) {
                  if (batch[i].tag === "Send") {
                    let j = i
                    while (j < batch.length && batch[j].tag === "Send") {
                      if (isLocal(batch[j])) direct = true
                      j++
                    }
                    begun = j
                    yield* handleSends(batch.slice(i, j) as Array<SendItem>)
                    i = j
                  } else {
                    begun = i + 1
                    if (isReload(batch[i])) direct = true
                    yield* handleOne(batch[i] as Request | Reload)
                    i++
                  }
                }
              })
              // A defect no handler caught must not end the loop (with fatal defects off, nothing
              // would restart it): whoever is still unanswered in the batch gets it (answers are
              // given once, so the others are untouched).
              return handled.pipe(
                Effect.catchCause((cause) => failAll(batch, cause)),
                Effect.flatMap(() => touched(direct))
              )
            }),
            // Every batch waits for its commit or answers at once: the fiber need not yield besides.
            Effect.forever({ disableYield: true }),
            // The entity stopping: the batch under way is abandoned (one hook for the whole loop).
            Effect.onInterrupt(() => underWay === undefined ? Effect.void : abandon(underWay, begun))
          )

        return Effect.gen(function* () {
          dispatcher = (yield* Effect.fiber).currentDispatcher
          let open = true
          enqueue = (item) => {
            if (!open) return false
            put(item)
            return true
          }
          const lane: Lane = enqueue
          const unregister = locals.add(id, lane)
          yield* Scope.addFinalizer(
            scope,
            Effect.suspend(() => {
              open = false
              unregister()
              return Effect.sync(() => {
                const items = inbox
                inbox = []
                for (const item of items) if (isLocal(item)) settle(item, undefined)
              })
            })
          )
          yield* Queue.takeAll(mailbox).pipe(
            Effect.flatMap((requests) => Effect.sync(() => requests.forEach(put))),
            Effect.forever,
            Effect.forkIn(scope)
          )
          return yield* run()
        }).pipe(Effect.orDie) as Effect.Effect<never>
      }
    }),
    // A defect answers its own request only: no restart that would replay the mailbox (see failAll).
    { maxIdleTime, disableFatalDefects: true }
  )

/** Idle conversations passivate after `QUICKIM_ENTITY_IDLE` and rebuild their state from SQL when next used. */
export const ConversationEntityNoDeps = Layer.unwrap(Effect.map(AppConfig, (c) => entityLayer(c.entityIdle)))

/** With what it builds on: its store and the hand-over of committed messages to their mailboxes. */
export const ConversationEntityLive = ConversationEntityNoDeps.pipe(
  Layer.provide([Delivery.layer, ConversationStore.layer, LocalConversations.layer])
)
