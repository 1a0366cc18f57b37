/**
 * `GET /metrics`: the node's metrics in Prometheus text format (Effect's PrometheusMetrics over its
 * metric registry), behind the inner guard like `inner/*`. Each scrape first folds the plain
 * counters of the hot paths (Telemetry) and the node's current state into the registry.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Sharding from "effect/cluster/Sharding"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as PrometheusMetrics from "effect/observability/PrometheusMetrics"
import * as Process from "node:process"
import * as V8 from "node:v8"
import { AppConfig } from "../Config.ts"
import { heldShards } from "../cluster/ShardRoutes.ts"
import { makeInnerCheck } from "../access/Access.ts"
import { type PushProtocol, storeActivity, Telemetry } from "../observability/Telemetry.ts"

const PROTOCOLS: ReadonlyArray<PushProtocol> = ["ws", "sse", "poll"]

const counter = (name: string, description: string, attributes: Record<string, string> = {}) =>
  Metric.counter(name, { description, attributes, incremental: true })

const gauge = (name: string, description: string, attributes: Record<string, string> = {}) =>
  Metric.gauge(name, { description, attributes })

export const MetricsRoute = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  const telemetry = yield* Telemetry
  const sharding = yield* Sharding.Sharding
  const check = yield* makeInnerCheck

  /** What each plain counter had reached at the last scrape: the registry takes the difference. */
  const exported = new Map<string, number>()
  const fold = (key: string, metric: Metric.Metric<number, unknown>, total: number) => {
    const delta = total - (exported.get(key) ?? 0)
    exported.set(key, total)
    return delta > 0 ? Metric.update(metric, delta) : Effect.void
  }
  const set = (metric: Metric.Metric<number, unknown>, value: number) => Metric.update(metric, value)

  const collect: Effect.Effect<void> = Effect.gen(function* () {
    for (const [key, total] of telemetry.requests) {
      const [route, code] = key.split("|")
      yield* fold(
        `http:${key}`,
        counter("quickim_http_requests_total", "HTTP requests by route and status", { route, code }),
        total
      )
    }
    for (const protocol of PROTOCOLS) {
      yield* fold(
        `deliveries:${protocol}`,
        counter("quickim_deliveries_total", "Messages written to push connections", { protocol }),
        telemetry.deliveries[protocol]
      )
      yield* fold(
        `slow:${protocol}`,
        counter("quickim_slow_consumer_disconnects_total", "Push connections cut off as slow consumers", {
          protocol
        }),
        telemetry.slowConsumers[protocol]
      )
      yield* set(
        gauge("quickim_connections", "Open push connections (poll: requests waiting)", { protocol }),
        telemetry.connections[protocol]
      )
    }
    yield* fold(
      "besideRouter",
      counter("quickim_send_msg_beside_router_total", "send_msg requests answered beside the router (the usual case)"),
      telemetry.sendsBesideRouter.count
    )
    yield* fold("relays", counter("quickim_relays_total", "Batched relays sent to other nodes"), telemetry.relays.sent)
    yield* fold(
      "relayed",
      counter("quickim_relayed_messages_total", "Entity messages those relays carried"),
      telemetry.relays.carried
    )
    yield* fold(
      "handedBack",
      counter("quickim_relay_handed_back_total", "Relayed entity messages handed back to go as entity messages"),
      telemetry.relays.handedBack
    )
    yield* set(
      gauge("quickim_shards", "Conversation and Mailbox shards this node holds"),
      heldShards(sharding, config.shardsPerGroup).length
    )
    yield* set(
      gauge("quickim_db_pool_connections", "Database connections the pool may open"),
      Math.max(2, config.dbPoolSize)
    )
    yield* set(
      gauge("quickim_db_operations_in_flight", "Store operations under way (against the pool's connections)"),
      storeActivity.inFlight
    )
    const memory = Process.memoryUsage()
    for (
      const [kind, bytes] of [
        ["rss", memory.rss],
        ["heap_total", memory.heapTotal],
        ["heap_used", memory.heapUsed],
        ["external", memory.external],
        ["heap_limit", V8.getHeapStatistics().heap_size_limit]
      ] as const
    ) {
      yield* set(
        gauge(
          "quickim_memory_bytes",
          "The node's memory: resident set, JavaScript heap reserved, used and its limit, external",
          {
            kind
          }
        ),
        bytes
      )
    }
  })

  const serve = Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    yield* check(request)
    yield* collect
    const body = yield* PrometheusMetrics.format()
    return HttpServerResponse.text(body, { contentType: "text/plain; version=0.0.4; charset=utf-8" })
  })
  return HttpRouter.add(
    "GET",
    "/metrics",
    serve.pipe(
      Effect.catch((e) =>
        Effect.succeed(HttpServerResponse.jsonUnsafe({ code: e.code, error: e.error }, { status: 403 }))
      )
    )
  )
}))
