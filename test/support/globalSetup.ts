/**
 * One uniquely named PostgreSQL database per test run, dropped afterwards. Its URL reaches
 * the test files through QUICKIM_TEST_DATABASE_URL.
 */
import { execFileSync } from "node:child_process"

const admin = process.env.QUICKIM_TEST_PG_ADMIN ?? "postgresql://postgres@127.0.0.1:5432/postgres"

const psql = (sql: string) => execFileSync("psql", [admin, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], { stdio: "pipe" })

export default function setup() {
  const name = `quickim_test_${process.pid}_${Date.now().toString(36)}`
  psql(`CREATE DATABASE ${name}`)
  process.env.QUICKIM_TEST_DATABASE_URL = admin.replace(/\/[^/]*$/, `/${name}`)
  return () => {
    psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${name}' AND pid <> pg_backend_pid()`)
    psql(`DROP DATABASE IF EXISTS ${name}`)
  }
}
