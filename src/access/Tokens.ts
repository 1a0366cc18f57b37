/**
 * Session tokens: HS256 JWTs carrying `sid`, `platform`, `iat`, `exp` and `iat_ms` (the issue time
 * in milliseconds, which revocation compares with). `exp` and `iat` are required. The key comes
 * from configuration (at least 32 bytes); on the embedded database a missing key is generated once
 * and kept in the data directory.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Jose from "jose"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { AppConfig, isConfigured, StartupError } from "../Config.ts"
import { Revocations, type TokenClaims } from "./Revocations.ts"

/** The shortest signing key accepted: HS256 wants a key at least as long as its 256-bit hash. */
export const MIN_KEY_BYTES = 32
import { isStorableText } from "../domain/Conversation.ts"

export class TokenInvalid extends Schema.TaggedError<TokenInvalid>()("TokenInvalid", { reason: Schema.String }) {}

export class Tokens extends Context.Service<Tokens, {
  readonly issue: (sid: string, platform: number) => Effect.Effect<string>
  readonly verify: (token: string) => Effect.Effect<TokenClaims, TokenInvalid>
  /**
   * The claims of a token verified before that has neither expired nor been revoked at `nowMs`,
   * without an effect; undefined otherwise, and then `verify` decides (and words a refusal).
   */
  readonly known: (token: string, nowMs: number) => TokenClaims | undefined
}>()("quick-im/Tokens") {
  static readonly layer = Layer.effect(
    Tokens,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const revocations = yield* Revocations
      const key = yield* signingKey
      const ttlSeconds = Math.max(1, Math.floor(Duration.toSeconds(config.tokenTtl)))

      const issue = Effect.fnUntraced(function* (sid: string, platform: number) {
        const nowMs = yield* Clock.currentTimeMillis
        const now = Math.floor(nowMs / 1000)
        return yield* Effect.promise(() =>
          new Jose.SignJWT({ sid, platform, iat_ms: nowMs })
            .setProtectedHeader({ alg: "HS256", typ: "JWT" })
            .setIssuer(config.jwtIssuer)
            .setIssuedAt(now)
            .setExpirationTime(now + ttlSeconds)
            .sign(key)
        )
      })

      // Verified tokens are remembered until they expire: a token is immutable, and HMAC
      // verification is a large share of a small request's CPU. Revocation is checked on every use.
      const verified = new Map<string, TokenClaims>()
      const remember = (token: string, claims: TokenClaims) => {
        if (verified.size >= 10_000) verified.delete(verified.keys().next().value!)
        verified.set(token, claims)
      }

      const verifySlow = (token: string) =>
        Effect.tryPromise({
          try: () =>
            Jose.jwtVerify(token, key, {
              algorithms: ["HS256"],
              issuer: config.jwtIssuer,
              requiredClaims: ["exp", "iat"]
            }),
          catch: (e) =>
            new TokenInvalid({
              reason: e instanceof Jose.errors.JWTExpired
                ? "token expired"
                : e instanceof Jose.errors.JWTClaimValidationFailed && e.reason === "missing"
                ? `token lacks the ${e.claim} claim`
                : "invalid token"
            })
        }).pipe(
          Effect.flatMap(({ payload }) => {
            if (typeof payload.sid !== "string" || payload.sid.length === 0 || !Number.isInteger(payload.platform)) {
              return Effect.fail(new TokenInvalid({ reason: "token lacks sid or platform" }))
            }
            // Signed elsewhere with the key: a sid get_token would refuse is refused here too.
            if (payload.sid.length > 128 || !isStorableText(payload.sid)) {
              return Effect.fail(new TokenInvalid({ reason: "token sid is not a valid session id" }))
            }
            const iat = payload.iat!
            // `iat_ms` when it agrees with `iat`; otherwise the start of `iat`'s second (a revocation
            // in that second then refuses the token: the safe side).
            const iatMs = typeof payload.iat_ms === "number" && Math.floor(payload.iat_ms / 1000) === iat
              ? payload.iat_ms
              : iat * 1000
            const claims: TokenClaims = {
              sid: payload.sid,
              platform: payload.platform as number,
              issuedMs: iatMs,
              expMs: payload.exp! * 1000
            }
            remember(token, claims)
            return Effect.succeed(claims)
          })
        )

      const isRevoked = (claims: TokenClaims) => revocations.isRevoked(claims.sid, claims.platform, claims.issuedMs)

      const check = (claims: TokenClaims) =>
        isRevoked(claims) ? Effect.fail(new TokenInvalid({ reason: "token revoked" })) : Effect.succeed(claims)

      const verify = (token: string) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => {
          const hit = verified.get(token)
          if (hit === undefined) return Effect.flatMap(verifySlow(token), check)
          if (hit.expMs <= now) {
            verified.delete(token)
            return Effect.fail(new TokenInvalid({ reason: "token expired" }))
          }
          return check(hit)
        })

      const known = (token: string, nowMs: number) => {
        const hit = verified.get(token)
        return hit !== undefined && hit.expMs > nowMs && !isRevoked(hit) ? hit : undefined
      }

      return Tokens.of({ issue, verify, known })
    })
  ).pipe(Layer.provideMerge(Revocations.layer))
}

/** The HS256 key: configured, or (embedded database only) generated and kept in the data dir. */
const signingKey = Effect.gen(function* () {
  const config = yield* AppConfig
  if (isConfigured(config.jwtSecret)) {
    const key = new TextEncoder().encode(Redacted.value(Option.getOrThrow(config.jwtSecret)))
    if (key.length < MIN_KEY_BYTES) {
      return yield* new StartupError({
        message: `QUICKIM_JWT_SECRET is ${key.length} bytes long; it must be at least ${MIN_KEY_BYTES} `
          + `(e.g. openssl rand -base64 32)`
      })
    }
    return key
  }
  if (isConfigured(config.databaseUrl)) {
    return yield* new StartupError({
      message: "QUICKIM_JWT_SECRET is required when DATABASE_URL is set (every node must share the signing key)"
    })
  }
  const file = Path.join(config.dataDir, "jwt-secret")
  const existing = yield* Effect.sync(() => Fs.existsSync(file) ? Fs.readFileSync(file, "utf8").trim() : "")
  if (existing.length >= MIN_KEY_BYTES) return new TextEncoder().encode(existing)
  if (existing.length > 0) {
    return yield* new StartupError({
      message: `${file} holds a key shorter than ${MIN_KEY_BYTES} bytes: delete it to have a new one generated`
    })
  }
  const secret = randomBytes(32).toString("base64url")
  const written = yield* Effect.sync(() => {
    Fs.mkdirSync(config.dataDir, { recursive: true })
    try {
      Fs.writeFileSync(file, secret + "\n", { mode: 0o600, flag: "wx" })
      return true
    } catch (e) {
      // Another node on this data directory (a cluster sharing its embedded PostgreSQL) was first.
      if ((e as NodeJS.ErrnoException).code === "EEXIST") return false
      throw e
    }
  })
  if (!written) {
    // Its key, once it has finished writing it.
    for (let i = 0; i < 100; i++) {
      const theirs = yield* Effect.sync(() => Fs.readFileSync(file, "utf8").trim())
      if (theirs.length >= MIN_KEY_BYTES) return new TextEncoder().encode(theirs)
      yield* Effect.sleep("20 millis")
    }
    return yield* new StartupError({ message: `${file} stays empty: delete it to have a new key generated` })
  }
  yield* Effect.logWarning(`QUICKIM_JWT_SECRET is not set: generated a signing key and saved it in ${file}`)
  return new TextEncoder().encode(secret)
})
