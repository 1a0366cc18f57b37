/** The Conversation entity on Effect cluster's in-memory TestRunner, over a real database. */
import { NodeCrypto } from "@effect/platform-node"
import { Layer } from "effect"
import { TestRunner } from "effect/cluster"
import { NodeOutbox } from "../../src/cluster/NodeOutbox.ts"
import { RunnerWatch } from "../../src/cluster/RunnerWatch.ts"
import { ShardRoutes } from "../../src/cluster/ShardRoutes.ts"
import { AppConfig, type AppSettings } from "../../src/Config.ts"
import { ConversationEntityLive } from "../../src/conversation/ConversationEntity.ts"
import { Delivery } from "../../src/push/Delivery.ts"
import { LocalConnections } from "../../src/push/LocalConnections.ts"
import { ConversationStore } from "../../src/storage/ConversationStore.ts"
import { DatabaseLive } from "../../src/storage/Database.ts"

export const conversationEntityLayer = (settings: AppSettings) =>
  ConversationEntityLive.pipe(
    Layer.provideMerge(Delivery.layer),
    Layer.provideMerge(NodeOutbox.layer),
    Layer.provideMerge(ShardRoutes.layer),
    Layer.provideMerge(RunnerWatch.layer),
    Layer.provideMerge(TestRunner.layer),
    Layer.provideMerge(LocalConnections.layer),
    Layer.provideMerge(ConversationStore.layer),
    Layer.provideMerge(DatabaseLive),
    Layer.provideMerge(AppConfig.make(settings)),
    Layer.provide(NodeCrypto.layerDigest)
  )
