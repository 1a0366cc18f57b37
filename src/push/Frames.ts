/**
 * A message's wire form, encoded once however many connections it goes to (a group of 500
 * members would otherwise serialize each message 500 times). The same MsgData object reaches
 * every local connection, so a weak map keyed by it is enough.
 */
import type { MsgData } from "../domain/Conversation.ts"
import type { LiveEvent } from "../domain/Events.ts"

const encoded = new WeakMap<MsgData, Uint8Array>()
const encoder = new TextEncoder()

/** The message as JSON, UTF-8 encoded: a WebSocket text frame's payload and an SSE event's `data`. */
export const messageJson = (message: MsgData): Uint8Array => {
  let bytes = encoded.get(message)
  if (bytes === undefined) {
    bytes = encoder.encode(JSON.stringify(message))
    encoded.set(message, bytes)
  }
  return bytes
}

/** The size of the message's JSON in bytes: what buffers count (encoded once, as above). */
export const messageSize = (message: MsgData): number => messageJson(message).length

const encodedEvents = new WeakMap<LiveEvent, Uint8Array>()

/** A live event as JSON, UTF-8 encoded once however many connections it goes to. */
export const eventJson = (event: LiveEvent): Uint8Array => {
  let bytes = encodedEvents.get(event)
  if (bytes === undefined) {
    bytes = encoder.encode(JSON.stringify(event))
    encodedEvents.set(event, bytes)
  }
  return bytes
}
