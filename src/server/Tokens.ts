/**
 * Session tokens: HS256 JWTs carrying `sid` and `platform`. The key comes from configuration;
 * on the embedded database a missing key is generated once and kept in the data directory.
 */
import { Clock, Context, Duration, Effect, Layer, Option, Redacted, Schema } from "effect"
import * as Jose from "jose"
import { randomBytes } from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { AppConfig, isConfigured } from "../Config.ts"
import { isStorableText } from "../domain/Conversation.ts"

export class TokenInvalid extends Schema.TaggedError<TokenInvalid>()("TokenInvalid", { reason: Schema.String }) {}

export class StartupError extends Schema.TaggedError<StartupError>()("StartupError", { message: Schema.String }) {}

export class Tokens extends Context.Service<Tokens, {
  readonly issue: (sid: string, platform: number) => Effect.Effect<string>
  readonly verify: (token: string) => Effect.Effect<{ readonly sid: string; readonly platform: number }, TokenInvalid>
}>()("quick-im/Tokens") {
  static readonly layer = Layer.effect(
    Tokens,
    Effect.gen(function* () {
      const config = yield* AppConfig
      const key = yield* signingKey
      const ttlSeconds = Math.max(1, Math.floor(Duration.toSeconds(config.tokenTtl)))

      const issue = Effect.fnUntraced(function* (sid: string, platform: number) {
        const now = Math.floor((yield* Clock.currentTimeMillis) / 1000)
        return yield* Effect.promise(() =>
          new Jose.SignJWT({ sid, platform })
            .setProtectedHeader({ alg: "HS256", typ: "JWT" })
            .setIssuer(config.jwtIssuer)
            .setIssuedAt(now)
            .setExpirationTime(now + ttlSeconds)
            .sign(key)
        )
      })

      // Verified tokens are remembered until they expire: a token is immutable, and HMAC
      // verification is a large share of a small request's CPU.
      const verified = new Map<string, { sid: string; platform: number; expMs: number }>()
      const remember = (token: string, claims: { sid: string; platform: number }, exp: number | undefined) => {
        if (verified.size >= 10_000) verified.delete(verified.keys().next().value!)
        verified.set(token, { ...claims, expMs: (exp ?? 0) * 1000 })
      }

      const verifySlow = (token: string) =>
        Effect.tryPromise({
          try: () => Jose.jwtVerify(token, key, { algorithms: ["HS256"], issuer: config.jwtIssuer }),
          catch: (e) =>
            new TokenInvalid({ reason: e instanceof Jose.errors.JWTExpired ? "token expired" : "invalid token" })
        }).pipe(
          Effect.flatMap(({ payload }) => {
            if (typeof payload.sid !== "string" || payload.sid.length === 0 || !Number.isInteger(payload.platform)) {
              return Effect.fail(new TokenInvalid({ reason: "token lacks sid or platform" }))
            }
            // Signed elsewhere with the key: a sid get_token would refuse is refused here too.
            if (payload.sid.length > 128 || !isStorableText(payload.sid)) {
              return Effect.fail(new TokenInvalid({ reason: "token sid is not a valid session id" }))
            }
            const claims = { sid: payload.sid, platform: payload.platform as number }
            remember(token, claims, payload.exp)
            return Effect.succeed(claims)
          })
        )

      const verify = (token: string) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => {
          const hit = verified.get(token)
          if (hit === undefined) return verifySlow(token)
          if (hit.expMs <= now) {
            verified.delete(token)
            return Effect.fail(new TokenInvalid({ reason: "token expired" }))
          }
          return Effect.succeed({ sid: hit.sid, platform: hit.platform })
        })

      return Tokens.of({ issue, verify })
    })
  )
}

/** The HS256 key: configured, or (embedded database only) generated and kept in the data dir. */
const signingKey = Effect.gen(function* () {
  const config = yield* AppConfig
  if (isConfigured(config.jwtSecret)) {
    return new TextEncoder().encode(Redacted.value(Option.getOrThrow(config.jwtSecret)))
  }
  if (isConfigured(config.databaseUrl)) {
    return yield* new StartupError({
      message: "QUICKIM_JWT_SECRET is required when DATABASE_URL is set (every node must share the signing key)"
    })
  }
  const file = Path.join(config.dataDir, "jwt-secret")
  const existing = yield* Effect.sync(() => Fs.existsSync(file) ? Fs.readFileSync(file, "utf8").trim() : "")
  if (existing.length > 0) return new TextEncoder().encode(existing)
  const secret = randomBytes(32).toString("base64url")
  yield* Effect.sync(() => {
    Fs.mkdirSync(config.dataDir, { recursive: true })
    Fs.writeFileSync(file, secret + "\n", { mode: 0o600 })
  })
  yield* Effect.logWarning(`QUICKIM_JWT_SECRET is not set: generated a signing key and saved it in ${file}`)
  return new TextEncoder().encode(secret)
})
