/**
 * The whole node as one layer: database (migrated), cluster runner, Conversation entities and
 * the HTTP gateway. `main.ts` launches it; tests build it with their own settings.
 */
import { NodeCrypto, NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer, References } from "effect"
import { ShardingConfig, SingleRunner } from "effect/cluster"
import { HttpRouter } from "effect/http"
import { HttpApiBuilder } from "effect/http-api"
import { createServer } from "node:http"
import { Api } from "./api/Api.ts"
import { AppConfig, type AppSettings } from "./Config.ts"
import { ConversationEntityLive } from "./conversation/ConversationEntity.ts"
import { Feed } from "./push/Feed.ts"
import { LocalConnections } from "./push/LocalConnections.ts"
import { MailboxEntityLive } from "./push/MailboxEntity.ts"
import { NotifyRoutes } from "./push/NotifyRoutes.ts"
import { WebSocketGateway } from "./push/WebSocketGateway.ts"
import { CorsLive, EdgeLive } from "./server/Edge.ts"
import { HandlersLive } from "./server/Handlers.ts"
import { Tokens } from "./server/Tokens.ts"
import { ConversationStore } from "./storage/ConversationStore.ts"
import { DatabaseLive } from "./storage/Database.ts"
import { Replay } from "./storage/Replay.ts"

/** Every runner option is explicit, so unprefixed env vars (PORT, HOST, ...) never reach the runner. */
const ClusterLive = SingleRunner.layer({
  runnerStorage: "sql",
  shardingConfig: { ...ShardingConfig.defaults, simulateRemoteSerialization: false }
}).pipe(Layer.provide(NodeCrypto.layerDigest))

const CoreLive = Layer.mergeAll(ConversationStore.layer, Replay.layer, Tokens.layer).pipe(
  Layer.provideMerge(DatabaseLive)
)

const HttpLive = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  const gateway = yield* WebSocketGateway
  const routes = HttpApiBuilder.layer(Api, { openapiPath: "/openapi.json" }).pipe(Layer.provide(HandlersLive))
  return HttpRouter.serve(Layer.mergeAll(routes, NotifyRoutes, EdgeLive, CorsLive), {
    disableLogger: !config.accessLog
  }).pipe(
    Layer.provideMerge(
      NodeHttpServer.layer(() => gateway.attach(createServer()), { port: config.port, host: config.host })
    )
  )
}))

const PushLive = WebSocketGateway.layer.pipe(Layer.provideMerge(Feed.layer))

export const AppLive = Layer.mergeAll(HttpLive, ConversationEntityLive, MailboxEntityLive).pipe(
  Layer.provideMerge(PushLive),
  Layer.provideMerge(LocalConnections.layer),
  Layer.provideMerge(ClusterLive),
  Layer.provideMerge(CoreLive),
  // No span exporter is configured yet: recording spans nobody reads costs CPU on every request.
  Layer.provide(Layer.succeed(References.TracerEnabled, false))
)

/** The node with settings from the environment. */
export const MainLive = AppLive.pipe(Layer.provide(AppConfig.layer))

/** The node with explicit settings (tests, embedding). */
export const appWith = (settings: AppSettings) => AppLive.pipe(Layer.provideMerge(AppConfig.make(settings)))
