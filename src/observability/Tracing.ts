/**
 * OTLP tracing, off unless `QUICKIM_OTLP_ENDPOINT` names a collector. When on, Effect records
 * spans (HTTP server requests, cluster RPCs, SQL statements, and quick-im's own: the
 * Conversation's group commit and its hand-over to the members' Mailboxes) and exports them over
 * OTLP/HTTP JSON. When off, spans are not recorded at all: recording spans nobody reads cost CPU
 * on every request.
 */
import { Effect, Layer, References } from "effect"
import { FetchHttpClient } from "effect/http"
import { OtlpSerialization, OtlpTracer } from "effect/observability"
import { AppConfig } from "../Config.ts"

export const TracingLive = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  if (config.otlpEndpoint === undefined) return Layer.succeed(References.TracerEnabled, false)
  return OtlpTracer.layer({
    url: `${config.otlpEndpoint}/v1/traces`,
    resource: { serviceName: config.otlpServiceName ?? "quick-im", serviceVersion: "0.1.0" },
    exportInterval: "1 second"
  }).pipe(
    Layer.provide(OtlpSerialization.layerJson),
    Layer.provide(FetchHttpClient.layer),
    Layer.merge(Layer.succeed(References.TracerEnabled, true))
  )
}))
