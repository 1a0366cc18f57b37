/**
 * Applies the numbered `.sql` files of `schema/` in order, each once, inside a transaction
 * holding an advisory lock so nodes starting together do not race.
 */
import * as Effect from "effect/Effect"
import * as SqlClient from "effect/sql/SqlClient"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

export const schemaDir = fileURLToPath(new URL("../../schema", import.meta.url))

interface Migration {
  readonly version: number
  readonly name: string
  readonly statements: ReadonlyArray<string>
}

/** Statements end with `;` at the end of a line; `--` comments are dropped. */
const splitStatements = (text: string) =>
  text
    .split("\n")
    .filter((line) => !line.trim().startsWith("--"))
    .join("\n")
    .split(/;\s*$/m)
    .map((s) => s.trim())
    .filter((s) => s.length > 0)

export const readMigrations = (dir: string = schemaDir): ReadonlyArray<Migration> =>
  Fs.readdirSync(dir)
    .filter((f) => /^\d+_.*\.sql$/.test(f))
    .sort()
    .map((file) => ({
      version: Number(file.split("_")[0]),
      name: file,
      statements: splitStatements(Fs.readFileSync(Path.join(dir, file), "utf8"))
    }))

/** Runs pending migrations; returns the names applied now. */
export const migrate = Effect.fn("Migrations.migrate")(function* (dir?: string) {
  const sql = yield* SqlClient.SqlClient
  const migrations = readMigrations(dir)
  return yield* sql.withTransaction(Effect.gen(function* () {
    // Any constant key works: it only serialises concurrent migrators.
    yield* sql`SELECT pg_advisory_xact_lock(7261839)`
    yield* sql`CREATE TABLE IF NOT EXISTS quickim_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`
    const done = new Set(
      (yield* sql<{ version: number }>`SELECT version FROM quickim_migrations`).map((r) => Number(r.version))
    )
    const applied: Array<string> = []
    for (const m of migrations) {
      if (done.has(m.version)) continue
      for (const statement of m.statements) yield* sql.unsafe(statement)
      yield* sql`INSERT INTO quickim_migrations (version, name) VALUES (${m.version}, ${m.name})`
      applied.push(m.name)
    }
    return applied
  }))
})
