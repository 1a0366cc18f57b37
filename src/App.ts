/**
 * The whole node as one layer: database (migrated), cluster runner, Conversation entities and
 * the HTTP gateway. `main.ts` launches it; tests build it with their own settings.
 */
import * as NodeClusterSocket from "@effect/platform-node/NodeClusterSocket"
import * as NodeCrypto from "@effect/platform-node/NodeCrypto"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import * as Runners from "effect/cluster/Runners"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import * as SingleRunner from "effect/cluster/SingleRunner"
import * as SocketRunner from "effect/cluster/SocketRunner"
import * as SqlMessageStorage from "effect/cluster/SqlMessageStorage"
import * as SqlRunnerStorage from "effect/cluster/SqlRunnerStorage"
import * as RpcSerialization from "effect/rpc/RpcSerialization"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as OpenApi from "effect/http-api/OpenApi"
import * as HttpApiBuilder from "effect/http-api/HttpApiBuilder"
import { createServer } from "node:http"
import { Api, PublicApi, ServedApi, ServedInnerApi, ServedPublicApi } from "./api/Api.ts"
import { AppConfig, type AppSettings, DEFAULT_ASSIGNMENTS_REFRESH, defaultHttpTimeouts } from "./Config.ts"
import { NodeAnnouncementLive, NodeReporterLive } from "./cluster/NodeStatus.ts"
import { NodeIdentity } from "./cluster/NodeIdentity.ts"
import { inboxGroup, NodeInboxLive } from "./cluster/NodeLink.ts"
import { RunnerHealthCheckLive } from "./cluster/RunnerHealthCheck.ts"
import { ConversationEntityLive } from "./conversation/ConversationEntity.ts"
import { LocalMailboxes } from "./push/LocalMailboxes.ts"
import { MailboxEntityLive } from "./push/MailboxEntity.ts"
import { NotifyRoutes } from "./push/NotifyRoutes.ts"
import { WebSocketTransport } from "./push/WebSocketTransport.ts"
import { BodyLimitLive, CorsLive, EdgeLive } from "./server/Edge.ts"
import { watchConnections } from "./server/ConnectionWatch.ts"
import { keepRequestsOnSockets } from "./server/RuntimeConnections.ts"
import { isLoopbackHost } from "./access/Access.ts"
import { HandlersLive } from "./server/Handlers.ts"
import { SendListener, SendRouteLive } from "./server/SendRoute.ts"
import { DatabaseLive } from "./storage/Database.ts"
import { ConsoleRoutes } from "./console/ConsoleRoutes.ts"
import { LoggingLive } from "./observability/Logging.ts"
import { TracingLive } from "./observability/Tracing.ts"
import { MetricsRoute } from "./server/MetricsRoute.ts"
import { Telemetry } from "./observability/Telemetry.ts"

/**
 * One node (`QUICKIM_RUNNER_PORT` unset): a SingleRunner. Several: a runner on the cluster's socket
 * transport at `QUICKIM_RUNNER_HOST:QUICKIM_RUNNER_PORT`, sharing the database's runner and message
 * storage with the other nodes. Every runner option is explicit, so unprefixed env vars (PORT,
 * HOST, ...) never reach the runner.
 */
const ClusterLive = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  const sharding = {
    ...ShardingConfig.defaults,
    simulateRemoteSerialization: false,
    shardsPerGroup: config.shardsPerGroup,
    shardLockExpiration: config.shardLockExpiration,
    shardLockRefreshInterval: config.shardLockRefresh,
    runnerHealthCheckInterval: config.runnerHealthCheck,
    refreshAssignmentsInterval: config.assignmentsRefresh ?? DEFAULT_ASSIGNMENTS_REFRESH
  }
  if (Option.isNone(config.runnerPort)) {
    return SingleRunner.layer({ runnerStorage: "sql", shardingConfig: sharding })
  }
  const port = config.runnerPort.value
  // The default group holds conversations and mailboxes; the node's own group holds only its
  // NodeInbox. PostgreSQL advisory lock numbers are derived from a group's position in each runner's
  // own group list, so per-node groups would collide there: shard locks live in the cluster_locks
  // table instead, keyed by shard id (expiring after QUICKIM_SHARD_LOCK_EXPIRATION).
  const groups = ["default", inboxGroup(`${config.runnerHost}:${port}`)]
  // What `NodeClusterSocket.layer({ storage: "sql" })` builds, with health checks that know when a
  // runner's process started (RunnerHealthCheck).
  return Layer.provide(SocketRunner.layer, [NodeClusterSocket.layerSocketServer, NodeClusterSocket.layerClientProtocol])
    .pipe(
      Layer.provide(
        RunnerHealthCheckLive.pipe(
          Layer.provide(Runners.layerRpc),
          Layer.provide(NodeClusterSocket.layerClientProtocol)
        )
      ),
      Layer.provideMerge(SqlMessageStorage.layer),
      Layer.provide(Layer.orDie(SqlRunnerStorage.layer)),
      Layer.provide(ShardingConfig.layerFromEnv({
        ...sharding,
        availableShardGroups: groups,
        assignedShardGroups: groups,
        shardLockDisableAdvisory: true,
        runnerAddress: Option.some(RunnerAddress.make(config.runnerHost, port)),
        runnerListenAddress: Option.some(
          RunnerAddress.make(Option.getOrElse(config.runnerListenHost, () => config.runnerHost), port)
        )
      })),
      Layer.provide(RpcSerialization.layerSchemaBinary())
    )
})).pipe(Layer.provide(NodeCrypto.layerDigest))

/**
 * The OpenAPI document of the contract a listener serves, `send_msg` included (HttpApi serves all
 * but it), made on the first request for it.
 */
const openApiRoute = (api: () => OpenApi.OpenAPISpec) => {
  let document: HttpServerResponse.HttpServerResponse | undefined
  return HttpRouter.add("GET", "/openapi.json", Effect.sync(() => document ??= HttpServerResponse.jsonUnsafe(api())))
}

/**
 * What serves the public API: HttpApi's routes, `send_msg`'s own route, the OpenAPI document. With
 * `QUICKIM_INNER_PORT`, the public listener serves the public groups only: inner paths are 404 there.
 */
const publicRoutes = <A, E, R>(served: Layer.Layer<A, E, R>, contract: () => OpenApi.OpenAPISpec) =>
  Layer.mergeAll(served.pipe(Layer.provide(HandlersLive)), SendRouteLive, openApiRoute(contract))
const PublicRoutes = publicRoutes(HttpApiBuilder.layer(ServedApi), () => OpenApi.fromApi(Api))
const PublicOnlyRoutes = publicRoutes(HttpApiBuilder.layer(ServedPublicApi), () => OpenApi.fromApi(PublicApi))

/**
 * Why the inner endpoints are exposed beyond this machine without an admin key, or undefined when
 * they are not: behind a reverse proxy on the same host every request comes from loopback, so the
 * address allow-list alone lets the proxy's whole audience in.
 */
export const innerExposure = (config: AppSettings): string | undefined => {
  if (Option.isSome(config.adminKey) && Redacted.value(config.adminKey.value).length > 0) return undefined
  const separate = config.innerPort !== undefined
  const host = separate ? config.innerHost ?? "127.0.0.1" : config.host
  if (isLoopbackHost(host)) return undefined
  const where = separate ? `the inner listener (QUICKIM_INNER_HOST=${host})` : `HOST=${host} beside the public API`
  return `inner/* and /metrics are served on ${where} without QUICKIM_ADMIN_KEY: only the address `
    + `allow-list (QUICKIM_INNER_ALLOW) guards them, and behind a reverse proxy on this host every request `
    + `comes from loopback. Set QUICKIM_ADMIN_KEY, or QUICKIM_INNER_PORT to serve them on a loopback-only `
    + `listener, and never forward /inner or /metrics from a proxy.`
}

/**
 * Node's server with bounded waits, so slow or silent sockets cannot pile up (`watchConnections`):
 * headers and the whole request must arrive in time (408 and closed otherwise), kept-alive
 * connections close when idle between requests (Node's `keepAliveTimeout`), and a connection with
 * no bytes either way for the idle timeout (never shorter than a poll's wait or two SSE heartbeats)
 * is closed. Upgraded WebSockets leave this watch and live by their own pings. Under Deno, the
 * runtime's own record of the request being read moves onto its socket (`keepRequestsOnSockets`).
 */
const httpServer = (settings: AppSettings) => {
  const t = settings.httpTimeouts ?? defaultHttpTimeouts
  const server = keepRequestsOnSockets(createServer({ keepAliveTimeout: Duration.toMillis(t.keepAlive) }))
  const headersMs = Duration.toMillis(t.headers)
  watchConnections(server, {
    headersMs,
    requestMs: Math.max(headersMs, Duration.toMillis(t.request)),
    idleMs: Math.max(
      Duration.toMillis(t.idle),
      Duration.toMillis(settings.pollWait) + 10_000,
      2 * Duration.toMillis(settings.sseHeartbeat)
    )
  })
  return server
}

const HttpLive = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  const gateway = yield* WebSocketTransport
  const sends = yield* SendListener
  const exposure = innerExposure(config)
  if (exposure !== undefined) yield* Effect.logWarning(exposure)
  const publicServer = NodeHttpServer.layer(() => gateway.attach(sends.attach(httpServer(config))), {
    port: config.port,
    host: config.host
  })
  if (config.innerPort === undefined) {
    return HttpRouter.serve(
      Layer.mergeAll(PublicRoutes, NotifyRoutes, MetricsRoute, ConsoleRoutes, EdgeLive, CorsLive),
      {
        disableLogger: !config.accessLog
      }
    ).pipe(Layer.provide(BodyLimitLive), Layer.provideMerge(publicServer))
  }
  // Two servers, each with its own router (`serve` builds its app apart); only the public one is
  // in this layer's output (HttpServer, as tests and the cluster view read its address).
  const innerRoutes = HttpApiBuilder.layer(ServedInnerApi).pipe(Layer.provide(HandlersLive))
  const inner = HttpRouter.serve(Layer.mergeAll(innerRoutes, MetricsRoute, EdgeLive), {
    disableLogger: !config.accessLog
  }).pipe(
    Layer.provide(BodyLimitLive),
    Layer.provide(
      NodeHttpServer.layer(() => httpServer(config), { port: config.innerPort, host: config.innerHost ?? "127.0.0.1" })
    )
  )
  return HttpRouter.serve(Layer.mergeAll(PublicOnlyRoutes, NotifyRoutes, ConsoleRoutes, EdgeLive, CorsLive), {
    disableLogger: !config.accessLog
  }).pipe(Layer.provide(BodyLimitLive), Layer.provideMerge(publicServer), Layer.merge(inner))
})).pipe(Layer.provide([WebSocketTransport.layer, SendListener.layer]))

/** Multi-node mode: this node's NodeInbox, through which other nodes' mailboxes reach its connections. */
const InboxLive = Layer.unwrap(
  Effect.map(AppConfig, (config) => Option.isSome(config.runnerPort) ? NodeInboxLive : Layer.empty)
)

/**
 * What every node stands on, in the order it comes up (and goes down in reverse): telemetry, the
 * migrated database, this process's identity and its row of `quickim_nodes` (announced before the
 * runner joins, see NodeAnnouncementLive), then the cluster runner.
 */
const PlatformLive = ClusterLive.pipe(
  Layer.provideMerge(NodeAnnouncementLive),
  Layer.provideMerge(NodeIdentity.layer),
  Layer.provideMerge(DatabaseLive),
  Layer.provideMerge(Telemetry.layer)
)

/**
 * The node: the HTTP gateway with its reporter, the two entities and the node's inbox, each layer
 * bringing the services it builds on (a service used by several is built once: layers are shared
 * by reference). LocalMailboxes is in the output for tests that look at this node's mailboxes.
 */
export const AppLive = Layer.mergeAll(
  NodeReporterLive.pipe(Layer.provideMerge(HttpLive)),
  ConversationEntityLive,
  MailboxEntityLive,
  InboxLive,
  LocalMailboxes.layer
).pipe(
  Layer.provideMerge(PlatformLive),
  Layer.provide(TracingLive),
  Layer.provide(LoggingLive)
)

/** The node with settings from the environment. */
export const MainLive = AppLive.pipe(Layer.provide(AppConfig.layer))

/** The node with explicit settings (tests, embedding). */
export const appWith = (settings: AppSettings) => AppLive.pipe(Layer.provideMerge(AppConfig.make(settings)))
