/**
 * The mailboxes of the sessions whose shard this node holds and that have something here: a live
 * connection on this node, or an active Mailbox entity (which adds the session's polls and its
 * connections on other nodes). A conversation on this node, or a relay from another, hands a
 * session's mailbox its messages by a direct call instead of a cluster message.
 *
 * A connection on the node that holds its session's shard registers here directly and wakes no
 * entity: an idle connection then costs its socket and one waiting fiber, not an entity with its
 * RPC server, fibers and latches (measured: 52 KB of the 65 KB an idle WebSocket took). The
 * session's Mailbox entity, when something needs it (a poll, a connection on another node, an
 * entity message), joins the same mailbox, so the session still has one place that orders its
 * deliveries. Measured: cluster messaging per delivery was the largest share of the group
 * benchmark's CPU.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { randomUUID } from "node:crypto"
import type { MsgData } from "../domain/Conversation.ts"
import { type EventKind, kindOf, type LiveEvent } from "../domain/Events.ts"
import type { ConnectionSink } from "./Connections.ts"
import { SlowConsumer } from "./Protocol.ts"
import { Telemetry } from "../observability/Telemetry.ts"

/** A mailbox's delivery: committed messages of one conversation in order; `gap`: some were dropped before them. */
export type Deliver = (messages: ReadonlyArray<MsgData>, gap?: boolean) => void

/** What a session's mailbox here takes by direct call: messages, and live events for its connections that opted in. */
export interface LocalMailbox {
  readonly deliver: Deliver
  readonly event: (event: LiveEvent) => void
}

/** A connection on this node, registered with its session's mailbox. */
export interface LocalConnection {
  readonly sink: ConnectionSink
  /** The live event kinds it opted in to. */
  readonly events: ReadonlySet<string>
  /** Ends its subscription: the connection subscribes again and replays from its last message. */
  readonly end: () => void
}

/** What the session's Mailbox entity adds while it is active here: its polls and its connections on other nodes. */
export interface EntityPart {
  /** Messages for its connections (pushed under the mailbox's `incarnation`) and its polls. */
  readonly deliver: (messages: ReadonlyArray<MsgData>, incarnation: string) => void
  readonly event: (event: LiveEvent) => void
  /** Ends every subscription it holds, and has each poll platform replay from its last answer. */
  readonly resync: () => void
}

/** A session's mailbox on this node. */
export interface SessionMailbox extends LocalMailbox {
  readonly session: string
  /**
   * Names this mailbox: every batch it pushes carries it (see Feed). A new one starts whenever the
   * session's mailbox starts anew here, after it was gone (no connection, no entity) or moved away.
   */
  readonly incarnation: string
  /** Registers `connection` under `id` until the returned function is called. */
  readonly connect: (id: string, connection: LocalConnection) => () => void
  /** Joins the Mailbox entity's part until the returned function is called (the entity stops). */
  readonly join: (part: EntityPart) => () => void
  /** Whether the Mailbox entity is active here. */
  readonly hasEntity: () => boolean
  /** Ends every subscription (they replay), the entity's too; each poll platform replays. */
  readonly resync: () => void
}

export class LocalMailboxes extends Context.Service<LocalMailboxes, {
  /** The mailbox of `session` here, made if there is none. It lasts while it has a connection or its entity. */
  readonly open: (session: string, buffer: number) => SessionMailbox
  /** Makes `mailbox` the delivery of `session` here until the returned function is called (tests stand in a mailbox). */
  readonly add: (session: string, mailbox: LocalMailbox) => () => void
  readonly get: (session: string) => LocalMailbox | undefined
  /**
   * Ends every subscription of `session`'s mailbox here and forgets it: its shard is no longer this
   * node's, and its connections subscribe again wherever it is now.
   */
  readonly drop: (session: string) => void
  readonly size: () => number
  /** The sessions whose mailbox is here. */
  readonly sessions: () => Iterable<string>
  /** The mailboxes here. */
  readonly all: () => Iterable<SessionMailbox>
}>()("quick-im/push/LocalMailboxes") {
  static readonly layerNoDeps = Layer.effect(
    LocalMailboxes,
    Effect.gen(function* () {
      const telemetry = yield* Telemetry
      const active = new Map<string, LocalMailbox>()
      const isSession = (mailbox: LocalMailbox | undefined): mailbox is SessionMailbox =>
        mailbox !== undefined && "connect" in mailbox
      const remove = (session: string) => {
        if (active.delete(session)) telemetry.active.mailboxes = active.size
      }
      const put = (session: string, mailbox: LocalMailbox) => {
        active.set(session, mailbox)
        telemetry.active.mailboxes = active.size
      }

      const make = (session: string, buffer: number): SessionMailbox => {
        const incarnation = randomUUID()
        const connections = new Map<string, LocalConnection>()
        let entity: EntityPart | undefined = undefined
        const forget = () => {
          if (connections.size === 0 && entity === undefined && active.get(session) === mailbox) remove(session)
        }
        const resync = () => {
          for (const [id, connection] of connections) {
            connections.delete(id)
            connection.end()
          }
          entity?.resync()
          forget()
        }
        const deliver: Deliver = (messages, gap) => {
          if (gap === true) resync()
          for (const [id, connection] of connections) {
            let taken = false
            try {
              taken = connection.sink.push(messages, incarnation)
            } catch {
              // A transport that throws is treated like a full one: cut off, and the client resumes.
            }
            if (!taken) {
              connections.delete(id)
              connection.sink.fail(new SlowConsumer({ buffered: buffer }))
            }
          }
          entity?.deliver(messages, incarnation)
          forget()
        }
        const event = (event: LiveEvent) => {
          const kind: EventKind = kindOf(event)
          for (const connection of connections.values()) {
            if (!connection.events.has(kind)) continue
            try {
              connection.sink.event(event)
            } catch {
              // live only
            }
          }
          entity?.event(event)
        }
        const mailbox: SessionMailbox = {
          session,
          incarnation,
          deliver,
          event,
          resync,
          connect: (id, connection) => {
            connections.set(id, connection)
            return () => {
              if (connections.get(id) !== connection) return
              connections.delete(id)
              forget()
            }
          },
          join: (part) => {
            entity = part
            return () => {
              if (entity !== part) return
              entity = undefined
              forget()
            }
          },
          hasEntity: () => entity !== undefined
        }
        return mailbox
      }

      return LocalMailboxes.of({
        open: (session, buffer) => {
          const found = active.get(session)
          if (isSession(found)) return found
          const mailbox = make(session, buffer)
          put(session, mailbox)
          return mailbox
        },
        add: (session, mailbox) => {
          put(session, mailbox)
          return () => {
            if (active.get(session) === mailbox) remove(session)
          }
        },
        get: (session) => active.get(session),
        drop: (session) => {
          const mailbox = active.get(session)
          if (!isSession(mailbox)) return
          remove(session)
          mailbox.resync()
        },
        size: () => active.size,
        sessions: () => active.keys(),
        all: () => [...active.values()].filter(isSession)
      })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(Layer.provide(Telemetry.layer))
}
