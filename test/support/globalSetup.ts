/**
 * One uniquely named PostgreSQL database per test run, dropped afterwards. Its URL reaches
 * the test files through QUICKIM_TEST_DATABASE_URL.
 *
 * The server is the one QUICKIM_TEST_PG_ADMIN names, else the machine's on 127.0.0.1:5432; when
 * neither is there (or QUICKIM_TEST_FORCE_OWN_PG=1), the run starts a server of its own
 * (test/support/postgres.ts) and sets QUICKIM_TEST_PG_ADMIN to it for every test file.
 *
 * Also a temporary directory of the run's own (QUICKIM_TEST_TMP, see tempDir): an embedded
 * PostgreSQL server a test left running there (a node that never stopped) is stopped at the end,
 * so no server outlives the run.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { answers } from "./ports.ts"
import { databaseUrlOn, type OwnPostgres, pgAdminUrl, sql, startPostgres } from "./postgres.ts"

export default async function setup() {
  let own: OwnPostgres | undefined
  const force = process.env.QUICKIM_TEST_FORCE_OWN_PG === "1"
  if (force || (process.env.QUICKIM_TEST_PG_ADMIN === undefined && !(await answers(5432)))) {
    own = await startPostgres()
    process.env.QUICKIM_TEST_PG_ADMIN = own.adminUrl
  }
  const admin = pgAdminUrl()
  const name = `quickim_test_${process.pid}_${Date.now().toString(36)}`
  await sql(admin, `CREATE DATABASE ${name}`)
  process.env.QUICKIM_TEST_DATABASE_URL = databaseUrlOn(admin, name)
  const tmp = Fs.mkdtempSync(Path.join(Os.tmpdir(), "quickim-run-"))
  Fs.chmodSync(tmp, 0o755) // as root, the embedded servers run as the postgres user
  process.env.QUICKIM_TEST_TMP = tmp
  return async () => {
    for (const dir of Fs.readdirSync(tmp)) {
      try {
        const pid = Number(Fs.readFileSync(Path.join(tmp, dir, "postgres", "postmaster.pid"), "utf8").split("\n")[0])
        process.kill(pid, "SIGINT") // fast shutdown
      } catch {
        // no server there, or it has stopped
      }
    }
    Fs.rmSync(tmp, { recursive: true, force: true })
    try {
      await sql(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    } finally {
      await own?.dispose()
    }
  }
}
