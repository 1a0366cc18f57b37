/**
 * Every setting of a node, read from the environment in one place. Runner (cluster) settings
 * are passed to Effect cluster explicitly so unprefixed variables such as `PORT` never move a runner.
 */
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"

/** A token bucket: `perSecond` refilled, up to `burst` at once; `perSecond` 0 turns the limit off. */
export interface Rate {
  readonly perSecond: number
  readonly burst: number
}

/** What clients may do at a bounded rate (src/access/RateLimits.ts). */
export type RateKind = "sends" | "creates" | "joins" | "connects" | "polls" | "marks"

export interface RateLimitSettings {
  /** Per session (the token's `sid`), on each node. */
  readonly perSession: Readonly<Record<RateKind, Rate>>
  /** Per remote address (IPv6 by its /64), on each node. */
  readonly perAddress: Readonly<Record<RateKind, Rate>>
  /** Addresses (CIDRs) left out of the per-address limits: a reverse proxy there is every client's address. */
  readonly addressExempt: ReadonlyArray<string>
  /** Most sessions or addresses each limit tracks at once (least recently seen are forgotten first). */
  readonly maxKeys: number
}

/** Default of `QUICKIM_ASSIGNMENTS_REFRESH`. */
export const DEFAULT_ASSIGNMENTS_REFRESH = Duration.millis(500)

export const defaultRateLimits: RateLimitSettings = {
  perSession: {
    sends: { perSecond: 50, burst: 100 },
    creates: { perSecond: 5, burst: 10 },
    joins: { perSecond: 20, burst: 40 },
    connects: { perSecond: 10, burst: 20 },
    polls: { perSecond: 50, burst: 100 },
    marks: { perSecond: 50, burst: 100 }
  },
  perAddress: {
    sends: { perSecond: 500, burst: 1000 },
    creates: { perSecond: 50, burst: 100 },
    joins: { perSecond: 200, burst: 400 },
    connects: { perSecond: 100, burst: 200 },
    polls: { perSecond: 1000, burst: 2000 },
    marks: { perSecond: 500, burst: 1000 }
  },
  addressExempt: ["127.0.0.0/8", "::1/128"],
  maxKeys: 50_000
}

/** Node's HTTP server timeouts (App.ts); WebSocket connections leave them once upgraded. */
export interface HttpTimeouts {
  /** Receiving a request's headers. */
  readonly headers: Duration.Duration
  /** Receiving a whole request, body included. */
  readonly request: Duration.Duration
  /** A kept-alive connection idle between requests. */
  readonly keepAlive: Duration.Duration
  /** A connection with no bytes either way while a request is served; at least QUICKIM_POLL_WAIT + 10 s. */
  readonly idle: Duration.Duration
}

export const defaultHttpTimeouts: HttpTimeouts = {
  headers: Duration.seconds(10),
  request: Duration.seconds(30),
  keepAlive: Duration.seconds(5),
  idle: Duration.minutes(2)
}

/** Live push connections (ws, sse, waiting polls) one session may hold on one node. */
export const DEFAULT_MAX_CONNECTIONS_PER_SESSION = 16
/** The most bytes of messages (their content and sender, as UTF-8) one history response carries. */
export const DEFAULT_MAX_HISTORY_BYTES = 1024 * 1024
/** The most UTF-8 bytes a message's `content` may hold. */
export const DEFAULT_MAX_CONTENT_BYTES = 64 * 1024

export interface AppSettings {
  readonly port: number
  readonly host: string
  readonly databaseUrl: Option.Option<Redacted.Redacted>
  readonly dataDir: string
  readonly jwtSecret: Option.Option<Redacted.Redacted>
  readonly jwtIssuer: string
  readonly tokenTtl: Duration.Duration
  readonly innerAllow: ReadonlyArray<string>
  readonly adminKey: Option.Option<Redacted.Redacted>
  readonly maxBodyBytes: number
  readonly dbPoolSize: number
  readonly entityIdle: Duration.Duration
  readonly groupCommitMax: number
  /** Group commits a node has in flight at once; what queues meanwhile joins the next one. */
  readonly commitsInFlight: number
  /** Bounds on one group commit statement, in rows and (about) bytes of message JSON. */
  readonly commitMaxRows?: number
  readonly commitMaxBytes?: number
  readonly accessLog: boolean
  /** `json` (one object per line), `pretty`, or `auto`: pretty on a terminal, JSON otherwise. */
  readonly logFormat?: "auto" | "json" | "pretty"
  readonly logLevel?: LogLevel.LogLevel
  /** OTLP/HTTP collector base URL (spans go to `<url>/v1/traces`); tracing is off without it. */
  readonly otlpEndpoint?: string | undefined
  readonly otlpServiceName?: string
  readonly resumeWindow: Duration.Duration
  readonly connectionBuffer: number
  /** Bytes (JSON) a push connection may have waiting before it is cut off as a slow consumer (default 1 MiB). */
  readonly connectionBufferBytes?: number
  /** Bytes one page of a resume replay holds at most (default 512 KiB; a page has one message at least). */
  readonly replayPageBytes?: number
  /** Bytes a long-poll platform keeps queued between polls before it switches to reading SQL (default 1 MiB). */
  readonly pollPendingBytes?: number
  /** Bytes of committed messages one conversation may have waiting for hand-over (default 4 MiB). */
  readonly deliveryBacklogBytes?: number
  readonly mailboxIdle: Duration.Duration
  readonly pollWait: Duration.Duration
  readonly sseHeartbeat: Duration.Duration
  readonly wsPing: Duration.Duration
  readonly wsMaxBufferedBytes: number
  /** Multi-node mode when set: this node's runner port, as other nodes reach it. */
  readonly runnerPort: Option.Option<number>
  /** This node's runner host, as other nodes reach it. */
  readonly runnerHost: string
  /** Where the runner listens (default: `runnerHost`); e.g. 0.0.0.0 behind NAT or in a container. */
  readonly runnerListenHost: Option.Option<string>
  /** Shards per entity group: the same on every node of a cluster. */
  readonly shardsPerGroup: number
  /** A dead node's shards are taken over after this long without its lock refresh. */
  readonly shardLockExpiration: Duration.Duration
  /**
   * How often a node renews its shard locks, and how long each lock operation may take: one that
   * takes longer makes Effect cluster release all of the node's shards.
   */
  readonly shardLockRefresh: Duration.Duration
  /** How often a node re-reads the runners and shard assignments (how soon it takes freed shards); default DEFAULT_ASSIGNMENTS_REFRESH. */
  readonly assignmentsRefresh?: Duration.Duration
  readonly runnerHealthCheck: Duration.Duration
  /** This node's HTTP base URL as clients reach it, shown in the cluster view (default from HOST/PORT). */
  readonly publicUrl: string | undefined
  /** How long processed cluster messages and replies are kept before the retention job deletes them. */
  readonly clusterRetention: Duration.Duration
  /** `open`: any session may join by itself (unless the backend kicked it); `invite`: only the backend adds members. */
  readonly publicJoin?: "open" | "invite"
  /** When set, `inner/*`, `/metrics` and the cluster view are served only on this port (unset: on PORT). */
  readonly innerPort?: number | undefined
  /** Where the inner listener binds (default 127.0.0.1). */
  readonly innerHost?: string
  /** The console page may call its inner endpoints from a browser (same origin, loopback host name only). */
  readonly consoleSignIn?: boolean
  /** Rate limits for sends, creates, joins and push connects (defaultRateLimits when unset). */
  readonly rateLimits?: RateLimitSettings
  readonly maxConnectionsPerSession?: number
  readonly maxHistoryBytes?: number
  readonly maxContentBytes?: number
  readonly httpTimeouts?: HttpTimeouts
}

const list = (name: string, fallback: string) =>
  Config.String(name).pipe(
    Config.withDefault(fallback),
    Config.map((s) => s.split(",").map((x) => x.trim()).filter((x) => x.length > 0))
  )

/** `<per second>,<burst>` (`50,100`), or `0` for no limit. */
const rate = (name: string, fallback: Rate) =>
  Config.String(name).pipe(
    Config.withDefault(`${fallback.perSecond},${fallback.burst}`),
    Config.mapEffect((text) => {
      const [perSecond, burst = perSecond] = text.split(",").map((x) => Number(x.trim()))
      return [perSecond, burst].every((n) => Number.isFinite(n) && n >= 0)
        ? Effect.succeed({ perSecond, burst: Math.max(1, burst) })
        : Effect.die(new Error(`${name}: expected '<per second>,<burst>' (e.g. 50,100) or 0, got '${text}'`))
    })
  )

const rates = (suffix: string, fallback: Readonly<Record<RateKind, Rate>>) =>
  Config.all({
    sends: rate(`QUICKIM_RATE_SENDS${suffix}`, fallback.sends),
    creates: rate(`QUICKIM_RATE_CREATES${suffix}`, fallback.creates),
    joins: rate(`QUICKIM_RATE_JOINS${suffix}`, fallback.joins),
    connects: rate(`QUICKIM_RATE_CONNECTS${suffix}`, fallback.connects),
    polls: rate(`QUICKIM_RATE_POLLS${suffix}`, fallback.polls),
    marks: rate(`QUICKIM_RATE_MARKS${suffix}`, fallback.marks)
  })

const duration = (name: string, fallback: Duration.Duration) => Config.Duration(name).pipe(Config.withDefault(fallback))

export const settingsConfig: Config.Config<AppSettings> = Config.all({
  port: Config.Port("PORT").pipe(Config.withDefault(8080)),
  host: Config.String("HOST").pipe(Config.withDefault("0.0.0.0")),
  databaseUrl: Config.option(Config.Redacted("DATABASE_URL")),
  dataDir: Config.String("QUICKIM_DATA_DIR").pipe(Config.withDefault("./data")),
  jwtSecret: Config.option(Config.Redacted("QUICKIM_JWT_SECRET")),
  jwtIssuer: Config.String("QUICKIM_JWT_ISSUER").pipe(Config.withDefault("quick-im")),
  tokenTtl: Config.Duration("QUICKIM_TOKEN_TTL").pipe(Config.withDefault(Duration.hours(24))),
  innerAllow: list("QUICKIM_INNER_ALLOW", "127.0.0.0/8,::1/128"),
  adminKey: Config.option(Config.Redacted("QUICKIM_ADMIN_KEY")),
  maxBodyBytes: Config.Int("QUICKIM_MAX_BODY_BYTES").pipe(Config.withDefault(64 * 1024)),
  dbPoolSize: Config.Int("QUICKIM_DB_POOL").pipe(Config.withDefault(10)),
  entityIdle: Config.Duration("QUICKIM_ENTITY_IDLE").pipe(Config.withDefault(Duration.minutes(5))),
  groupCommitMax: Config.Int("QUICKIM_GROUP_COMMIT_MAX").pipe(Config.withDefault(256)),
  commitsInFlight: Config.Int("QUICKIM_COMMITS_IN_FLIGHT").pipe(Config.withDefault(1)),
  commitMaxRows: Config.Int("QUICKIM_COMMIT_MAX_ROWS").pipe(Config.withDefault(1024)),
  commitMaxBytes: Config.Int("QUICKIM_COMMIT_MAX_BYTES").pipe(Config.withDefault(4 * 1024 * 1024)),
  accessLog: Config.Boolean("QUICKIM_ACCESS_LOG").pipe(Config.withDefault(false)),
  logFormat: Config.Literals(["auto", "json", "pretty"], "QUICKIM_LOG_FORMAT").pipe(
    Config.withDefault("auto" as const)
  ),
  logLevel: Config.LogLevel("QUICKIM_LOG_LEVEL").pipe(Config.withDefault("Info" as const)),
  otlpEndpoint: Config.String("QUICKIM_OTLP_ENDPOINT").pipe(
    Config.withDefault(""),
    Config.map((s) => s.trim() === "" ? undefined : s.trim().replace(/\/+$/, ""))
  ),
  otlpServiceName: Config.String("QUICKIM_OTLP_SERVICE_NAME").pipe(Config.withDefault("quick-im")),
  resumeWindow: Config.Duration("QUICKIM_RESUME_WINDOW").pipe(Config.withDefault(Duration.seconds(15))),
  connectionBuffer: Config.Int("QUICKIM_CONNECTION_BUFFER").pipe(Config.withDefault(1000)),
  connectionBufferBytes: Config.Int("QUICKIM_CONNECTION_BUFFER_BYTES").pipe(Config.withDefault(1024 * 1024)),
  replayPageBytes: Config.Int("QUICKIM_REPLAY_PAGE_BYTES").pipe(Config.withDefault(512 * 1024)),
  pollPendingBytes: Config.Int("QUICKIM_POLL_PENDING_BYTES").pipe(Config.withDefault(1024 * 1024)),
  deliveryBacklogBytes: Config.Int("QUICKIM_DELIVERY_BACKLOG_BYTES").pipe(Config.withDefault(4 * 1024 * 1024)),
  mailboxIdle: Config.Duration("QUICKIM_MAILBOX_IDLE").pipe(Config.withDefault(Duration.minutes(2))),
  pollWait: Config.Duration("QUICKIM_POLL_WAIT").pipe(Config.withDefault(Duration.seconds(30))),
  sseHeartbeat: Config.Duration("QUICKIM_SSE_HEARTBEAT").pipe(Config.withDefault(Duration.seconds(15))),
  wsPing: Config.Duration("QUICKIM_WS_PING").pipe(Config.withDefault(Duration.seconds(20))),
  wsMaxBufferedBytes: Config.Int("QUICKIM_WS_MAX_BUFFERED_BYTES").pipe(Config.withDefault(4 * 1024 * 1024)),
  runnerPort: Config.option(Config.Port("QUICKIM_RUNNER_PORT")),
  runnerHost: Config.String("QUICKIM_RUNNER_HOST").pipe(Config.withDefault("127.0.0.1")),
  runnerListenHost: Config.option(Config.String("QUICKIM_RUNNER_LISTEN_HOST")),
  shardsPerGroup: Config.Int("QUICKIM_SHARDS_PER_GROUP").pipe(Config.withDefault(300)),
  shardLockExpiration: Config.Duration("QUICKIM_SHARD_LOCK_EXPIRATION").pipe(
    Config.withDefault(Duration.seconds(5))
  ),
  shardLockRefresh: Config.Duration("QUICKIM_SHARD_LOCK_REFRESH").pipe(Config.withDefault(Duration.millis(1500))),
  assignmentsRefresh: Config.Duration("QUICKIM_ASSIGNMENTS_REFRESH").pipe(
    Config.withDefault(DEFAULT_ASSIGNMENTS_REFRESH)
  ),
  runnerHealthCheck: Config.Duration("QUICKIM_RUNNER_HEALTH_CHECK").pipe(Config.withDefault(Duration.seconds(2))),
  publicUrl: Config.String("QUICKIM_PUBLIC_URL").pipe(Config.withDefault(undefined)),
  clusterRetention: Config.Duration("QUICKIM_CLUSTER_RETENTION").pipe(Config.withDefault(Duration.hours(1))),
  publicJoin: Config.Literals(["open", "invite"], "QUICKIM_PUBLIC_JOIN").pipe(Config.withDefault("open" as const)),
  innerPort: Config.Port("QUICKIM_INNER_PORT").pipe(Config.withDefault(undefined)),
  innerHost: Config.String("QUICKIM_INNER_HOST").pipe(Config.withDefault("127.0.0.1")),
  consoleSignIn: Config.Boolean("QUICKIM_CONSOLE_SIGN_IN").pipe(Config.withDefault(false)),
  rateLimits: Config.all({
    perSession: rates("", defaultRateLimits.perSession),
    perAddress: rates("_PER_ADDRESS", defaultRateLimits.perAddress),
    addressExempt: list("QUICKIM_RATE_EXEMPT", defaultRateLimits.addressExempt.join(",")),
    maxKeys: Config.Int("QUICKIM_RATE_MAX_KEYS").pipe(Config.withDefault(defaultRateLimits.maxKeys))
  }),
  maxConnectionsPerSession: Config.Int("QUICKIM_MAX_CONNECTIONS_PER_SESSION").pipe(
    Config.withDefault(DEFAULT_MAX_CONNECTIONS_PER_SESSION)
  ),
  maxHistoryBytes: Config.Int("QUICKIM_MAX_HISTORY_BYTES").pipe(Config.withDefault(DEFAULT_MAX_HISTORY_BYTES)),
  maxContentBytes: Config.Int("QUICKIM_MAX_CONTENT_BYTES").pipe(Config.withDefault(DEFAULT_MAX_CONTENT_BYTES)),
  httpTimeouts: Config.all({
    headers: duration("QUICKIM_HTTP_HEADERS_TIMEOUT", defaultHttpTimeouts.headers),
    request: duration("QUICKIM_HTTP_REQUEST_TIMEOUT", defaultHttpTimeouts.request),
    keepAlive: duration("QUICKIM_HTTP_KEEP_ALIVE_TIMEOUT", defaultHttpTimeouts.keepAlive),
    idle: duration("QUICKIM_HTTP_IDLE_TIMEOUT", defaultHttpTimeouts.idle)
  })
})

/** A node cannot start: a setting or its environment is unusable (the message says what to change). */
export class StartupError extends Schema.TaggedError<StartupError>()("StartupError", { message: Schema.String }) {}

export class AppConfig extends Context.Service<AppConfig, AppSettings>()("quick-im/Config") {
  static readonly layer = Layer.effect(AppConfig, settingsConfig)
  static readonly make = (settings: AppSettings) => Layer.succeed(AppConfig, settings)
}

/** Empty or whitespace-only values count as unset, so `DATABASE_URL=` means "embedded". */
export const isConfigured = (value: Option.Option<Redacted.Redacted>) =>
  Option.isSome(value) && Redacted.value(value.value).trim().length > 0
