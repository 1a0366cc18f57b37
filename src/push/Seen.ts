/**
 * Dedupe by MsgId, the same for every transport: within a conversation messages arrive in MsgId
 * order, so the newest MsgId handed out per conversation filters out anything a replay or a late
 * live delivery repeats.
 */
import type { MsgData } from "../domain/Conversation.ts"

export class Seen {
  private readonly marks = new Map<string, string>()

  /** Whether `message` was handed out already (or an older one of its conversation after it). */
  isRepeat(message: MsgData): boolean {
    const mark = this.marks.get(message.ConversationID)
    return mark !== undefined && message.MsgId <= mark
  }

  /** Records `message` as handed out. */
  mark(message: MsgData): void {
    this.marks.set(message.ConversationID, message.MsgId)
  }

  /** The messages not handed out yet, recorded as handed out; the batch itself when nothing repeats. */
  fresh(messages: ReadonlyArray<MsgData>): ReadonlyArray<MsgData> {
    let out: Array<MsgData> | undefined = undefined
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]
      if (this.isRepeat(m)) {
        out ??= messages.slice(0, i)
        continue
      }
      this.marks.set(m.ConversationID, m.MsgId)
      out?.push(m)
    }
    return out ?? messages
  }
}
