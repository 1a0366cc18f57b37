/**
 * Messages across the node link (NodeLink), both ways push needs: committed messages for mailboxes
 * whose shards another node holds (from conversations here), and messages for connections on
 * another node (from mailboxes here). Each kind is served on the receiving node by a direct call,
 * as on the sending node; what is not served there comes back so that its sender takes the sure
 * way (an entity message to the mailbox, or the connection's subscription ended so it replays).
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { boundText, NodeLink } from "../cluster/NodeLink.ts"
import { ShardRoutes } from "../cluster/ShardRoutes.ts"
import { AppConfig } from "../Config.ts"
import type { MsgData } from "../domain/Conversation.ts"
import type { LiveEvent } from "../domain/Events.ts"
import { Connections } from "./Connections.ts"
import { LocalMailboxes } from "./LocalMailboxes.ts"
import { SlowConsumer } from "./Protocol.ts"

/** Messages for connections on the receiving node, from one mailbox activation (see Feed). */
export interface PushItem {
  readonly connections: ReadonlyArray<string>
  readonly incarnation: string
  readonly messages: ReadonlyArray<MsgData>
}

/** Messages of one conversation for the mailboxes of `sessions`, in commit order. */
export interface DeliverItem {
  readonly sessions: ReadonlyArray<string>
  readonly messages: ReadonlyArray<MsgData>
}

/** A live event for the mailboxes of `sessions` (`announce`) or for `connections` (`pushEvent`). */
export interface EventItem {
  readonly sessions?: ReadonlyArray<string>
  readonly connections?: ReadonlyArray<string>
  readonly event: LiveEvent
}

const eventBytes = (event: LiveEvent) => {
  let bytes = 256
  for (const value of Object.values(event)) if (typeof value === "string") bytes += boundText(value)
  return bytes
}

const boundMessage = (m: MsgData) => boundText(m.Content) + boundText(m.FromSession) + 256

/** An upper bound of the bytes `messages` take in a relay's JSON (see `boundText`). */
export const boundBytes = (messages: ReadonlyArray<MsgData>) => {
  let bytes = 0
  for (const m of messages) bytes += boundMessage(m)
  return bytes
}

/** A bound of the bytes a list of ids takes in a relay's JSON. */
const idsBytes = (ids: ReadonlyArray<string>) => {
  let bytes = 0
  for (const id of ids) bytes += boundText(id) + 3
  return bytes
}

/** The most one deliver or push item carries (a bound, see boundBytes); larger batches are split. */
export const ITEM_BYTES = 2 * 1024 * 1024

/** `messages` in consecutive runs of at most ITEM_BYTES each (a single larger message runs alone). */
export const chunked = (messages: ReadonlyArray<MsgData>): ReadonlyArray<ReadonlyArray<MsgData>> => {
  if (boundBytes(messages) <= ITEM_BYTES) return [messages]
  const out: Array<Array<MsgData>> = []
  let current: Array<MsgData> = []
  let bytes = 0
  for (const m of messages) {
    const size = boundMessage(m)
    if (current.length > 0 && bytes + size > ITEM_BYTES) {
      out.push(current)
      current = []
      bytes = 0
    }
    current.push(m)
    bytes += size
  }
  if (current.length > 0) out.push(current)
  return out
}

export class MailboxRelay extends Context.Service<MailboxRelay, {
  /** Posts `messages` for `connections` on the node `node`; `failed` runs if they were not served. Never blocks. */
  readonly push: (
    node: string,
    connections: ReadonlyArray<string>,
    incarnation: string,
    messages: ReadonlyArray<MsgData>,
    failed: () => void
  ) => void
  /**
   * Hands `messages` (at most ITEM_BYTES of them: see `chunked`) to the mailboxes of the sessions
   * listed per node in `targets`, all relays at once; succeeds when every one has answered, with the
   * sessions not served (their mailbox is elsewhere or not active, or the node did not answer).
   */
  readonly deliver: (
    targets: ReadonlyMap<string, ReadonlyArray<string>>,
    messages: ReadonlyArray<MsgData>
  ) => Effect.Effect<ReadonlyArray<string>>
  /**
   * Posts a live event for the mailboxes of the sessions listed per node; `notServed` gets those
   * the relay did not serve (their mailbox is elsewhere, or the node did not answer). Never blocks.
   */
  readonly announce: (
    targets: ReadonlyMap<string, ReadonlyArray<string>>,
    event: LiveEvent,
    notServed: (sessions: ReadonlyArray<string>) => void
  ) => void
  /** Posts a live event for `connections` on the node `node`; live only. */
  readonly pushEvent: (node: string, connections: ReadonlyArray<string>, event: LiveEvent) => void
}>()("quick-im/push/MailboxRelay") {
  static readonly layerNoDeps = Layer.effect(
    MailboxRelay,
    Effect.gen(function* () {
      const link = yield* NodeLink
      const routes = yield* ShardRoutes
      const connections = yield* Connections
      const mailboxes = yield* LocalMailboxes
      const buffer = (yield* AppConfig).connectionBuffer

      link.register("push", (items) =>
        Effect.sync(() => {
          for (const item of items as ReadonlyArray<PushItem>) {
            for (const id of item.connections) {
              const sink = connections.get(id)
              if (sink === undefined) continue // closed meanwhile: its mailbox forgets it when its stream ends
              let taken = false
              try {
                taken = sink.push(item.messages, item.incarnation)
              } catch {
                // a transport that throws is treated like a full one
              }
              if (!taken) sink.fail(new SlowConsumer({ buffered: buffer }))
            }
          }
          return items.map(() => null)
        }))

      // A mailbox active here on a shard this node holds takes the messages by a direct call, as from
      // a conversation on this node; one not active here is offline (its next connection replays),
      // so nothing is owed to it. A session whose shard this node does not hold goes back for the
      // entity message. The answer per item: the sessions not served.
      link.register("deliver", (items) =>
        Effect.sync(() =>
          (items as ReadonlyArray<DeliverItem>).map((item) => {
            const missing: Array<string> = []
            for (const session of item.sessions) {
              if (!routes.holds(session)) {
                missing.push(session)
                continue
              }
              mailboxes.get(session)?.deliver(item.messages)
            }
            return missing
          })
        ))

      // Live events: served where the mailbox is; a mailbox not active here is offline (the event is
      // live only), and a session whose shard this node does not hold goes back, as for `deliver`.
      link.register("announce", (items) =>
        Effect.sync(() =>
          (items as ReadonlyArray<EventItem>).map((item) => {
            const missing: Array<string> = []
            for (const session of item.sessions ?? []) {
              if (routes.holds(session)) mailboxes.get(session)?.event(item.event)
              else missing.push(session)
            }
            return missing
          })
        ))
      link.register("pushEvent", (items) =>
        Effect.sync(() => {
          for (const item of items as ReadonlyArray<EventItem>) {
            for (const id of item.connections ?? []) connections.get(id)?.event(item.event)
          }
          return items.map(() => null)
        }))

      return MailboxRelay.of({
        announce: (targets, event, notServed) => {
          const bytes = eventBytes(event)
          for (const [node, sessions] of targets) {
            link.post(
              node,
              "announce",
              { sessions, event } satisfies EventItem,
              bytes + idsBytes(sessions),
              (answer) => {
                const missing = (answer as ReadonlyArray<string> | undefined) ?? sessions
                if (missing.length > 0) notServed(missing)
              }
            )
          }
        },
        pushEvent: (node, ids, event) =>
          link.post(
            node,
            "pushEvent",
            { connections: ids, event } satisfies EventItem,
            eventBytes(event) + idsBytes(ids),
            () => {}
          ),
        push: (node, ids, incarnation, messages, failed) => {
          for (const part of chunked(messages)) {
            const item: PushItem = { connections: ids, incarnation, messages: part }
            link.post(node, "push", item, boundBytes(part) + idsBytes(ids), (answer) => {
              if (answer === undefined) failed()
            })
          }
        },
        deliver: (targets, messages) =>
          Effect.callback<ReadonlyArray<string>>((resume) => {
            // One callback for every target: no fiber per relay awaited.
            let waiting = targets.size
            let notServed: Array<string> = []
            const bytes = boundBytes(messages)
            for (const [node, sessions] of targets) {
              const item: DeliverItem = { sessions, messages }
              link.post(node, "deliver", item, bytes + idsBytes(sessions), (answer) => {
                const missing = (answer as ReadonlyArray<string> | undefined) ?? sessions
                if (missing.length > 0) notServed = notServed.concat(missing)
                if (--waiting === 0) resume(Effect.succeed(notServed))
              })
            }
          })
      })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(
    Layer.provide([NodeLink.layer, ShardRoutes.layer, Connections.layer, LocalMailboxes.layer])
  )
}
