/**
 * The Conversation entities active in this process, by conversation id: a send for one of them (from
 * this node's gateway, or relayed here by another node) joins its queue by a direct call instead of
 * a cluster message. Measured: the entity message was the largest share of a one-to-one send's
 * CPU (docs/architecture.md, "The path of a message"). The entity is still the single writer: it takes these
 * sends in the same loop, one batch at a time, as its mailbox's requests.
 */
import * as Context from "effect/Context"
import type * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type { ConversationNotFound, DatabaseUnavailable, NotMember, UnstorableMessage } from "../domain/Conversation.ts"
import type { SendPayload } from "./GroupCommit.ts"
import type { SentMessage } from "./Protocol.ts"

export type LocalRefusal = ConversationNotFound | NotMember | UnstorableMessage | DatabaseUnavailable

/**
 * A send handed to an entity in this process. `resume` is called once: with the outcome, or with
 * `undefined` when the entity stopped before it began the send (nothing written): the sender then
 * takes the entity message, which finds the conversation wherever it is now.
 */
export interface LocalSend {
  readonly _tag: "LocalSend"
  readonly tag: "Send"
  readonly payload: SendPayload
  /** The sender's span, when tracing: the commit's span is its child, as for an entity message. */
  readonly traceId?: string | undefined
  readonly spanId?: string | undefined
  readonly sampled?: boolean | undefined
  readonly resume: (outcome: Exit.Exit<SentMessage, LocalRefusal> | undefined) => void
  /** Set by the entity when it answers (an answer is given once). */
  answered: boolean
}

/** Takes a send; false: the entity is stopping, and the send was not taken. */
export type Lane = (send: LocalSend) => boolean

export class LocalConversations extends Context.Service<LocalConversations, {
  /** Makes `lane` the way into conversation `id` here until the returned function is called. */
  readonly add: (id: string, lane: Lane) => () => void
  readonly get: (id: string) => Lane | undefined
}>()("quick-im/conversation/LocalConversations") {
  static readonly layer = Layer.sync(LocalConversations, () => {
    const active = new Map<string, Lane>()
    return LocalConversations.of({
      add: (id, lane) => {
        active.set(id, lane)
        return () => {
          if (active.get(id) === lane) active.delete(id)
        }
      },
      get: (id) => active.get(id)
    })
  })
}
