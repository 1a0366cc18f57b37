/**
 * The Mailbox entities active in this process, by session: a conversation on this node, or a relay
 * from another, hands one its messages by a direct call instead of a cluster message. Measured:
 * cluster messaging per delivery was the largest share of the group benchmark's CPU.
 */
import { Context, Layer } from "effect"
import type { MsgData } from "../domain/Conversation.ts"
import type { LiveEvent } from "../domain/Events.ts"

/** A mailbox's delivery: committed messages of one conversation in order; `gap`: some were dropped before them. */
export type Deliver = (messages: ReadonlyArray<MsgData>, gap?: boolean) => void

/** What a Mailbox active here takes by direct call: messages, and live events for its connections that opted in. */
export interface LocalMailbox {
  readonly deliver: Deliver
  readonly event: (event: LiveEvent) => void
}

export class LocalMailboxes extends Context.Service<LocalMailboxes, {
  /** Makes `mailbox` the delivery of `session` here until the returned function is called (passivation). */
  readonly add: (session: string, mailbox: LocalMailbox) => () => void
  readonly get: (session: string) => LocalMailbox | undefined
  readonly size: () => number
  /** The sessions whose Mailbox is active here. */
  readonly sessions: () => Iterable<string>
}>()("quick-im/push/LocalMailboxes") {
  static readonly layer = Layer.sync(LocalMailboxes, () => {
    const active = new Map<string, LocalMailbox>()
    return LocalMailboxes.of({
      add: (session, mailbox) => {
        active.set(session, mailbox)
        return () => {
          if (active.get(session) === mailbox) active.delete(session)
        }
      },
      get: (session) => active.get(session),
      size: () => active.size,
      sessions: () => active.keys()
    })
  })
}
