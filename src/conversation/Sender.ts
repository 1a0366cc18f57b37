/**
 * How a gateway hands a send to its conversation. The Conversation entity is the single writer,
 * wherever it lives; this only picks the way there: on a conversation hosted by another node
 * (by the nodes' reports, ShardRoutes), the send joins that node's batched `Relay` (NodeOutbox),
 * and whatever that node no longer holds, or a relay that failed, takes the entity message.
 */
import { Context, Effect, Layer } from "effect"
import type { ClusterError } from "effect/cluster"
import { NodeOutbox } from "../cluster/NodeOutbox.ts"
import type { SendItem } from "../cluster/NodeInbox.ts"
import { ShardRoutes } from "../cluster/ShardRoutes.ts"
import type { ConversationNotFound, DatabaseUnavailable, NotMember, UnstorableMessage } from "../domain/Conversation.ts"
import { Conversation, type SentMessage } from "./Protocol.ts"

/** What the entity message itself may fail with: the conversation's refusals and the cluster's own errors. */
export type SendError =
  | ConversationNotFound
  | NotMember
  | UnstorableMessage
  | DatabaseUnavailable
  | ClusterError.MailboxFull
  | ClusterError.AlreadyProcessingMessage
  | ClusterError.PersistenceError
  | ClusterError.EntityNotAssignedToRunner

export class ConversationSender extends Context.Service<ConversationSender, {
  readonly send: (item: SendItem) => Effect.Effect<SentMessage, SendError>
}>()("quick-im/conversation/ConversationSender") {
  static readonly layer = Layer.effect(
    ConversationSender,
    Effect.gen(function* () {
      const conversations = yield* Conversation.client
      const routes = yield* ShardRoutes
      const outbox = yield* NodeOutbox
      const direct = ({ conversationId, ...send }: SendItem) => conversations(conversationId).Send(send)
      return ConversationSender.of({
        send: (item) => {
          const inbox = routes.nodeOf(item.conversationId)
          if (inbox === undefined) return direct(item)
          return Effect.flatMap(outbox.send(inbox, item), (outcome) => {
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
      })
    })
  )
}
