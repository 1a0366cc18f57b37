/**
 * How a gateway hands a send to its conversation. The Conversation entity is the single writer,
 * wherever it lives; this only picks the way there: on a conversation hosted by another node (by
 * the nodes' reports, ShardRoutes), the send joins that node's batched relay (NodeLink, kind
 * "send"), and whatever that node no longer holds, or a relay that failed, takes the entity message.
 * The receiving side of those relays is registered here too. A conversation active in this process
 * takes the send by direct call (LocalConversations), without a cluster message.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { AppConfig } from "../Config.ts"
import type * as ClusterError from "effect/cluster/ClusterError"
import { boundText, NodeLink } from "../cluster/NodeLink.ts"
import { ShardRoutes } from "../cluster/ShardRoutes.ts"
import { ConversationNotFound, DatabaseUnavailable, NotMember, UnstorableMessage } from "../domain/Conversation.ts"
import { DatabaseHealth } from "../storage/DatabaseHealth.ts"
import { type Lane, LocalConversations, type LocalSend } from "./LocalConversations.ts"
import { Conversation, type SentMessage } from "./Protocol.ts"

export interface SendItem {
  readonly conversationId: string
  readonly session: string
  readonly status: number
  readonly type: number
  readonly content: string
  readonly clientMsgId?: string
}

type Refusal = ConversationNotFound | NotMember | UnstorableMessage | DatabaseUnavailable

export type SendOutcome =
  | ({ readonly _tag: "Sent" } & SentMessage)
  | { readonly _tag: "Refused"; readonly error: Refusal }
  /** This node does not hold the conversation's shard (any more): the sender uses the entity message. */
  | { readonly _tag: "NotHere" }
  /** The conversation failed the write (a defect there); the sender answers with a defect too. */
  | { readonly _tag: "Failed"; readonly message: string }

/** What the entity message itself may fail with: the conversation's refusals and the cluster's own errors. */
export type SendError =
  | Refusal
  | ClusterError.MailboxFull
  | ClusterError.AlreadyProcessingMessage
  | ClusterError.PersistenceError
  | ClusterError.EntityNotAssignedToRunner

const encodeOutcome = (o: SendOutcome) => o._tag === "Refused" ? { _tag: "Refused", error: { ...o.error } } : o

const decodeOutcome = (o: any): SendOutcome => {
  if (o._tag !== "Refused") return o
  const e = o.error
  return {
    _tag: "Refused",
    error: e._tag === "NotMember"
      ? new NotMember({ conversationId: e.conversationId, session: e.session })
      : e._tag === "UnstorableMessage"
      ? new UnstorableMessage({ conversationId: e.conversationId })
      : e._tag === "DatabaseUnavailable"
      ? new DatabaseUnavailable()
      : new ConversationNotFound({ conversationId: e.conversationId })
  }
}

const notHere: SendOutcome = { _tag: "NotHere" }

export class ConversationSender extends Context.Service<ConversationSender, {
  readonly send: (item: SendItem) => Effect.Effect<SentMessage, SendError>
  /**
   * `send` under DatabaseHealth's `whileReachable`: answered DatabaseUnavailable at once while the
   * database is lost, and as soon as it is lost while the send waits. To a conversation active in
   * this process the wait is a listener, not a race of two fibers (bench/RESULTS.md, "Fibers per send").
   */
  readonly sendWhileReachable: (item: SendItem) => Effect.Effect<SentMessage, SendError>
  /**
   * `sendWhileReachable` to a conversation active in this process, with no fiber: `done` gets its
   * outcome once. False, and nothing done, when the conversation is not active here or the
   * database is lost: use `sendWhileReachable` then.
   */
  readonly sendHere: (item: SendItem, done: (exit: Exit.Exit<SentMessage, SendError>) => void) => boolean
}>()("quick-im/conversation/ConversationSender") {
  static readonly layerNoDeps = Layer.effect(
    ConversationSender,
    Effect.gen(function* () {
      const conversations = yield* Conversation.client
      const routes = yield* ShardRoutes
      const link = yield* NodeLink
      const locals = yield* LocalConversations
      const health = yield* DatabaseHealth
      const unavailable = Effect.fail(new DatabaseUnavailable())
      const tracing = (yield* AppConfig).otlpEndpoint !== undefined
      const direct = ({ conversationId, ...send }: SendItem) => conversations(conversationId).Send(send)

      const run = Effect.runCallbackWith(yield* Effect.context<never>())

      /**
       * By direct call to the entity active here; the entity message when it stopped before taking
       * it. `guarded`: answered DatabaseUnavailable as soon as the database is lost (the entity's
       * later answer is then not heard, as when whileReachable's race interrupts the wait). `done`
       * is called once, with an Exit or with the effect that takes the entity message instead. Gives
       * what stops listening for the database's loss, when guarded.
       */
      const handTo = (
        lane: Lane,
        item: SendItem,
        guarded: boolean,
        span: { traceId: string; spanId: string; sampled: boolean } | undefined,
        done: (outcome: Effect.Effect<SentMessage, SendError>) => void
      ): (() => void) | undefined => {
        const { conversationId: _, ...payload } = item
        const off = guarded ? health.onLost(() => done(unavailable)) : undefined
        const instead = () => guarded ? health.whileReachable(direct(item)) : direct(item)
        const send: LocalSend = {
          _tag: "LocalSend",
          tag: "Send",
          payload,
          ...span,
          answered: false,
          resume: (outcome) => {
            off?.()
            done(outcome === undefined ? instead() : outcome)
          }
        }
        if (!lane(send)) {
          off?.()
          done(instead())
        }
        return off
      }
      const byLane = (
        lane: Lane,
        item: SendItem,
        guarded: boolean,
        span?: { traceId: string; spanId: string; sampled: boolean }
      ) =>
        Effect.callback<SentMessage, SendError>((resume) => {
          const off = handTo(lane, item, guarded, span, resume)
          if (off !== undefined) return Effect.sync(off)
        })
      const local = (lane: Lane, item: SendItem, guarded: boolean) =>
        tracing
          ? Effect.flatMap(Effect.option(Effect.currentSpan), (span) =>
            byLane(
              lane,
              item,
              guarded,
              Option.isSome(span)
                ? { traceId: span.value.traceId, spanId: span.value.spanId, sampled: span.value.sampled }
                : undefined
            ))
          : byLane(lane, item, guarded)
      /**
       * The way into conversation `id` by direct call: only while this node holds its shard, which
       * is what Effect cluster checks before it lets a request in (a node losing a shard stops taking
       * its sends at once, even while the entity is still stopping), and only while it is active here.
       */
      const laneHere = (id: string) => routes.holds(id) ? locals.get(id) : undefined
      /** A send for a conversation this node holds. */
      const here = (item: SendItem) => {
        const lane = locals.get(item.conversationId)
        return lane === undefined ? direct(item) : local(lane, item, false)
      }

      // Sends relayed here: answered once committed, each with its outcome.
      const serve = (item: SendItem): Effect.Effect<unknown> =>
        routes.holds(item.conversationId)
          ? here(item).pipe(
            Effect.matchCause({
              onSuccess: (sent) => ({ _tag: "Sent", ...sent }),
              onFailure: (cause) => {
                const error = Option.getOrUndefined(Cause.findErrorOption(cause))
                return encodeOutcome(
                  error instanceof ConversationNotFound || error instanceof NotMember
                    || error instanceof UnstorableMessage || error instanceof DatabaseUnavailable
                    ? { _tag: "Refused", error }
                    : { _tag: "Failed", message: String(Cause.squash(cause)) }
                )
              }
            })
          )
          : Effect.succeed(notHere)
      link.register(
        "send",
        (items) => Effect.forEach(items as ReadonlyArray<SendItem>, serve, { concurrency: "unbounded" })
      )

      const relayed = (node: string, item: SendItem) =>
        Effect.callback<SendOutcome | undefined>((resume) => {
          const bytes = boundText(item.content) + boundText(item.session) + boundText(item.conversationId) + 256
          link.post(node, "send", item, bytes, (answer) =>
            resume(Effect.succeed(answer === undefined ? undefined : decodeOutcome(answer))))
        })

      const send = (item: SendItem): Effect.Effect<SentMessage, SendError> => {
        const lane = laneHere(item.conversationId)
        if (lane !== undefined) return local(lane, item, false)
        const node = routes.nodeOf(item.conversationId)
        if (node === undefined) return direct(item)
        return Effect.flatMap(relayed(node, item), (outcome) => {
          switch (outcome?._tag) {
            case "Sent": {
              const { _tag, ...sent } = outcome
              return Effect.succeed(sent)
            }
            case "Refused":
              return Effect.fail(outcome.error)
            case "Failed":
              return Effect.die(new Error(outcome.message))
            default:
              return direct(item)
          }
        })
      }

      /** sendWhileReachable without a fiber, to a conversation active here (see the interface). */
      const sendHere = (item: SendItem, done: (exit: Exit.Exit<SentMessage, SendError>) => void) => {
        const lane = health.reachable() ? laneHere(item.conversationId) : undefined
        if (lane === undefined) return false
        let answered = false
        handTo(lane, item, true, undefined, (outcome) => {
          if (answered) return
          answered = true
          if (Exit.isExit(outcome)) done(outcome as Exit.Exit<SentMessage, SendError>)
          else run(outcome, { onExit: done })
        })
        return true
      }

      return ConversationSender.of({
        send,
        sendHere,
        sendWhileReachable: (item) => {
          const lane = health.reachable() ? laneHere(item.conversationId) : undefined
          if (lane !== undefined) return local(lane, item, true)
          return health.whileReachable(send(item))
        }
      })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(
    Layer.provide([DatabaseHealth.layer, NodeLink.layer, ShardRoutes.layer, LocalConversations.layer])
  )
}
