/**
 * The SQL client of a node: PostgreSQL when `DATABASE_URL` is set, else the embedded PostgreSQL
 * server in `QUICKIM_DATA_DIR` (EmbeddedPostgres.ts): one driver, the same SQL, in every mode.
 * Migrations run before the layer is handed out.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as SqlClient from "effect/sql/SqlClient"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { AppConfig, isConfigured, StartupError } from "../Config.ts"
import { embeddedPostgres, processAlive } from "./EmbeddedPostgres.ts"
import { migrate } from "./Migrations.ts"

/** Holds `<dir>/quick-im.lock` for the layer's lifetime; a live holder makes start-up fail. */
export const dataDirLock = (dir: string) =>
  Effect.acquireRelease(
    Effect.gen(function* () {
      const file = Path.join(dir, "quick-im.lock")
      yield* Effect.sync(() => Fs.mkdirSync(dir, { recursive: true }))
      for (let attempt = 0; attempt < 2; attempt++) {
        try {
          const fd = Fs.openSync(file, "wx")
          Fs.writeSync(fd, String(process.pid))
          Fs.closeSync(fd)
          return file
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e
          const holder = Number(Fs.readFileSync(file, "utf8").trim())
          if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && processAlive(holder)) {
            return yield* new StartupError({
              message: `data directory ${dir} is in use by process ${holder} (lock file ${file}); `
                + `stop it or set QUICKIM_DATA_DIR to another directory`
            })
          }
          // The holder died without cleaning up: the lock is stale.
          Fs.rmSync(file, { force: true })
        }
      }
      return yield* new StartupError({ message: `could not take the lock file in ${dir}` })
    }),
    (file) => Effect.sync(() => Fs.rmSync(file, { force: true }))
  )

/** At least two connections: one stays reserved, listening for token revocations (Revocations). */
const postgres = (url: Option.Option<Redacted.Redacted>, poolSize: number) =>
  PgClient.layer({
    url: Option.getOrUndefined(url),
    maxConnections: Math.max(2, poolSize),
    applicationName: "quick-im"
  })

/**
 * A PostgreSQL server of the node's own in the data directory. A single node holds the directory
 * alone (a second one would be a second writer of every conversation); the nodes of a cluster
 * (QUICKIM_RUNNER_PORT) on one machine may share it.
 */
const embeddedServer = (dataDir: string, poolSize: number, exclusive: boolean) =>
  Layer.unwrap(Effect.gen(function* () {
    if (exclusive) yield* dataDirLock(dataDir)
    const url = yield* embeddedPostgres(dataDir)
    return postgres(Option.some(Redacted.make(url)), poolSize)
  }))

/** SqlClient for this node's configuration, migrated. */
export const DatabaseLive: Layer.Layer<SqlClient.SqlClient, unknown, AppConfig> = Layer.unwrap(
  Effect.gen(function* () {
    const config = yield* AppConfig
    const client = isConfigured(config.databaseUrl)
      ? postgres(config.databaseUrl, config.dbPoolSize)
      : embeddedServer(config.dataDir, config.dbPoolSize, Option.isNone(config.runnerPort))
    const migrated = Layer.effectDiscard(
      Effect.gen(function* () {
        const applied = yield* migrate()
        if (applied.length > 0) yield* Effect.logInfo(`applied migrations: ${applied.join(", ")}`)
      })
    )
    return Layer.provideMerge(migrated, client)
  })
)
