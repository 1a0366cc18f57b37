/**
 * Read state is exact by construction: random interleavings of sends, mark_read, joins, leaves
 * and kicks by several sessions on several platforms, against a real server on PostgreSQL, compared
 * after every step with a plain model that counts unread messages one by one. Unread counts, read
 * positions, inbox order and member lists must always equal the model's.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import fc from "fast-check"
import { sleep } from "./support/push.ts"
import { expectOk, settingsFor, startServer, type TestServer } from "./support/server.ts"

const ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
const SESSIONS = 4
const CONVERSATIONS = 3

type Command =
  | { readonly kind: "send"; readonly s: number; readonly c: number; readonly platform: number }
  | { readonly kind: "mark"; readonly s: number; readonly c: number; readonly at: number; readonly platform: number }
  | { readonly kind: "join" | "innerJoin" | "leave" | "kick"; readonly s: number; readonly c: number }

const command: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("send" as const),
      s: fc.nat(SESSIONS - 1),
      c: fc.nat(CONVERSATIONS - 1),
      platform: fc.integer({ min: 1, max: 2 })
    })
  },
  // `at`: which message to mark up to, counted from the newest (0), or past the newest (-1), or between two.
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant("mark" as const),
      s: fc.nat(SESSIONS - 1),
      c: fc.nat(CONVERSATIONS - 1),
      at: fc.integer({ min: -1, max: 6 }),
      platform: fc.integer({ min: 1, max: 2 })
    })
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constantFrom("join" as const, "innerJoin" as const, "leave" as const, "kick" as const),
      s: fc.nat(SESSIONS - 1),
      c: fc.nat(CONVERSATIONS - 1)
    })
  }
)

interface Message {
  readonly id: string
  readonly seq: number
  readonly from: number
}

interface Membership {
  readonly joined: number
  readSeq: number
  readMsgId: string | null
}

interface ConversationModel {
  readonly id: string
  readonly messages: Array<Message>
  /** Session → its membership; insertion order is not relied on (join order is by `joined`). */
  readonly members: Map<number, Membership>
  readonly banned: Set<number>
  lastActivity: number | undefined
}

describe("read state against a model", () => {
  let server: TestServer
  beforeAll(async () => {
    server = await startServer(settingsFor("postgres"))
  })
  afterAll(() => server?.stop())

  const ok = expectOk

  it("unread, read positions, inbox order and members equal the model's after every step", async () => {
    let run = 0
    await fc.assert(
      fc.asyncProperty(fc.array(command, { minLength: 5, maxLength: 30 }), async (commands) => {
        run++
        const prefix = `m${run}x${crypto.randomUUID().slice(0, 6)}`
        const sessions = Array.from({ length: SESSIONS }, (_, i) => `${prefix}s${i}`)
        const tokens = await Promise.all(
          sessions.map(async (s) => [await server.token(s, 1), await server.token(s, 2)] as const)
        )
        let clock = 0
        const convs: Array<ConversationModel> = []
        for (let c = 0; c < CONVERSATIONS; c++) {
          // Conversation c starts with sessions 0..c as members.
          const members = sessions.slice(0, c + 1)
          const id = ok(await server.post("/inner/create_conversation", { sessions: members })).ConversationId
          clock++
          convs.push({
            id,
            messages: [],
            members: new Map(members.map((_, i) => [i, { joined: clock, readSeq: 0, readMsgId: null }])),
            banned: new Set(),
            lastActivity: undefined
          })
          await sleep(2)
        }

        const check = async () => {
          for (let s = 0; s < SESSIONS; s++) {
            const mine = convs.filter((c) => c.members.has(s))
            const expected = mine.map((c) => {
              const m = c.members.get(s)!
              return {
                ConversationId: c.id,
                Unread: c.messages.filter((x) => x.seq > m.readSeq && x.from !== s).length,
                ReadMsgId: m.readMsgId,
                LastMsgId: c.messages.at(-1)?.id ?? null
              }
            })
            const got = ok(await server.post("/get_unread", {}, tokens[s][0]))
            const byId = (a: { ConversationId: string }, b: { ConversationId: string }) =>
              a.ConversationId < b.ConversationId ? -1 : 1
            assert.deepStrictEqual([...got.Conversations].sort(byId), [...expected].sort(byId), `unread of s${s}`)
            assert.strictEqual(got.Total, expected.reduce((n, e) => n + e.Unread, 0))
            // The inbox: last message time, else join time, newest first.
            const activity = (c: ConversationModel) => c.lastActivity ?? c.members.get(s)!.joined
            const order = [...mine].sort((a, b) => activity(b) - activity(a)).map((c) => c.id)
            const inbox = ok(await server.post("/get_inbox", { limit: 200 }, tokens[s][1]))
            assert.deepStrictEqual(inbox.Conversations.map((e: any) => e.ConversationId), order, `inbox of s${s}`)
            for (const e of inbox.Conversations) {
              const x = expected.find((u) => u.ConversationId === e.ConversationId)!
              assert.strictEqual(e.Unread, x.Unread)
              assert.strictEqual(e.ReadMsgId, x.ReadMsgId)
              assert.strictEqual(e.LastMsg?.MsgId ?? null, x.LastMsgId)
            }
          }
          for (const c of convs) {
            const [reader] = [...c.members.keys()]
            if (reader === undefined) continue
            const members = [...c.members.entries()].sort((a, b) =>
              a[1].joined - b[1].joined || (sessions[a[0]] < sessions[b[0]] ? -1 : 1)
            )
            const got = ok(await server.post("/get_conversation_members", { conversation_id: c.id }, tokens[reader][0]))
            assert.deepStrictEqual(
              got.Members.map((m: any) => [m.Session, m.ReadMsgId]),
              members.map(([s, m]) => [sessions[s], m.readMsgId]),
              `members of ${c.id}`
            )
          }
        }

        for (const cmd of commands) {
          const c = convs[cmd.c]
          const member = c.members.get(cmd.s)
          // Distinct milliseconds: the server orders by times, the model by its step clock.
          await sleep(2)
          clock++
          switch (cmd.kind) {
            case "send": {
              const reply = await server.post(
                "/send_msg",
                { conversation_id: c.id, content: `${clock}` },
                tokens[cmd.s][cmd.platform - 1]
              )
              if (member === undefined) {
                assert.strictEqual(reply.status, 403)
                break
              }
              const id = ok(reply).MsgID
              const seq = c.messages.length + 1
              c.messages.push({ id, seq, from: cmd.s })
              c.lastActivity = clock
              // Sending moves the sender's position to its message.
              member.readSeq = seq
              member.readMsgId = id
              break
            }
            case "mark": {
              const n = c.messages.length
              const newest = c.messages.at(-1)
              let anchor: string
              if (newest === undefined) anchor = "22222-2222-2222-222"
              else if (cmd.at === -1) anchor = "ZZZZZ-ZZZZ-ZZZZ-ZZZ"
              else {
                const target = c.messages[Math.max(0, n - 1 - Math.floor(cmd.at / 2))]
                // Odd: an id just above the target (between it and the next, or past the newest).
                const next = ALPHABET[ALPHABET.indexOf(target.id.at(-1)!) + 1]
                anchor = cmd.at % 2 === 1 && next !== undefined ? target.id.slice(0, -1) + next : target.id
              }
              const reply = await server.post(
                "/mark_read",
                { conversation_id: c.id, msg_id: anchor },
                tokens[cmd.s][cmd.platform - 1]
              )
              if (member === undefined) {
                assert.strictEqual(reply.status, 403)
                break
              }
              const target = [...c.messages].reverse().find((x) => x.id <= anchor)
              if (target !== undefined && target.seq > member.readSeq) {
                member.readSeq = target.seq
                member.readMsgId = target.id
              }
              const unread = c.messages.filter((x) => x.seq > member.readSeq && x.from !== cmd.s).length
              assert.deepStrictEqual(ok(reply), {
                ReadMsgId: member.readMsgId,
                ReadSeq: member.readSeq,
                Unread: unread
              })
              break
            }
            case "join":
            case "innerJoin": {
              const reply = cmd.kind === "join"
                ? await server.post("/join_conversation", { conversation_id: c.id }, tokens[cmd.s][0])
                : await server.post("/inner/join_conversation", { conversation_id: c.id, sessions: [sessions[cmd.s]] })
              if (cmd.kind === "join" && member === undefined && c.banned.has(cmd.s)) {
                assert.strictEqual(reply.status, 403)
                break
              }
              ok(reply)
              if (cmd.kind === "innerJoin") c.banned.delete(cmd.s)
              if (member === undefined) {
                // Joining sets the position to the last message: old history never counts.
                const last = c.messages.at(-1)
                c.members.set(cmd.s, { joined: clock, readSeq: last?.seq ?? 0, readMsgId: last?.id ?? null })
              }
              break
            }
            case "leave":
              ok(await server.post("/leave_conversation", { conversation_id: c.id }, tokens[cmd.s][0]))
              c.members.delete(cmd.s)
              break
            case "kick":
              ok(
                await server.post("/inner/kickout_conversation", { conversation_id: c.id, sessions: [sessions[cmd.s]] })
              )
              c.members.delete(cmd.s)
              c.banned.add(cmd.s)
              break
          }
          await check()
        }
      }),
      { numRuns: Number(process.env.QUICKIM_MODEL_RUNS ?? 25), endOnFailure: true }
    )
  }, 600_000)
})
