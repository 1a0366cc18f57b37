/**
 * One uniquely named PostgreSQL database per test run, dropped afterwards. Its URL reaches
 * the test files through QUICKIM_TEST_DATABASE_URL. Also a temporary directory of the run's own
 * (QUICKIM_TEST_TMP, see tempDir): an embedded PostgreSQL server a test left running there (a node
 * that never stopped) is stopped at the end, so no server outlives the run.
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"

const admin = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"

const psql = (sql: string) => execFileSync("psql", [admin, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], { stdio: "pipe" })

export default function setup() {
  const name = `quickim_test_${process.pid}_${Date.now().toString(36)}`
  psql(`CREATE DATABASE ${name}`)
  process.env.QUICKIM_TEST_DATABASE_URL = admin.replace(/\/[^/]*$/, `/${name}`)
  const tmp = Fs.mkdtempSync(Path.join(Os.tmpdir(), "quickim-run-"))
  Fs.chmodSync(tmp, 0o755) // as root, the embedded servers run as the postgres user
  process.env.QUICKIM_TEST_TMP = tmp
  return () => {
    for (const dir of Fs.readdirSync(tmp)) {
      try {
        const pid = Number(Fs.readFileSync(Path.join(tmp, dir, "postgres", "postmaster.pid"), "utf8").split("\n")[0])
        process.kill(pid, "SIGINT") // fast shutdown
      } catch {
        // no server there, or it has stopped
      }
    }
    Fs.rmSync(tmp, { recursive: true, force: true })
    psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${name}' AND pid <> pg_backend_pid()`)
    psql(`DROP DATABASE IF EXISTS ${name}`)
  }
}
