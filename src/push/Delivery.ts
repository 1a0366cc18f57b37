/**
 * Delivery: how a conversation's committed messages reach its members' mailboxes. The Conversation
 * entity opens one `Handovers` per activation and offers it each committed batch; one fiber hands
 * the batches over in commit order, off the send path, so each mailbox sees the conversation's
 * messages in commit order. A slow or absent member never delays the sender, nor the other members:
 * a member whose previous batch is still on its way (an entity message waiting for its mailbox's
 * new home) skips the next ones and is told so with the one after (`gap`).
 *
 * Resume covers a message only if it reached the mailbox within the resume window of its MsgId's
 * time (docs/architecture.md, "Why resume loses nothing"), so every hand-over is bounded by `budget`,
 * two thirds of the window from that time (the rest is margin for clock skew between nodes). A batch
 * that waited longer, or that does not fit the conversation's backlog
 * (QUICKIM_DELIVERY_BACKLOG_BYTES), is dropped, and its members are told of the gap instead: their
 * mailbox ends every subscription, and each connection replays from its last message. What was
 * dropped is recorded first (MarkGap): a member's last message may by then be newer than the window
 * around it, and replays read the recorded range however old.
 *
 * Offline members cost nothing: only a member whose Mailbox is active (it has a live connection or
 * a poll under way) is handed anything. A session with no active Mailbox has nothing to be handed
 * to, and whatever it connects with next replays from SQL (docs/architecture.md, "Why resume loses
 * nothing"): its Mailbox becomes active before the connection's replay reads, and the replay reads
 * what was committed before. On one node the hand-over visits the active Mailboxes of the group,
 * never the others; across nodes each node answers for the Mailboxes it holds.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import type * as Tracer from "effect/Tracer"
import { AppConfig } from "../Config.ts"
import type { MsgData } from "../domain/Conversation.ts"
import type { LiveEvent } from "../domain/Events.ts"
import { ShardRoutes } from "../cluster/ShardRoutes.ts"
import { aboutMessages, debugEnabled } from "../observability/Logging.ts"
import { deliveryGaps } from "../observability/Telemetry.ts"
import { messageSize } from "./Frames.ts"
import { type LocalMailbox, LocalMailboxes } from "./LocalMailboxes.ts"
import { addTo, type Groups } from "./Groups.ts"
import { chunked, MailboxRelay } from "./MailboxRelay.ts"
import { Mailbox } from "./Protocol.ts"

interface Batch {
  /**
   * Who the batch is for: the conversation's members (session → the seq of the last message before
   * it joined), read when the batch is handed over; those that joined after `lastSeq` are left out.
   */
  readonly audience: ReadonlyMap<string, number>
  /** The seq of the batch's last message. */
  readonly lastSeq: number
  /** Empty: the delivery of a gap alone, to the gapped members. */
  readonly messages: ReadonlyArray<MsgData>
  /** Estimated JSON bytes of `messages` (the backlog's bound). */
  readonly bytes: number
  /** When the hand-over is given up (epoch millis): the budget after the commit. */
  readonly deadline: number
  /** The commit's span, when tracing: the hand-over continues its trace. */
  readonly span?: Tracer.Span
  /** Not messages but a live event, for `announced` (see Handovers.announce). */
  readonly announced?: Announced
}

interface Announced {
  readonly event: LiveEvent
  readonly members: ReadonlyMap<string, number>
  readonly also: string | undefined
  readonly except: string | undefined
}

/** What a stopping conversation's hand-overs left undone. */
export interface Unsettled {
  /** Nothing: every member was handed everything, or told of the gap. */
  readonly settled: boolean
  /** How long the stop waited for them (ms). */
  readonly waited: number
  /** Batches queued or being handed over, members with an entity message on its way, members owed a gap. */
  readonly undelivered: number
  readonly busy: number
  readonly gapped: number
  /**
   * Every member was handed everything up to this MsgId, or told of the gap: the conversation's next
   * host hands over everything after it.
   */
  readonly handedThrough: string | undefined
}

/** One conversation activation's hand-overs. */
export interface Handovers {
  /** Two thirds of the resume window (ms): how long after its commit a batch may still be handed over. */
  readonly budget: number
  /**
   * Queues a committed batch for the members of `audience` that joined before its last message
   * (`lastSeq`); never waits. `audience` is read when the batch is handed over: a member that left
   * meanwhile is not handed it.
   */
  readonly offer: (
    audience: ReadonlyMap<string, number>,
    lastSeq: number,
    messages: ReadonlyArray<MsgData>,
    deadline: number,
    span?: Tracer.Span
  ) => Effect.Effect<void>
  /** `offer` done now: what is left of it as an effect, or undefined when nothing is. */
  readonly offerNow: (...args: Parameters<Handovers["offer"]>) => Effect.Effect<void> | undefined
  /**
   * Queues a live event for the connections that opted in of `members` (read when it is handed over),
   * plus `also` (a session that just left) and minus `except` (the typist); never waits. Events keep
   * their place among the conversation's messages and are live only: a member whose Mailbox is not
   * active does not get it (it reads the state when it connects), nor one that no try reaches
   * within a few seconds.
   */
  readonly announce: (
    event: LiveEvent,
    members: ReadonlyMap<string, number>,
    options?: { readonly also?: string | undefined; readonly except?: string | undefined }
  ) => void
  /** A fresh start of the hand-overs (load, create): everything up to `position` counts as handed over. */
  readonly handedFrom: (position: string) => void
  /** See `Unsettled.handedThrough`: undefined before the first `handedFrom`. */
  readonly handedThrough: () => string | undefined
  /**
   * Hands `recent` (the conversation's newest messages, in order, the last with seq `lastSeq`) over
   * again, each member only what was sent after it joined (`members`: session → the seq it joined
   * after), with the budget from `now`.
   */
  readonly again: (
    members: ReadonlyMap<string, number>,
    recent: ReadonlyArray<MsgData>,
    lastSeq: number,
    now: number
  ) => Effect.Effect<void>
}

/**
 * How a stopping conversation leaves unsettled hand-overs to its next host: it gets everything
 * after `handedThrough` handed over again (see `Unsettled`). Called too when everything is settled
 * (`settled`), in both modes; with hand-overs left, in multi-node mode only (on one node the next
 * host is this node after a restart, which hands over from the position each commit recorded).
 */
export type Owe = (left: Unsettled) => Effect.Effect<void>

/**
 * Records that the conversation's messages `from` … `to` were dropped for some member, so that
 * replays read them however old (ConversationStore.markGap, Replay). Done before any member is told.
 */
export type MarkGap = (from: string, to: string) => Effect.Effect<void, unknown>

const DELIVER_ATTEMPT = "5 seconds"
/** The audience of a delivery of nothing but the gap (its targets are the gapped members). */
const nobody: ReadonlyMap<string, number> = new Map()
/** How long a stopping conversation waits for its hand-overs before leaving them to its next host. */
const HANDOVER_WAIT = "1 second"
/** Default of `QUICKIM_DELIVERY_BACKLOG_BYTES`. */
const DELIVERY_BACKLOG_BYTES = 4 * 1024 * 1024

const sizeOf = (messages: ReadonlyArray<MsgData>) => {
  let bytes = 0
  for (const m of messages) bytes += messageSize(m)
  return bytes
}

export class Delivery extends Context.Service<Delivery, {
  /**
   * The hand-overs of `conversationId`, until the scope closes (the entity stops). Closing waits a
   * little for the hand-overs under way, then tells `owe` what is left (see Owe).
   */
  readonly open: (conversationId: string, owe: Owe, markGap: MarkGap) => Effect.Effect<Handovers, never, Scope.Scope>
}>()("quick-im/push/Delivery") {
  static readonly layerNoDeps = Layer.effect(
    Delivery,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const mailboxes = yield* Mailbox.client
      const local = yield* LocalMailboxes
      const routes = yield* ShardRoutes
      const relay = yield* MailboxRelay
      const tracing = config.otlpEndpoint !== undefined
      const budget = Math.max(1, Math.floor((Duration.toMillis(config.resumeWindow) * 2) / 3))
      const backlogMax = config.deliveryBacklogBytes ?? DELIVERY_BACKLOG_BYTES

      const multiNode = Option.isSome(config.runnerPort)
      /**
       * A batch may be handed over by the conversation's fiber when the hand-over fiber has nothing
       * queued: on one node and untraced, where a hand-over is direct calls only (no relay, no entity
       * message, no span to wait on).
       */
      const atOnce = !multiNode && !tracing
      const debug = debugEnabled(config.logLevel)
      // Runs what a relay's answer starts (a callback, outside any fiber) with this layer's services.
      const run = Effect.runForkWith(yield* Effect.context<never>())

      const open = Effect.fnUntraced(function* (id: string, owe: Owe, markGap: MarkGap) {
        const batches = yield* Queue.unbounded<Batch>()
        let undelivered = 0 // batches queued or being handed over
        let backlogBytes = 0 // of the batches queued
        /** Members that missed a batch: their next delivery carries `gap`. */
        const gapped = new Set<string>()
        /** Members with an entity-message delivery on its way: they skip batches until it settles. */
        const busy = new Set<string>()
        /** A delivery of nothing but the gap is queued. */
        let gapQueued = false
        /** The newest MsgId of the batches handOver has dealt with (handed, relayed, sent on, or dropped). */
        let processedThrough: string | undefined = undefined
        /** See `Unsettled.handedThrough`. */
        let handedThrough: string | undefined = undefined
        const settledUpTo = () => {
          if (busy.size === 0 && gapped.size === 0 && processedThrough !== undefined) handedThrough = processedThrough
        }
        /**
         * The MsgIds of what was dropped for some member and is not yet recorded (markGap). A member
         * told of a gap replays from its last message, which may be newer than the resume window
         * around what it missed (messages of other conversations kept coming), so the range is
         * recorded before any member is told: the replay reads it (Replay).
         */
        let unmarkedFrom: string | undefined = undefined
        let unmarkedTo: string | undefined = undefined
        const skipped = (messages: ReadonlyArray<MsgData>) => {
          if (messages.length === 0) return
          const from = messages[0].MsgId
          const to = messages[messages.length - 1].MsgId
          if (unmarkedFrom === undefined || from < unmarkedFrom) unmarkedFrom = from
          if (unmarkedTo === undefined || to > unmarkedTo) unmarkedTo = to
        }
        /** Records what was dropped; tried again every second until it is (nobody is told meanwhile). */
        const recordGaps = Effect.suspend(() => {
          const from = unmarkedFrom
          const to = unmarkedTo
          if (from === undefined || to === undefined) return Effect.void
          return markGap(from, to).pipe(
            Effect.tapCause((cause) =>
              Effect.logWarning("could not record dropped messages; trying again", cause).pipe(
                Effect.annotateLogs({ conversationId: id })
              )
            ),
            Effect.retry({ schedule: Schedule.spaced("1 second") }),
            Effect.andThen(Effect.sync(() => {
              // Widened meanwhile: recorded again, whole, before the next hand-over.
              if (unmarkedFrom === from && unmarkedTo === to) unmarkedFrom = unmarkedTo = undefined
            })),
            Effect.ignore
          )
        })
        const scope = yield* Scope.fork(yield* Scope.Scope)
        /**
         * Entity-message deliveries on their way. When the conversation stops they are interrupted
         * without waiting for them: interrupting a call to a mailbox whose node died or is moving
         * waits for the cluster to tell that node, seconds in which the shard could not move. What
         * they carried is owed to the next host (the stop records how far hand-overs went).
         */
        const inFlight = new Set<Fiber.Fiber<void>>()
        yield* Scope.addFinalizer(
          scope,
          Effect.sync(() => {
            for (const fiber of inFlight) fiber.interruptUnsafe()
            inFlight.clear()
          })
        )

        /** Queues a delivery of nothing but `gap` for the gapped members that can take it now. */
        const queueGap = () => {
          if (gapQueued) return
          let waiting = false
          for (const member of gapped) {
            if (!busy.has(member)) {
              waiting = true
              break
            }
          }
          if (!waiting) return
          gapQueued = true
          queueEmpty(Date.now() + budget)
        }

        /** Queues a batch of no messages: the gap alone, or (`announced`) a live event. */
        const queueEmpty = (deadline: number, announced?: Announced) => {
          undelivered++
          const batch: Batch = { audience: nobody, lastSeq: 0, messages: [], bytes: 0, deadline }
          Queue.offerUnsafe(batches, announced === undefined ? batch : { ...batch, announced })
        }

        /**
         * Hands `parts` (a batch in consecutive parts) to one member's Mailbox entity, in the
         * background: a mailbox whose node died or that is moving answers nobody until it is hosted
         * again, so each attempt is bounded and retried until `deadline`. Missed: the member is gapped.
         */
        const deliverToEntity = (
          member: string,
          parts: ReadonlyArray<ReadonlyArray<MsgData>>,
          gap: boolean,
          deadline: number
        ) => {
          busy.add(member)
          // Carried from here on; owed again if this delivery fails. A batch skipped meanwhile (see
          // handOver) owes a new one.
          if (gap) gapped.delete(member)
          let settled = false
          const client = mailboxes(member)
          const missed = () => {
            gapped.add(member)
            for (const part of parts) skipped(part)
          }
          return Effect.forEach(
            parts,
            (messages, i) => client.Deliver(i === 0 && gap ? { messages, gap: true } : { messages }),
            { discard: true }
          ).pipe(
            Effect.timeout(DELIVER_ATTEMPT),
            Effect.retry({ schedule: Schedule.spaced("250 millis") }),
            Effect.timeout(Duration.millis(Math.max(0, deadline - Date.now()))),
            Effect.matchCauseEffect({
              onSuccess: () =>
                Effect.sync(() => {
                  settled = true
                }),
              onFailure: (cause) =>
                Effect.sync(() => {
                  settled = true
                  missed()
                }).pipe(
                  Effect.andThen(Effect.logWarning("push to mailbox failed; its connections replay", cause)),
                  Effect.annotateLogs({ conversationId: id, session: member })
                )
            }),
            Effect.ensuring(Effect.sync(() => {
              busy.delete(member)
              // Interrupted (the conversation stops): the batch is left to the next host (Redeliver).
              if (!settled) missed()
              else if (gapped.has(member)) queueGap()
              else settledUpTo()
            })),
            Effect.forkDetach,
            Effect.map((fiber) => {
              inFlight.add(fiber)
              fiber.addObserver(() => inFlight.delete(fiber))
            })
          )
        }

        // A member's mailbox active in this process is called directly; mailboxes on another node
        // take the batch in that node's relay (MailboxRelay: one cluster message for many
        // conversations), and any the relay did not serve, or whose node is unknown, or that is told
        // of a gap, an entity message in the background (deliverToEntity).
        // Plain code up to the direct calls (every batch's case on one node); relays, entity messages
        // and traced hand-overs continue as effects (handOverRest): undefined when there are none.
        const handOver = (batch: Batch): Effect.Effect<void> | undefined =>
          unmarkedFrom === undefined
            ? handOverNow(batch)
            : Effect.andThen(recordGaps, Effect.suspend(() => handOverNow(batch) ?? Effect.void))

        const handOverNow = (
          { audience, lastSeq, messages, deadline, bytes }: Batch
        ): Effect.Effect<void> | undefined => {
          backlogBytes -= bytes
          if (messages.length === 0) gapQueued = false
          else processedThrough = messages[messages.length - 1].MsgId
          if (Date.now() >= deadline) {
            // Waited out its budget in the queue (behind a slow relay): too late to be resumed safely.
            // Its members hear of the gap with the next delivery, queued now if none follows.
            gapAll(audience, lastSeq, messages)
            return Effect.andThen(Metric.update(deliveryGaps, 1), Effect.sync(queueGap))
          }
          const entityMessage: Array<string> = []
          let byNode: Groups<string, string> = undefined
          /** When tracing: the direct hand-overs, made afterwards, each in its own span. */
          const traced: Array<readonly [string, LocalMailbox, boolean]> | undefined = tracing ? [] : undefined
          const visit = (member: string) => {
            if (busy.has(member)) {
              // Its previous batch is still on its way: this one must not overtake it.
              gapped.add(member)
              skipped(messages)
              return
            }
            const gap = gapped.has(member)
            const direct = local.get(member)
            if (direct !== undefined) {
              if (traced !== undefined) traced.push([member, direct, gap])
              else direct.deliver(messages, gap)
              if (gap) gapped.delete(member)
              return
            }
            if (!multiNode || routes.holds(member)) {
              // Its Mailbox would be active here: the session is offline, and will replay.
              gapped.delete(member)
              return
            }
            const node = gap ? undefined : routes.nodeOf(member)
            if (node === undefined) {
              entityMessage.push(member)
              return
            }
            byNode = addTo(byNode, node, member)
          }
          if (messages.length === 0) {
            // A delivery of nothing is the gap alone, for whoever still waits for it.
            for (const member of [...gapped]) visit(member)
          } else if (!multiNode && local.size() < audience.size) {
            // One node, a group larger than the active Mailboxes here: visit those, not the members.
            for (const member of local.sessions()) {
              const joined = audience.get(member)
              if (joined !== undefined && joined < lastSeq) visit(member)
            }
            // Members owed a gap that are not active: their next connection replays anyway.
            for (const member of gapped) if (local.get(member) === undefined) gapped.delete(member)
          } else {
            for (const [member, joined] of audience) if (joined < lastSeq) visit(member)
          }
          if ((traced === undefined || traced.length === 0) && byNode === undefined && entityMessage.length === 0) {
            queueGap()
            settledUpTo()
            return undefined
          }
          return handOverRest(messages, deadline, traced ?? [], byNode, entityMessage)
        }

        const handOverRest = Effect.fnUntraced(function* (
          messages: ReadonlyArray<MsgData>,
          deadline: number,
          traced: ReadonlyArray<readonly [string, LocalMailbox, boolean]>,
          byNode: Groups<string, string>,
          entityMessage: ReadonlyArray<string>
        ) {
          for (const [member, direct, gap] of traced) {
            yield* Effect.sync(() => direct.deliver(messages, gap)).pipe(
              Effect.withSpan("Mailbox.deliver", { attributes: { session: member } })
            )
          }
          // Relays first (they answer in one round trip), then entity messages for whatever they did
          // not serve and for mailboxes whose node is unknown. A large batch goes in parts, each whole
          // before the next, so no cluster message grows past what the runner transport accepts.
          const parts = byNode === undefined && entityMessage.length === 0 ? [] : chunked(messages)
          for (let i = 0; byNode !== undefined && i < parts.length; i++) {
            const notServed = yield* relay.deliver(byNode, parts[i])
            if (notServed.length === 0) continue
            // Not served by the relay: this part and the rest go to them as entity messages.
            const rest = parts.slice(i)
            for (const member of notServed) yield* deliverToEntity(member, rest, false, deadline)
            const left = new Set(notServed)
            const remaining = new Map<string, Array<string>>()
            for (const [node, group] of byNode) {
              const still = group.filter((m) => !left.has(m))
              if (still.length > 0) remaining.set(node, still)
            }
            byNode = remaining.size === 0 ? undefined : remaining
          }
          for (const member of entityMessage) yield* deliverToEntity(member, parts, gapped.has(member), deadline)
          queueGap()
          settledUpTo()
        })

        /**
         * A live event to the active Mailboxes among its audience: direct here, relayed to other
         * nodes; a Mailbox whose node is unknown, or that a relay did not serve (its shard is moving),
         * by an entity message in the background, bounded in time (live only).
         */
        const announceNow = ({ also, event, except, members }: Announced) => {
          let byNode: Groups<string, string> = undefined
          let unknown: Array<string> | undefined = undefined
          const visit = (member: string) => {
            if (member === except) return
            const direct = local.get(member)
            if (direct !== undefined) return direct.event(event)
            if (!multiNode || routes.holds(member)) return
            const node = routes.nodeOf(member)
            if (node === undefined) (unknown ??= []).push(member)
            else byNode = addTo(byNode, node, member)
          }
          if (!multiNode && local.size() < members.size) {
            for (const member of local.sessions()) if (members.has(member)) visit(member)
          } else {
            for (const member of members.keys()) visit(member)
          }
          if (also !== undefined && !members.has(also)) visit(also)
          const byEntity = (sessions: ReadonlyArray<string>) =>
            Effect.forEach(sessions, (member) => mailboxes(member).Announce({ event }, { discard: true }), {
              discard: true
            }).pipe(Effect.timeout(DELIVER_ATTEMPT), Effect.ignore, Effect.forkIn(scope), run)
          if (byNode !== undefined) relay.announce(byNode, event, byEntity)
          if (unknown !== undefined) byEntity(unknown)
        }

        /** Every member the batch was for is owed a gap. */
        const gapAll = (audience: ReadonlyMap<string, number>, lastSeq: number, messages: ReadonlyArray<MsgData>) => {
          skipped(messages)
          for (const [member, joined] of audience) if (joined < lastSeq) gapped.add(member)
        }

        /** What the backlog cannot hold: what is queued is dropped, and its members owed a gap. */
        const dropQueued = Effect.flatMap(Queue.clear(batches), (queued) => {
          for (const dropped of queued) {
            undelivered--
            if (dropped.announced !== undefined) continue
            backlogBytes -= dropped.bytes
            if (dropped.messages.length === 0) gapQueued = false
            gapAll(dropped.audience, dropped.lastSeq, dropped.messages)
          }
          return Metric.update(deliveryGaps, 1)
        })

        const offerNow: Handovers["offerNow"] = (audience, lastSeq, messages, deadline, span) => {
          const bytes = sizeOf(messages)
          if (atOnce && undelivered === 0 && unmarkedFrom === undefined) {
            // Nothing queued or under way: handed over now, by the conversation's fiber, with no
            // wake of the hand-over fiber (one node, untraced: every member is called directly).
            // Not while a drop waits to be recorded: that write is the hand-over fiber's (recordGaps).
            backlogBytes += bytes
            return handOverNow({ audience, lastSeq, messages, bytes, deadline })
          }
          const enqueue = () => {
            undelivered++
            backlogBytes += bytes
            Queue.offerUnsafe(
              batches,
              span === undefined ? { audience, lastSeq, messages, bytes, deadline } : {
                audience,
                lastSeq,
                messages,
                bytes,
                deadline,
                span
              }
            )
          }
          // The backlog is full (its hand-overs are slower than the conversation's commits).
          if (backlogBytes + bytes > backlogMax && Queue.sizeUnsafe(batches) > 0) {
            return Effect.andThen(dropQueued, Effect.sync(enqueue))
          }
          enqueue()
          return undefined
        }

        /** A hand-over traced as a child of its commit's span, when it has one. */
        const tracedBy = (batch: Batch, handedOver: Effect.Effect<void>) =>
          batch.span === undefined ? handedOver : handedOver.pipe(
            Effect.withSpan("Conversation.deliver", {
              parent: batch.span,
              attributes: {
                ...aboutMessages(id, batch.messages.map((m) => m.MsgId)),
                members: batch.audience.size
              }
            })
          )

        const offer: Handovers["offer"] = (...args) => Effect.suspend(() => offerNow(...args) ?? Effect.void)

        yield* Queue.take(batches).pipe(
          Effect.flatMap((batch) =>
            (batch.announced !== undefined
              ? Effect.sync(() => announceNow(batch.announced!))
              : tracedBy(batch, Effect.suspend(() => handOver(batch) ?? Effect.void))).pipe(
                Effect.ensuring(Effect.sync(() => undelivered--))
              )
          ),
          Effect.forever,
          Effect.forkScoped
        )

        // Passivation or a shard moving to another node (join, graceful stop): hand over what is
        // committed before the conversation stops, so connected members miss nothing. Across nodes
        // the wait is short and leaves out entity-message deliveries: a Mailbox on this node's shards
        // moves with it and cannot take anything until this node has stopped; what is left goes to
        // the next host (`owe`). Registered after the hand-over fiber and the in-flight deliveries'
        // scope, so it runs before either stops (finalizers run last-in first-out).
        yield* Effect.addFinalizer(() =>
          Effect.gen(function* () {
            const started = Date.now()
            yield* Effect.sleep("5 millis").pipe(
              Effect.repeat({ until: () => undelivered === 0 && (multiNode || busy.size === 0) }),
              Effect.timeout(multiNode ? HANDOVER_WAIT : "3 seconds"),
              Effect.ignore
            )
            const waited = Date.now() - started
            const settled = undelivered === 0 && busy.size === 0 && gapped.size === 0
            const left = { settled, waited, undelivered, busy: busy.size, gapped: gapped.size, handedThrough }
            if (settled || !multiNode) {
              if (settled) yield* owe(left)
              if (debug) {
                yield* Effect.logDebug("conversation stopped").pipe(Effect.annotateLogs({ conversationId: id, waited }))
              }
              return
            }
            yield* owe(left)
            if (debug) {
              yield* Effect.logDebug("conversation stopped, its hand-overs left to the next host").pipe(
                Effect.annotateLogs({ conversationId: id, redelivery: Date.now() - started - waited, ...left })
              )
            }
          })
        )

        const again = Effect.fnUntraced(function* (
          members: ReadonlyMap<string, number>,
          recent: ReadonlyArray<MsgData>,
          lastSeq: number,
          now: number
        ) {
          // Seqs are gapless in MsgId order: recent[i] has seq firstSeq + i.
          const firstSeq = lastSeq - recent.length + 1
          const bySlice = new Map<number, Map<string, number>>()
          for (const [member, joinedSeq] of members) {
            const from = Math.max(0, joinedSeq - firstSeq + 1)
            if (from >= recent.length) continue
            const slice = bySlice.get(from)
            if (slice === undefined) bySlice.set(from, new Map([[member, joinedSeq]]))
            else slice.set(member, joinedSeq)
          }
          for (const [from, audience] of bySlice) yield* offer(audience, lastSeq, recent.slice(from), now + budget)
        })

        return {
          budget,
          offer,
          offerNow,
          announce: (event, members, options) =>
            queueEmpty(0, { event, members, also: options?.also, except: options?.except }),
          handedFrom: (position) => {
            processedThrough = undefined
            handedThrough = position
          },
          handedThrough: () => handedThrough,
          again
        } satisfies Handovers
      })

      return Delivery.of({ open })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(
    Layer.provide([LocalMailboxes.layer, MailboxRelay.layer, ShardRoutes.layer])
  )
}
