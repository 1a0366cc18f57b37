/**
 * One uniquely named PostgreSQL database per test run, dropped afterwards. Its URL reaches
 * the test files through QUICKIM_TEST_DATABASE_URL.
 *
 * The server is the one QUICKIM_TEST_PG_ADMIN names, else the machine's on 127.0.0.1:5432; when
 * neither is there (or QUICKIM_TEST_FORCE_OWN_PG=1), the run starts a server of its own
 * (test/support/postgres.ts) and sets QUICKIM_TEST_PG_ADMIN to it for every test file.
 */
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
  return async () => {
    try {
      await sql(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    } finally {
      await own?.dispose()
    }
  }
}
