/**
 * OTLP tracing, off unless `QUICKIM_OTLP_ENDPOINT` names a collector. When on, Effect records
 * spans (HTTP server requests, cluster RPCs, SQL statements, and quick-im's own: the
 * Conversation's group commit and its hand-over to the members' Mailboxes) and exports them over
 * OTLP/HTTP JSON. When off, spans are not recorded at all: recording spans nobody reads cost CPU
 * on every request. Either way the `token` query parameter (`/notify?token=`) is redacted wherever
 * Effect records a URL (span attributes such as `url.full` and `url.query`, errors, inspection).
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as References from "effect/References"
import * as FetchHttpClient from "effect/http/FetchHttpClient"
import * as UrlParams from "effect/http/UrlParams"
import * as OtlpSerialization from "effect/observability/OtlpSerialization"
import * as OtlpTracer from "effect/observability/OtlpTracer"
import { AppConfig } from "../Config.ts"

/** Query parameters never recorded: Effect's defaults (signed-URL keys) and the session token. */
export const RedactedQueryLive = Layer.succeed(UrlParams.CurrentRedactedNames, [
  ...UrlParams.CurrentRedactedNames.defaultValue(),
  "token"
])

export const TracingLive = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  if (config.otlpEndpoint === undefined) {
    return Layer.merge(Layer.succeed(References.TracerEnabled, false), RedactedQueryLive)
  }
  return OtlpTracer.layer({
    url: `${config.otlpEndpoint}/v1/traces`,
    resource: { serviceName: config.otlpServiceName ?? "quick-im", serviceVersion: "0.1.0" },
    exportInterval: "1 second"
  }).pipe(
    Layer.provide(OtlpSerialization.layerJson),
    Layer.provide(FetchHttpClient.layer),
    Layer.merge(Layer.succeed(References.TracerEnabled, true)),
    Layer.merge(RedactedQueryLive)
  )
}))
