/**
 * The one place where HttpApi's own answers are brought to the documented wire format.
 * HttpApi answers decode failures with an empty 400, oversize bodies with an empty 413 and
 * unknown routes with an empty 404, and picks the body decoder by content type (curl's `-d`
 * sends form encoding); the contract wants the `{code, error}` envelope for all of them and
 * JSON bodies whatever the header says. Defects become 10002 with the cause logged, never shown.
 */
import * as ByteSize from "effect/ByteSize"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Headers from "effect/http/Headers"
import * as HttpIncomingMessage from "effect/http/HttpIncomingMessage"
import * as HttpMiddleware from "effect/http/HttpMiddleware"
import * as HttpRouter from "effect/http/HttpRouter"
import * as HttpServerError from "effect/http/HttpServerError"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import * as HttpApiError from "effect/http-api/HttpApiError"
import { ErrorCode } from "../api/Errors.ts"
import { AppConfig } from "../Config.ts"
import { Telemetry } from "../observability/Telemetry.ts"
import { pathOf } from "../access/Access.ts"

const envelope = (status: number, code: number, error: string) =>
  HttpServerResponse.jsonUnsafe({ code, error }, { status })

const describeSchemaError = (error: HttpApiError.HttpApiSchemaError) =>
  `invalid ${error.kind === "Payload" ? "request body" : error.kind.toLowerCase()}: ${
    error.cause.message.replace(/\s*\n\s*/g, " ")
  }`

/**
 * The envelope for a request that failed or died (`tooLarge`: the text of 413 / 10005, see bodyTooLarge); an
 * interruption by the client itself stays a failure: nobody is there to answer.
 */
export const answerCause = (cause: Cause.Cause<unknown>, tooLarge: string) =>
  Effect.gen(function* () {
    for (const reason of cause.reasons) {
      const value = Cause.isFailReason(reason) ? reason.error : Cause.isDieReason(reason) ? reason.defect : undefined
      if (HttpApiError.HttpApiSchemaError.is(value) && value.kind !== "Body" && value.kind !== "ResponseHeaders") {
        return envelope(400, ErrorCode.InvalidParameter, describeSchemaError(value))
      }
      if (HttpApiError.HttpApiPayloadTooLarge.is(value)) {
        return envelope(413, ErrorCode.BodyTooLarge, tooLarge)
      }
      if (HttpServerError.isHttpServerError(value)) {
        const why = value.reason
        if (why instanceof HttpServerError.RouteNotFound) {
          return envelope(404, ErrorCode.UnknownPath, "unknown path or method")
        }
        if (why instanceof HttpServerError.RequestParseError) {
          return why.reason === "BodyTooLarge"
            ? envelope(413, ErrorCode.BodyTooLarge, tooLarge)
            : envelope(400, ErrorCode.InvalidParameter, "request body could not be read")
        }
      }
    }
    if (Cause.hasInterruptsOnly(cause)) {
      // A client that went away is answered by nobody; anything else interrupted the request on the
      // server's side (an entity restarting, a node stopping): the client gets the envelope and retries.
      const byClient = cause.reasons.some((r) =>
        Cause.isInterruptReason(r) && r.annotations.has(HttpServerError.ClientAbort.key)
      )
      if (byClient) return yield* Effect.failCause(cause)
      return envelope(503, ErrorCode.Unavailable, "request interrupted, retry")
    }
    yield* Effect.logError("request failed", cause)
    return envelope(500, ErrorCode.Internal, "internal error")
  })

/** The error text of 413 / 10005 for a body over `QUICKIM_MAX_BODY_BYTES`. */
export const bodyTooLarge = (maxBodyBytes: number) => `request body is larger than ${maxBodyBytes} bytes`

/**
 * The media type as HttpApi picks a body decoder by it: anything but `application/json` (also
 * `text/json`, `application/json+x`, `application/jsonp`) would be refused with a plain-text 415.
 */
const isJsonMediaType = (contentType: string) => {
  const type = contentType.toLowerCase().trim()
  return (type.includes(";") ? type.slice(0, type.indexOf(";")).trim() : type) === "application/json"
}

/** Empty 4xx answers that HttpApi produced itself (no body), and its plain-text 415: give them the envelope. */
const fillEmpty = (response: HttpServerResponse.HttpServerResponse, tooLarge: string) => {
  if (response.status === 415) return envelope(400, ErrorCode.InvalidParameter, "request body must be JSON")
  if (response.body._tag !== "Empty") return response
  switch (response.status) {
    case 400:
      return envelope(400, ErrorCode.InvalidParameter, "invalid request")
    case 404:
      return envelope(404, ErrorCode.UnknownPath, "unknown path or method")
    case 413:
      return envelope(413, ErrorCode.BodyTooLarge, tooLarge)
    case 415:
      return envelope(400, ErrorCode.InvalidParameter, "request body must be JSON")
    default:
      return response
  }
}

/**
 * The largest request body a server reads (`QUICKIM_MAX_BODY_BYTES`), in the context every request
 * starts from: provide it to the server's layer (`HttpRouter.serve`), not per request.
 */
export const BodyLimitLive = Layer.effect(
  HttpIncomingMessage.MaxBodySize,
  Effect.map(AppConfig, (config) => ByteSize.bytes(config.maxBodyBytes))
)

export const EdgeLive = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  const telemetry = yield* Telemetry
  const tooLarge = bodyTooLarge(config.maxBodyBytes)
  return HttpRouter.middleware(
    (httpEffect) =>
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
        const contentType = request.headers["content-type"] ?? ""
        // Each service provided here is one more layer on the request's context, which Effect copies
        // whole past a depth of 8: the request is replaced only when its content type must change.
        const served = request.method === "POST" && !isJsonMediaType(contentType)
          ? Effect.provideService(
            httpEffect,
            HttpServerRequest.HttpServerRequest,
            request.modify({ headers: Headers.set(request.headers, "content-type", "application/json") })
          )
          : httpEffect
        const counted = (response: HttpServerResponse.HttpServerResponse) => {
          telemetry.request(request.url, response.status)
          return response
        }
        return Effect.matchCauseEffect(served, {
          onSuccess: (response) => Effect.succeed(counted(fillEmpty(response, tooLarge))),
          onFailure: (cause) => Effect.map(answerCause(cause, tooLarge), counted)
        })
      }),
    { global: true }
  )
}))

/**
 * Paths for the backend only: `inner/*` (the cluster view included) and `/metrics`. Matched on
 * the decoded, lower-cased path so no spelling the router accepts slips through.
 */
export const isInnerPath = (url: string) => {
  let path = pathOf(url)
  if (path.includes("//")) path = path.replace(/\/{2,}/g, "/")
  path = path.toLowerCase()
  return path === "/inner" || path.startsWith("/inner/") || path === "/metrics" || path.startsWith("/metrics/")
}

const cors = HttpMiddleware.cors({
  allowedMethods: ["GET", "POST", "OPTIONS"],
  allowedHeaders: ["authorization", "content-type", "last-event-id", "b3", "traceparent"],
  maxAge: 86400
})

/**
 * Browsers may call the public API from any origin; tokens travel in headers, not cookies. Trace
 * headers (`b3`, `traceparent`, which Effect's HTTP client sends) are allowed so a browser's trace
 * joins the server's. Backend-only paths get no CORS headers at all, and their preflights are
 * not approved (they fall through to the router: 404), so no page can read them.
 */
export const CorsLive = HttpRouter.middleware(
  (httpEffect) => {
    const withCors = cors(httpEffect)
    return Effect.flatMap(
      HttpServerRequest.HttpServerRequest,
      (request) => isInnerPath(request.url) ? httpEffect : withCors
    )
  },
  { global: true }
)
