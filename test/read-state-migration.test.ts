/**
 * The read-state migration (schema/0008_read_state.sql) on a database holding conversations from
 * before it: existing members start with everything read (no flood of old unread messages), and a
 * message sent afterwards counts again.
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { schemaDir } from "../src/storage/Migrations.ts"
import { databaseUrlOn, pgAdminUrl, sql } from "./support/postgres.ts"

const name = `quickim_mig_${process.pid}_${Date.now().toString(36)}`
const url = databaseUrlOn(pgAdminUrl(), name)
const file = (prefix: string) =>
  Fs.readFileSync(Path.join(schemaDir, Fs.readdirSync(schemaDir).find((f) => f.startsWith(prefix))!), "utf8")

describe("read-state migration", () => {
  afterAll(() => sql(pgAdminUrl(), `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`))

  it("gives existing members a read position at the last message", async () => {
    await sql(pgAdminUrl(), `CREATE DATABASE ${name}`)
    for (const n of ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]) await sql(url, file(n))
    await sql(
      url,
      `INSERT INTO conversations (id, conversation_type, last_msg_id, last_send_time, last_send_session, last_seq)
        VALUES ('busy', 0, 'M3', '2026-01-01T00:00:03.000+00:00', 'a', 3), ('empty', 0, NULL, NULL, NULL, 0);
      INSERT INTO conversation_members (conversation_id, session_id, joined_seq)
        VALUES ('busy', 'a', 0), ('busy', 'b', 0), ('busy', 'late', 2), ('empty', 'a', 0);
      INSERT INTO messages (conversation_id, msg_id, seq, from_session, send_time, status, type, content)
        VALUES ('busy', 'M1', 1, 'a', '2026-01-01T00:00:01.000+00:00', 0, 0, 'x'),
               ('busy', 'M2', 2, 'b', '2026-01-01T00:00:02.000+00:00', 0, 0, 'y'),
               ('busy', 'M3', 3, 'a', '2026-01-01T00:00:03.000+00:00', 0, 0, 'z')`
    )
    await sql(url, file("0008"))
    const unread = `SELECT m.conversation_id, m.session_id, c.last_seq - m.read_seq, coalesce(m.read_msg_id, '-')
      FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id
      ORDER BY m.conversation_id, m.session_id`
    assert.strictEqual(await sql(url, unread), "busy|a|0|M3\nbusy|b|0|M3\nbusy|late|0|M3\nempty|a|0|-")
    // The inbox sorts old conversations by their last message's time.
    assert.strictEqual(
      await sql(url, `SELECT id, coalesce(last_msg_at::text, '-') FROM conversations ORDER BY id`),
      await sql(url, `SELECT 'busy', '2026-01-01T00:00:03Z'::timestamptz::text UNION ALL SELECT 'empty', '-'`)
    )
    // A message stored after the migration counts as unread for the others.
    await sql(url, `UPDATE conversations SET last_seq = 4, last_msg_id = 'M4' WHERE id = 'busy'`)
    assert.strictEqual(
      await sql(url, `${unread.replace("ORDER BY", "WHERE m.conversation_id = 'busy' ORDER BY")}`),
      "busy|a|1|M3\nbusy|b|1|M3\nbusy|late|1|M3"
    )
  })
})
