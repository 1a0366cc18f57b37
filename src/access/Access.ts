/**
 * Implementations of the contract's middleware: bearer tokens → CurrentSession, and the
 * inner-endpoint guard (source address allow-list plus optional admin key).
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as HttpServerRequest from "effect/http/HttpServerRequest"
import { BlockList, isIP } from "node:net"
import { timingSafeEqual } from "node:crypto"
import { ErrorCode, Forbidden, Unauthorized } from "../api/Errors.ts"
import { ADMIN_KEY_HEADER, Authorization, CurrentSession, InnerGuard } from "../api/Security.ts"
import { AppConfig } from "../Config.ts"
import { Tokens } from "./Tokens.ts"

/**
 * The credential of an `Authorization: Bearer …` header, "" when there is none: as HttpApi reads
 * it for `HttpApiSecurity.bearer` (RFC 9110 §11.1: the scheme in any case, then one or more spaces).
 */
export const bearerCredential = (authorization: string | undefined): string => {
  if (
    authorization === undefined || authorization.length <= 6 || authorization.charCodeAt(6) !== 32
    || authorization.slice(0, 6).toLowerCase() !== "bearer"
  ) return ""
  let start = 7
  while (authorization.charCodeAt(start) === 32) start++
  return authorization.slice(start)
}

/** The caller of a public endpoint from its bearer credential ("" when none was given). */
export const authenticate = (tokens: Tokens["Service"]) => (token: string) =>
  token.length === 0
    ? Effect.fail(new Unauthorized({ code: ErrorCode.InvalidToken, error: "missing bearer token" }))
    : tokens.verify(token).pipe(
      Effect.map((claims): CurrentSession["Service"] => ({ sid: claims.sid, platform: claims.platform })),
      Effect.mapError((e) => new Unauthorized({ code: ErrorCode.InvalidToken, error: e.reason }))
    )

export const AuthorizationLive = Layer.effect(
  Authorization,
  Effect.gen(function* () {
    const caller = authenticate(yield* Tokens)
    return Authorization.of({
      bearer: (httpEffect, { credential }) =>
        Effect.flatMap(
          caller(Redacted.value(credential)),
          (session) => Effect.provideService(httpEffect, CurrentSession, session)
        )
    })
  })
)

const addressBySocket = new WeakMap<object, string>()

/**
 * The request's remote address, read once per connection: Deno asks the operating system for the
 * peer's name on every read of `socket.remoteAddress`, a cost on every request of a kept-alive
 * connection otherwise.
 */
export const remoteAddressOf = (request: HttpServerRequest.HttpServerRequest): string | undefined => {
  const socket = (request.source as { readonly socket?: unknown } | undefined)?.socket
  if (typeof socket !== "object" || socket === null) return Option.getOrUndefined(request.remoteAddress)
  let address = addressBySocket.get(socket)
  if (address === undefined) {
    address = Option.getOrUndefined(request.remoteAddress)
    if (address !== undefined) addressBySocket.set(socket, address)
  }
  return address
}

/** Parses `QUICKIM_INNER_ALLOW` (CIDRs or single addresses, IPv4 and IPv6). */
export const makeAllowList = (entries: ReadonlyArray<string>) => {
  const list = new BlockList()
  for (const entry of entries) {
    const [address, bits] = entry.split("/")
    const family = isIP(address)
    if (family === 0) throw new Error(`QUICKIM_INNER_ALLOW: '${entry}' is not an IP address or CIDR`)
    const type = family === 4 ? "ipv4" : "ipv6"
    if (bits === undefined) list.addAddress(address, type)
    else list.addSubnet(address, Number(bits), type)
  }
  return (remote: string) => {
    const mapped = remote.startsWith("::ffff:") && isIP(remote.slice(7)) === 4 ? remote.slice(7) : remote
    const family = isIP(mapped)
    return family !== 0 && list.check(mapped, family === 4 ? "ipv4" : "ipv6")
  }
}

const sameSecret = (a: string, b: string) => {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

/** A host name that only this machine can answer to: a DNS-rebinding page never carries one. */
export const isLoopbackHost = (host: string) => {
  const name = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host
  if (name === "localhost" || name === "::1") return true
  return isIP(name) === 4 && name.startsWith("127.")
}

/** The inner endpoints the console page calls (sign-in, operator tab). */
const CONSOLE_PATHS = new Set(["/inner/get_token", "/inner/cluster", "/metrics"])

/** A request URL's path, percent-decoded as the router decodes it (left as sent when it cannot be). */
export const pathOf = (url: string) => {
  const path = url.split(/[?#]/, 1)[0]
  if (!path.includes("%")) return path
  try {
    return decodeURI(path)
  } catch {
    return path
  }
}

/**
 * The console page calling this node from the same origin: `Sec-Fetch-Site: same-origin`, any
 * `Origin` naming the host the request went to, and that host a loopback name (so not a page
 * whose DNS name was rebound to this machine, nor anything arriving through a reverse proxy).
 */
const fromConsolePage = (request: HttpServerRequest.HttpServerRequest) => {
  if (request.headers["sec-fetch-site"] !== "same-origin") return false
  if (!CONSOLE_PATHS.has(pathOf(request.url))) return false
  const host = request.headers["host"] ?? ""
  let hostname: string
  try {
    hostname = new URL(`http://${host}`).hostname
  } catch {
    return false
  }
  if (!isLoopbackHost(hostname)) return false
  const origin = request.headers["origin"]
  if (origin === undefined) return true
  try {
    return new URL(origin).host === host
  } catch {
    return false
  }
}

/**
 * Why a request coming from a web page is refused, or undefined when it does not come from one.
 * Browsers put `Origin` on cross-origin requests (and on same-origin POSTs) and `Sec-Fetch-Site`
 * on every request (`none` only when the user typed the address); a backend sends neither.
 */
const browserRefusal = (request: HttpServerRequest.HttpServerRequest, consoleSignIn: boolean) => {
  const origin = request.headers["origin"]
  const site = request.headers["sec-fetch-site"]
  if (origin === undefined && (site === undefined || site === "none")) return undefined
  if (consoleSignIn && fromConsolePage(request)) return undefined
  const header = origin !== undefined ? `Origin: ${origin}` : `Sec-Fetch-Site: ${site}`
  const hint = site === "same-origin" && CONSOLE_PATHS.has(pathOf(request.url))
    ? " (the console's dev sign-in needs QUICKIM_CONSOLE_SIGN_IN=true and the console opened at a loopback address)"
    : ""
  return `inner endpoints are for your backend only, not for web pages: refused a request with ${header}${hint}`
}

/**
 * The inner guard's check of one request: the source address in `QUICKIM_INNER_ALLOW`, no sign of
 * a web page (`Origin`, `Sec-Fetch-Site` other than `none`) unless it is the console page with
 * `QUICKIM_CONSOLE_SIGN_IN`, and, when `QUICKIM_ADMIN_KEY` is set, the key in its header. Also
 * guards `/metrics`.
 */
export const makeInnerCheck = Effect.gen(function* () {
  const config = yield* AppConfig
  const allowed = yield* Effect.try(() => makeAllowList(config.innerAllow))
  const adminKey = Option.map(config.adminKey, Redacted.value).pipe(Option.filter((k) => k.length > 0))
  const consoleSignIn = config.consoleSignIn ?? false
  return (request: HttpServerRequest.HttpServerRequest): Effect.Effect<void, Forbidden> => {
    const remote = remoteAddressOf(request) ?? ""
    if (!allowed(remote)) {
      return Effect.fail(
        new Forbidden({
          code: ErrorCode.NotAllowed,
          error: `inner endpoints are not allowed from ${remote || "an unknown address"}`
        })
      )
    }
    const refusal = browserRefusal(request, consoleSignIn)
    if (refusal !== undefined) return Effect.fail(new Forbidden({ code: ErrorCode.NotAllowed, error: refusal }))
    if (Option.isSome(adminKey)) {
      const presented = request.headers[ADMIN_KEY_HEADER] ?? ""
      if (!sameSecret(presented, adminKey.value)) {
        return Effect.fail(
          new Forbidden({ code: ErrorCode.NotAllowed, error: `missing or wrong ${ADMIN_KEY_HEADER}` })
        )
      }
    }
    return Effect.void
  }
})

export const InnerGuardLive = Layer.effect(
  InnerGuard,
  Effect.gen(function* () {
    const check = yield* makeInnerCheck
    return InnerGuard.of((httpEffect) =>
      Effect.gen(function* () {
        yield* check(yield* HttpServerRequest.HttpServerRequest)
        return yield* httpEffect
      })
    )
  })
)
