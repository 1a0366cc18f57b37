/**
 * A message's (or live event's) wire form, encoded once however many connections it goes to (a
 * group of 500 members would otherwise serialize each message 500 times). The same object reaches
 * every local connection, so a weak map keyed by it is enough.
 */
import type { MsgData } from "../domain/Conversation.ts"
import type { LiveEvent } from "../domain/Events.ts"

const encoder = new TextEncoder()

/** JSON of a value, UTF-8 encoded, remembered per object. */
const encodedOnce = <A extends object>() => {
  const encoded = new WeakMap<A, Uint8Array>()
  return (value: A): Uint8Array => {
    let bytes = encoded.get(value)
    if (bytes === undefined) {
      bytes = encoder.encode(JSON.stringify(value))
      encoded.set(value, bytes)
    }
    return bytes
  }
}

/** The message as JSON, UTF-8 encoded: a WebSocket text frame's payload and an SSE event's `data`. */
export const messageJson = encodedOnce<MsgData>()

/** The size of the message's JSON in bytes: what buffers count (encoded once, as above). */
export const messageSize = (message: MsgData): number => messageJson(message).length

/** A live event as JSON, UTF-8 encoded once however many connections it goes to. */
export const eventJson = encodedOnce<LiveEvent>()
