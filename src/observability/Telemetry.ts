/**
 * What `/metrics` reports. Hot paths (every HTTP request, every message written to a connection)
 * only bump plain numbers here, with no Effect or allocation per event; a scrape folds them into
 * Effect's metric registry (MetricsRoute), which formats everything as Prometheus text. Events that
 * already run as effects (a send, an entity activation, a replay, a store query) update Effect
 * metrics directly.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as HttpApi from "effect/http-api/HttpApi"
import { Api } from "../api/Api.ts"

export type PushProtocol = "ws" | "sse" | "poll"

/** Routes served besides the HttpApi contract (labels of `quickim_http_requests_total`). */
const OTHER_ROUTES = ["/notify", "/metrics", "/openapi.json", "/console"]

/** Every documented path: other paths are counted as `unknown`, so a scanner cannot grow the label set. */
const knownRoutes = (() => {
  const paths = new Set<string>(OTHER_ROUTES)
  HttpApi.reflect(Api, { onGroup: () => {}, onEndpoint: ({ endpoint }) => paths.add(endpoint.path) })
  return paths
})()

/** The route label of a request URL: its path when documented, else `unknown`. */
export const routeOf = (url: string) => {
  const q = url.indexOf("?")
  const path = q < 0 ? url : url.slice(0, q)
  return knownRoutes.has(path) ? path : path.startsWith("/console/") ? "/console" : "unknown"
}

export class Telemetry extends Context.Service<Telemetry, {
  /** Request counts by `route|status`. */
  readonly requests: Map<string, number>
  /** Messages written to push connections (a ws frame, an SSE event, a poll answer). */
  readonly deliveries: Record<PushProtocol, number>
  /** Connections cut off as slow consumers. */
  readonly slowConsumers: Record<PushProtocol, number>
  /** Open push connections by protocol (poll: requests waiting), kept by the transports. */
  readonly connections: Record<PushProtocol, number>
  /**
   * Kept by their owners: the sessions' mailboxes here (LocalMailboxes), and the entities active in
   * this process that are not conversations (Mailbox entities, the NodeInbox).
   */
  readonly active: { mailboxes: number; mailboxEntities: number; inboxes: number }
  /**
   * Batched relays this node sent to others (NodeLink) since it started: how many, the items they
   * carried, and those not served (their senders took the sure way).
   */
  readonly relays: { sent: number; carried: number; handedBack: number }
  /** `send_msg` requests that Node's server answered beside Effect's router (SendListener). */
  readonly sendsBesideRouter: { count: number }
  readonly request: (url: string, status: number) => void
}>()("quick-im/observability/Telemetry") {
  static readonly layer = Layer.sync(Telemetry, () => {
    const requests = new Map<string, number>()
    return Telemetry.of({
      requests,
      deliveries: { ws: 0, sse: 0, poll: 0 },
      slowConsumers: { ws: 0, sse: 0, poll: 0 },
      connections: { ws: 0, sse: 0, poll: 0 },
      active: { mailboxes: 0, mailboxEntities: 0, inboxes: 0 },
      relays: { sent: 0, carried: 0, handedBack: 0 },
      sendsBesideRouter: { count: 0 },
      request: (url, status) => {
        const key = `${routeOf(url)}|${status}`
        requests.set(key, (requests.get(key) ?? 0) + 1)
      }
    })
  })
}

/** Seconds, for latencies from 0.5 ms to 10 s. */
const SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

export const sendsTotal = (outcome: "accepted" | "duplicate" | "refused" | "failed") =>
  Metric.counter("quickim_sends_total", {
    description:
      "send_msg requests by outcome: accepted (stored), duplicate (client_msg_id seen), refused (not a member, no such conversation), failed",
    attributes: { outcome },
    incremental: true
  })

export const sendDuration = Metric.histogram("quickim_send_duration_seconds", {
  description: "send_msg from request to answer (an accepted send is answered after its commit)",
  boundaries: SECONDS
})

export const entityActivations = (entity: "Conversation" | "Mailbox") =>
  Metric.counter("quickim_entity_activations_total", {
    description: "Entities started on this node (first use, after passivation, or moved here)",
    attributes: { entity },
    incremental: true
  })

export const replaysTotal = Metric.counter("quickim_resume_replays_total", {
  description: "Resumes by cursor (a client reconnecting, or a connection re-subscribing after a node change)",
  incremental: true
})

export const replayMessages = Metric.histogram("quickim_resume_replay_messages", {
  description: "Messages one resume replayed",
  boundaries: [0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000]
})

export const replayPages = Metric.counter("quickim_replay_pages_total", {
  description: "Pages of resume replays read from the database (each bounded by QUICKIM_REPLAY_PAGE_BYTES)",
  incremental: true
})

export const replayPageBytes = Metric.histogram("quickim_replay_page_bytes", {
  description: "Estimated bytes of one replay page read",
  boundaries: [1024, 16384, 65536, 131072, 262144, 524288, 1048576, 2097152, 4194304]
})

export const pollOverflows = Metric.counter("quickim_poll_overflows_total", {
  description: "Poll platforms whose queued messages passed QUICKIM_POLL_PENDING_BYTES (they then read from SQL)",
  incremental: true
})

export const deliveryGaps = Metric.counter("quickim_delivery_gaps_total", {
  description:
    "Batches a conversation dropped instead of handing them over late (past two thirds of QUICKIM_RESUME_WINDOW, or past QUICKIM_DELIVERY_BACKLOG_BYTES); their members' connections replay",
  incremental: true
})

export const queryDuration = (op: string) =>
  Metric.histogram("quickim_db_query_duration_seconds", {
    description: "Time a store operation took (a message append includes waiting for its group commit)",
    attributes: { op },
    boundaries: SECONDS
  })

/** Store operations of this process under way now (`quickim_db_operations_in_flight`): how busy the pool is. */
export const storeActivity = { inFlight: 0 }

/**
 * A store operation: timed into `queryDuration(op)` and counted in flight while it runs. It is
 * counted up only once its exit hook is in place, and down by that hook only if it was counted up:
 * the gauge cannot drift, however the operation ends (an interruption included).
 */
export const storeOperation = <A, E, R>(metric: Metric.Metric<number, unknown>, effect: Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    let started = -1
    return Effect.onExit(
      Effect.suspend(() => {
        started = performance.now()
        storeActivity.inFlight++
        return effect
      }),
      () => {
        if (started < 0) return Effect.void
        storeActivity.inFlight--
        return Metric.update(metric, (performance.now() - started) / 1000)
      }
    )
  })

/** A replay of `count` messages. */
export const recordReplay = (count: number) =>
  Effect.andThen(Metric.update(replaysTotal, 1), Metric.update(replayMessages, count))
