/**
 * What a chaos run is judged by, per protocol: no acknowledged message missing at a member's
 * client; none stored twice (a second MsgId for one send, which no MsgId dedupe can hide); each
 * conversation in acknowledgement order at every client once repeats of a MsgId are dropped (README,
 * "Resume": clients deduplicate by MsgId, so raw repeats are counted but allowed); and the history
 * holding every acknowledged MsgId exactly once.
 */
import type { ChaosClient } from "./chaosClient.ts"
import type { Protocol } from "./push.ts"

export interface ProtocolFindings {
  readonly clients: number
  readonly churned: number
  readonly dropped: number
  /** Messages received, repeats included. */
  readonly received: number
  /** Receipts of a MsgId the client already had (allowed: clients dedupe). */
  readonly repeats: number
  /** Acknowledged messages of a client's conversations it never received. */
  readonly lost: number
  /** Messages of a client's conversations that no send was acknowledged with: a send stored twice. */
  readonly duplicates: number
  /** (client, conversation) pairs whose messages, deduplicated, are not in acknowledgement order. */
  readonly outOfOrder: number
  /** Messages of conversations the client's session is not a member of. */
  readonly foreign: number
}

export interface ChaosFindings {
  readonly byProtocol: Record<Protocol, ProtocolFindings>
  readonly history: {
    /** Acknowledged MsgIds not in history. */
    readonly missing: number
    /** Acknowledged MsgIds stored more than once, and client_msg_ids stored under more than one MsgId. */
    readonly repeated: number
    /** Stored messages no send was acknowledged with. */
    readonly unacknowledged: number
  }
  /** Clients (by session index) that lost, duplicated, reordered or got a foreign message. */
  readonly failing: ReadonlyArray<number>
  /** The first few of each kind of failure, for the report. */
  readonly examples: ReadonlyArray<string>
}

export interface CheckInput {
  readonly conversations: ReadonlyArray<string>
  readonly members: ReadonlyArray<ReadonlyArray<number>>
  /** Per conversation id, its acknowledged MsgIds in acknowledgement order. */
  readonly acked: ReadonlyMap<string, ReadonlyArray<string>>
  readonly clients: ReadonlyArray<ChaosClient>
  /** Rows of `messages`: conversation id, MsgId, client_msg_id. */
  readonly history: ReadonlyArray<readonly [string, string, string]>
}

export const check = (input: CheckInput): ChaosFindings => {
  const examples: Array<string> = []
  const example = (line: string) => {
    if (examples.length < 40) examples.push(line)
  }
  /** Each acknowledged MsgId's conversation and position in it. */
  const position = new Map<string, { readonly conversation: string; readonly index: number }>()
  for (const [conversation, ids] of input.acked) ids.forEach((id, index) => position.set(id, { conversation, index }))

  const empty = (): { -readonly [K in keyof ProtocolFindings]: number } => ({
    clients: 0,
    churned: 0,
    dropped: 0,
    received: 0,
    repeats: 0,
    lost: 0,
    duplicates: 0,
    outOfOrder: 0,
    foreign: 0
  })
  const byProtocol = { ws: empty(), sse: empty(), poll: empty() }
  const failing: Array<number> = []
  input.clients.forEach((client, session) => {
    const f = byProtocol[client.protocol]
    const name = `${client.protocol} client ${session}`
    f.clients++
    f.churned += client.churned()
    f.dropped += client.dropped()
    f.received += client.ids.length
    const before = f.lost + f.duplicates + f.foreign
    const mine = new Set(input.conversations.filter((_, c) => input.members[c].includes(session)))
    const seen = new Set<string>()
    const last = new Map<string, number>()
    const disordered = new Set<string>()
    client.ids.forEach((id, k) => {
      if (seen.has(id)) return void f.repeats++
      seen.add(id)
      const conversation = client.conversations[k]
      if (!mine.has(conversation)) {
        f.foreign++
        return example(`${name} received ${id} of ${conversation}, not one of its conversations`)
      }
      const at = position.get(id)
      if (at === undefined) {
        f.duplicates++
        return example(`${name} received ${id} of ${conversation}, which no send was acknowledged with`)
      }
      if (at.index <= (last.get(conversation) ?? -1)) {
        if (!disordered.has(conversation)) example(`${name}: ${id} of ${conversation} arrived after a later message`)
        disordered.add(conversation)
      }
      last.set(conversation, Math.max(at.index, last.get(conversation) ?? -1))
    })
    f.outOfOrder += disordered.size
    for (const conversation of mine) {
      for (const id of input.acked.get(conversation) ?? []) {
        if (seen.has(id)) continue
        f.lost++
        example(`${name} never received ${id} of ${conversation}`)
      }
    }
    if (disordered.size > 0 || f.lost + f.duplicates + f.foreign > before) failing.push(session)
  })

  const stored = new Map<string, number>()
  const byClientMsgId = new Map<string, Set<string>>()
  for (const [conversation, id, clientMsgId] of input.history) {
    stored.set(id, (stored.get(id) ?? 0) + 1)
    const key = `${conversation}/${clientMsgId}`
    byClientMsgId.set(key, (byClientMsgId.get(key) ?? new Set()).add(id))
  }
  let missing = 0
  let repeated = 0
  for (const id of position.keys()) {
    const n = stored.get(id) ?? 0
    if (n === 0) {
      missing++
      example(`history lacks acknowledged ${id}`)
    } else if (n > 1) {
      repeated++
      example(`history holds ${id} ${n} times`)
    }
  }
  for (const [key, ids] of byClientMsgId) {
    if (ids.size < 2) continue
    repeated++
    example(`history holds client_msg_id ${key} under ${[...ids].join(", ")}`)
  }
  const unacknowledged = [...stored.keys()].filter((id) => !position.has(id)).length
  return { byProtocol, history: { missing, repeated, unacknowledged }, failing, examples }
}

/** Whether a run lost, duplicated or reordered anything. */
export const clean = (f: ChaosFindings) =>
  Object.values(f.byProtocol).every((p) => p.lost === 0 && p.duplicates === 0 && p.outOfOrder === 0 && p.foreign === 0)
  && f.history.missing === 0 && f.history.repeated === 0 && f.history.unacknowledged === 0
