/**
 * Starts a real quick-im node in this process (real HTTP socket on a free port, real database)
 * and gives a small JSON client for it.
 */
import { Context, Duration, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import { HttpServer } from "effect/http"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { appWith } from "../../src/App.ts"
import {
  type AppSettings,
  DEFAULT_MAX_CONNECTIONS_PER_SESSION,
  DEFAULT_MAX_CONTENT_BYTES,
  DEFAULT_MAX_HISTORY_BYTES,
  defaultHttpTimeouts,
  defaultRateLimits
} from "../../src/Config.ts"

export type DbKind = "embedded" | "postgres"

export const testDatabaseUrl = () => {
  const url = process.env.QUICKIM_TEST_DATABASE_URL
  if (!url) throw new Error("QUICKIM_TEST_DATABASE_URL is not set (test/support/globalSetup.ts sets it)")
  return url
}

/** A new directory under this run's own (globalSetup), which stops any embedded PostgreSQL left there. */
export const tempDir = (prefix = "quickim-") =>
  Fs.mkdtempSync(Path.join(process.env.QUICKIM_TEST_TMP ?? Os.tmpdir(), prefix))

const noRate = { perSecond: 0, burst: 1 }
const noRates = { sends: noRate, creates: noRate, joins: noRate, connects: noRate, polls: noRate, marks: noRate }

export const settingsFor = (db: DbKind, overrides: Partial<AppSettings> = {}): AppSettings => ({
  port: 0,
  host: "127.0.0.1",
  databaseUrl: db === "postgres" ? Option.some(Redacted.make(testDatabaseUrl())) : Option.none(),
  dataDir: overrides.dataDir ?? tempDir(),
  jwtSecret: Option.some(Redacted.make("test-secret-test-secret-test-secret")),
  jwtIssuer: "quick-im",
  tokenTtl: Duration.hours(24),
  innerAllow: ["127.0.0.0/8", "::1/128"],
  adminKey: Option.none(),
  maxBodyBytes: 64 * 1024,
  dbPoolSize: 8,
  entityIdle: Duration.minutes(5),
  groupCommitMax: 256,
  commitsInFlight: 1,
  commitMaxRows: 1024,
  commitMaxBytes: 4 * 1024 * 1024,
  accessLog: false,
  resumeWindow: Duration.seconds(15),
  connectionBuffer: 1000,
  connectionBufferBytes: 1024 * 1024,
  replayPageBytes: 512 * 1024,
  pollPendingBytes: 1024 * 1024,
  mailboxIdle: Duration.minutes(2),
  pollWait: Duration.seconds(30),
  sseHeartbeat: Duration.seconds(15),
  wsPing: Duration.seconds(20),
  wsMaxBufferedBytes: 4 * 1024 * 1024,
  runnerPort: Option.none(),
  runnerHost: "127.0.0.1",
  runnerListenHost: Option.none(),
  shardsPerGroup: 300,
  shardLockExpiration: Duration.seconds(5),
  shardLockRefresh: Duration.seconds(1),
  runnerHealthCheck: Duration.seconds(2),
  clusterRetention: Duration.hours(1),
  publicUrl: undefined,
  publicJoin: "open",
  innerPort: undefined,
  innerHost: "127.0.0.1",
  consoleSignIn: false,
  // Tests send in bursts from one session and one address: rate limits are off unless a test sets them.
  rateLimits: { ...defaultRateLimits, perSession: noRates, perAddress: noRates },
  maxConnectionsPerSession: DEFAULT_MAX_CONNECTIONS_PER_SESSION,
  maxHistoryBytes: DEFAULT_MAX_HISTORY_BYTES,
  maxContentBytes: DEFAULT_MAX_CONTENT_BYTES,
  httpTimeouts: defaultHttpTimeouts,
  ...overrides
})

export interface Reply {
  readonly status: number
  readonly body: any
}

/** The `data` of a success envelope; fails the test on any other reply. */
export const expectOk = (reply: Reply) => {
  if (reply.status !== 200 || reply.body?.code !== 0 || "error" in (reply.body ?? {})) {
    throw new Error(`expected a success envelope, got ${reply.status} ${JSON.stringify(reply.body)}`)
  }
  return reply.body.data
}

/** Fails the test unless `reply` is the error envelope with this status and code (an error message, no data). */
export const expectFailed = (reply: Reply, status: number, code: number) => {
  const body = reply.body ?? {}
  if (
    reply.status !== status || body.code !== code || typeof body.error !== "string" || body.error.length === 0
    || "data" in body
  ) {
    throw new Error(`expected ${status} / ${code}, got ${reply.status} ${JSON.stringify(reply.body)}`)
  }
}

export interface TestServer {
  readonly url: string
  readonly settings: AppSettings
  readonly post: (path: string, body: unknown, token?: string, headers?: Record<string, string>) => Promise<Reply>
  readonly raw: (path: string, init: RequestInit) => Promise<Reply>
  readonly token: (session: string, platform?: number) => Promise<string>
  /** The node's services, for tests that act inside it. */
  readonly context: Context.Context<any>
  readonly stop: () => Promise<void>
}

export const clientFor = (url: string) => {
  const raw = async (path: string, init: RequestInit): Promise<Reply> => {
    const res = await fetch(url + path, init)
    const text = await res.text()
    let body: unknown = text
    try {
      body = text.length > 0 ? JSON.parse(text) : undefined
    } catch {
      // not JSON: keep the text so the assertion shows it
    }
    return { status: res.status, body }
  }
  const post = (path: string, body: unknown, token?: string, headers: Record<string, string> = {}) =>
    raw(path, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...headers
      },
      body: typeof body === "string" ? body : JSON.stringify(body)
    })
  const token = async (session: string, platform = 1) => {
    const r = await post("/inner/get_token", { session, platform })
    if (r.body?.code !== 0) throw new Error(`get_token failed: ${JSON.stringify(r.body)}`)
    return r.body.data as string
  }
  return { raw, post, token }
}

/** The value of one series of the node's /metrics (0 when it is not there yet). */
export const metricValue = async (server: { readonly url: string }, name: string, labels: string) => {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels))
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(" ") + 1))
}

export const startServer = async (settings: AppSettings): Promise<TestServer> => {
  const scope = Effect.runSync(Scope.make())
  const context = await Effect.runPromise(Layer.buildWithScope(appWith(settings), scope))
  const address = Context.get(context, HttpServer.HttpServer).address
  if (!("port" in address)) throw new Error("expected a TCP address")
  const url = `http://127.0.0.1:${address.port}`
  return {
    url,
    settings,
    context,
    ...clientFor(url),
    stop: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}
