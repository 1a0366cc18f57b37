/**
 * Which conversation ids exist, asked before a request may start a Conversation entity: an entity
 * for an id nobody created would otherwise be activated and kept (QUICKIM_ENTITY_IDLE) for every
 * random id a client sends. Conversations are never deleted, so ids found once are remembered
 * (a bounded set, the longest known forgotten first: a send's lookup only reads it); ids not found are asked again each time.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as SqlError from "effect/sql/SqlError"
import { ConversationNotFound } from "../domain/Conversation.ts"
import { ConversationStore } from "../storage/ConversationStore.ts"

/** Ids remembered per node: ~100 bytes each, so about 10 MB when full. */
export const KNOWN_MAX = 100_000

export class KnownConversations extends Context.Service<KnownConversations, {
  /** Fails with ConversationNotFound unless `id` exists; a remembered id costs one set lookup. */
  readonly require: (id: string) => Effect.Effect<void, ConversationNotFound | SqlError.SqlError>
  /** Whether `id` is remembered as existing (a miss proves nothing: ask `require`). */
  readonly has: (id: string) => boolean
  /** Records an id just created here. */
  readonly remember: (id: string) => void
}>()("quick-im/conversation/KnownConversations") {
  static readonly layerNoDeps = Layer.effect(
    KnownConversations,
    Effect.gen(function* () {
      const store = yield* ConversationStore
      const known = new Set<string>()
      const remember = (id: string) => {
        known.delete(id)
        if (known.size >= KNOWN_MAX) known.delete(known.values().next().value!)
        known.add(id)
      }
      return KnownConversations.of({
        require: (id) => {
          if (known.has(id)) {
            remember(id)
            return Effect.void
          }
          return Effect.flatMap(store.exists([id]), (found) => {
            if (found.length === 0) return Effect.fail(new ConversationNotFound({ conversationId: id }))
            remember(id)
            return Effect.void
          })
        },
        has: (id) => known.has(id),
        remember
      })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(Layer.provide([ConversationStore.layer]))
}
