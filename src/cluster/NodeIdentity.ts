/**
 * Who this process is among the cluster's nodes: a fresh id per process, its runner address in
 * multi-node mode (the key of its NodeInbox, where other nodes reach it), and when it started.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { randomUUID } from "node:crypto"
import { AppConfig } from "../Config.ts"

/**
 * When this process started (epoch ms). A relay sent before it was meant for a process that died on
 * this address (see NodeLink).
 */
export const processStartedAt = performance.timeOrigin

export class NodeIdentity extends Context.Service<NodeIdentity, {
  /** Identifies this process among the cluster's nodes (its row of `quickim_nodes`). */
  readonly nodeId: string
  /** Multi-node mode: this node's runner address, the id of its NodeInbox entity. */
  readonly runner: string | undefined
  readonly startedAt: number
}>()("quick-im/cluster/NodeIdentity") {
  static readonly layer = Layer.effect(
    NodeIdentity,
    Effect.gen(function* () {
      const config = yield* AppConfig
      return NodeIdentity.of({
        nodeId: randomUUID(),
        runner: Option.getOrUndefined(Option.map(config.runnerPort, (port) => `${config.runnerHost}:${port}`)),
        startedAt: processStartedAt
      })
    })
  )
}
