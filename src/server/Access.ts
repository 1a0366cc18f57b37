/**
 * Implementations of the contract's middleware: bearer tokens → CurrentSession, and the
 * inner-endpoint guard (source address allow-list plus optional admin key).
 */
import { Effect, Layer, Option, Redacted } from "effect"
import { HttpServerRequest } from "effect/http"
import { BlockList, isIP } from "node:net"
import { timingSafeEqual } from "node:crypto"
import { ErrorCode, Forbidden, Unauthorized } from "../api/Errors.ts"
import { ADMIN_KEY_HEADER, Authorization, CurrentSession, InnerGuard } from "../api/Security.ts"
import { AppConfig } from "../Config.ts"
import { Tokens } from "./Tokens.ts"

export const AuthorizationLive = Layer.effect(
  Authorization,
  Effect.gen(function* () {
    const tokens = yield* Tokens
    return Authorization.of({
      bearer: (httpEffect, { credential }) =>
        Effect.gen(function* () {
          const token = Redacted.value(credential)
          if (token.length === 0) {
            return yield* new Unauthorized({ code: ErrorCode.InvalidToken, error: "missing bearer token" })
          }
          const claims = yield* tokens.verify(token).pipe(
            Effect.mapError((e) => new Unauthorized({ code: ErrorCode.InvalidToken, error: e.reason }))
          )
          return yield* Effect.provideService(httpEffect, CurrentSession, {
            sid: claims.sid,
            platform: claims.platform
          })
        })
    })
  })
)

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

/**
 * The inner guard's check of one request: the source address in `QUICKIM_INNER_ALLOW` and, when
 * `QUICKIM_ADMIN_KEY` is set, the key in its header. Also guards `/metrics`.
 */
export const makeInnerCheck = Effect.gen(function* () {
  const config = yield* AppConfig
  const allowed = yield* Effect.try(() => makeAllowList(config.innerAllow))
  const adminKey = Option.map(config.adminKey, Redacted.value).pipe(Option.filter((k) => k.length > 0))
  return (request: HttpServerRequest.HttpServerRequest): Effect.Effect<void, Forbidden> => {
    const remote = Option.getOrElse(request.remoteAddress, () => "")
    if (!allowed(remote)) {
      return Effect.fail(
        new Forbidden({
          code: ErrorCode.NotAllowed,
          error: `inner endpoints are not allowed from ${remote || "an unknown address"}`
        })
      )
    }
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
