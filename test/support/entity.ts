/** The Conversation entity on Effect cluster's in-memory TestRunner, over a real database. */
import { NodeCrypto } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { TestRunner } from "effect/cluster"
import { NodeIdentity } from "../../src/cluster/NodeIdentity.ts"
import { NodeLink } from "../../src/cluster/NodeLink.ts"
import { RunnerWatch } from "../../src/cluster/RunnerWatch.ts"
import { ShardRoutes } from "../../src/cluster/ShardRoutes.ts"
import { AppConfig, type AppSettings } from "../../src/Config.ts"
import { ConversationEntityNoDeps } from "../../src/conversation/ConversationEntity.ts"
import { LocalConversations } from "../../src/conversation/LocalConversations.ts"
import { Delivery } from "../../src/push/Delivery.ts"
import { ConversationSender } from "../../src/conversation/Sender.ts"
import { Telemetry } from "../../src/observability/Telemetry.ts"
import { Connections } from "../../src/push/Connections.ts"
import { LocalMailboxes } from "../../src/push/LocalMailboxes.ts"
import { MailboxRelay } from "../../src/push/MailboxRelay.ts"
import { ConversationStore } from "../../src/storage/ConversationStore.ts"
import { DatabaseLive } from "../../src/storage/Database.ts"
import { DatabaseHealth } from "../../src/storage/DatabaseHealth.ts"

/**
 * The shard routes of this runner, except that the sessions in `elsewhere` have their Mailbox's
 * shard on a node that is not there: as a node that died or is taking the shard over, it answers
 * nobody (the TestRunner has no Mailbox entity), so their deliveries stay on their way.
 */
const routesWith = (elsewhere: ReadonlyArray<string>) =>
  Layer.effect(
    ShardRoutes,
    Effect.gen(function* () {
      const routes = yield* ShardRoutes
      return ShardRoutes.of({ ...routes, holds: (id) => !elsewhere.includes(id) && routes.holds(id) })
    })
  ).pipe(Layer.provide(ShardRoutes.layer))

export const conversationEntityLayer = (settings: AppSettings, elsewhere: ReadonlyArray<string> = []) =>
  ConversationEntityNoDeps.pipe(
    Layer.provideMerge(Layer.mergeAll(Delivery.layerNoDeps, ConversationSender.layerNoDeps)),
    Layer.provideMerge(MailboxRelay.layerNoDeps),
    Layer.provideMerge(
      Layer.mergeAll(NodeLink.layerNoDeps, Connections.layer, LocalMailboxes.layer, LocalConversations.layer)
    ),
    Layer.provideMerge(routesWith(elsewhere)),
    Layer.provideMerge(RunnerWatch.layer),
    Layer.provideMerge(TestRunner.layer),
    Layer.provideMerge(Layer.mergeAll(NodeIdentity.layer, Telemetry.layer)),
    Layer.provideMerge(Layer.mergeAll(ConversationStore.layer, DatabaseHealth.layer)),
    Layer.provideMerge(DatabaseLive),
    Layer.provideMerge(AppConfig.make(settings)),
    Layer.provide(NodeCrypto.layerDigest)
  )
