/**
 * Domain and cluster failures → the wire errors of the contract, by tag: one entry per failure a
 * handler may meet. Anything else stays a defect (10002, logged with its cause).
 */
import * as Effect from "effect/Effect"
import * as Predicate from "effect/Predicate"
import type * as ClusterError from "effect/cluster/ClusterError"
import type * as SqlError from "effect/sql/SqlError"
import {
  type ApiError,
  BadRequest,
  ErrorCode,
  Forbidden,
  NotFound,
  PayloadTooLarge,
  TooManyRequests,
  Unavailable
} from "../api/Errors.ts"
import type {
  ConversationNotFound,
  ConversationTypeOutOfRange,
  DatabaseUnavailable,
  EmptyMembers,
  JoinNeedsInvitation,
  NotMember,
  RemovedFromConversation,
  UnstorableMessage
} from "../domain/Conversation.ts"
import { isDatabaseUnreachable } from "../storage/DatabaseHealth.ts"

/** Every failure with a wire error of its own. */
type Mapped =
  | ConversationNotFound
  | NotMember
  | RemovedFromConversation
  | JoinNeedsInvitation
  | ConversationTypeOutOfRange
  | EmptyMembers
  | UnstorableMessage
  | DatabaseUnavailable
  | SqlError.SqlError
  | ClusterError.PersistenceError
  | ClusterError.MailboxFull
  | ClusterError.EntityNotAssignedToRunner
  | ClusterError.RunnerUnavailable
  | ClusterError.RunnerNotRegistered

type Mapping = {
  readonly [Tag in Mapped["_tag"]]: (e: Extract<Mapped, { readonly _tag: Tag }>) => ApiError | undefined
}

const databaseUnavailable = () => new Unavailable({ code: ErrorCode.Unavailable, error: "database unavailable, retry" })
const moving = () => new Unavailable({ code: ErrorCode.Unavailable, error: "conversation is moving, retry" })

/** undefined: no wire error, a defect. */
const mapping: Mapping = {
  ConversationNotFound: (e) =>
    new NotFound({ code: ErrorCode.ConversationNotFound, error: `conversation ${e.conversationId} not found` }),
  NotMember: (e) =>
    new Forbidden({ code: ErrorCode.NotMember, error: `not a member of conversation ${e.conversationId}` }),
  RemovedFromConversation: (e) =>
    new Forbidden({
      code: ErrorCode.RemovedFromConversation,
      error: `removed from conversation ${e.conversationId}: only the backend can add this session again`
    }),
  JoinNeedsInvitation: (e) =>
    new Forbidden({
      code: ErrorCode.JoinNeedsInvitation,
      error: `joining conversation ${e.conversationId} needs an invitation from the backend`
    }),
  ConversationTypeOutOfRange: (e) =>
    new BadRequest({
      code: ErrorCode.ConversationTypeOutOfRange,
      error: `conversation_type ${e.conversationType} is out of range 0..15`
    }),
  EmptyMembers: () => new BadRequest({ code: ErrorCode.EmptyMembers, error: "sessions must name at least one member" }),
  UnstorableMessage: () =>
    new BadRequest({
      code: ErrorCode.InvalidParameter,
      error: "the message holds characters that cannot be stored (NUL or unpaired UTF-16 surrogates)"
    }),
  DatabaseUnavailable: databaseUnavailable,
  // Effect cluster's own storage (its message and runner tables) failing: the database again.
  PersistenceError: databaseUnavailable,
  SqlError: (e) => isDatabaseUnreachable(e) ? databaseUnavailable() : undefined,
  MailboxFull: () => new Unavailable({ code: ErrorCode.Unavailable, error: "conversation is overloaded, retry" }),
  EntityNotAssignedToRunner: moving,
  RunnerUnavailable: moving,
  RunnerNotRegistered: moving
}

const isMapped = (e: unknown): e is Mapped =>
  Predicate.hasProperty(e, "_tag") && typeof e._tag === "string" && Object.hasOwn(mapping, e._tag)

export const toApiError = (e: unknown): Effect.Effect<never, ApiError> => {
  // Refusals of the edge itself (rate limits, sizes, cursors) are wire errors already.
  if (e instanceof TooManyRequests || e instanceof PayloadTooLarge || e instanceof BadRequest) return Effect.fail(e)
  if (!isMapped(e)) return Effect.die(e)
  // The entry of e's own tag (the table's type pairs each tag with its error's type).
  const wire = (mapping[e._tag] as (e: Mapped) => ApiError | undefined)(e)
  return wire === undefined ? Effect.die(e) : Effect.fail(wire)
}

/**
 * How long a request may wait on the cluster. A call to an entity whose node died is answered by
 * nobody until the shard is re-hosted elsewhere (about 5 s); past this bound the client gets 10006
 * and retries (a send with the same client_msg_id cannot duplicate).
 */
export const REQUEST_TIMEOUT = "15 seconds"

/** A request that waited REQUEST_TIMEOUT on the cluster. */
export const notInTime = new Unavailable({
  code: ErrorCode.Unavailable,
  error: "the cluster did not answer in time, retry"
})

/** Runs a handler effect with its failures mapped to wire errors. */
export const mapped = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, ApiError, R> =>
  Effect.catch(effect, toApiError)

/**
 * `mapped`, and on several nodes also bounded by REQUEST_TIMEOUT. One node has no other runner to
 * wait on, so it is spared the timer and the race a timeout adds to every request.
 */
export const mappedFor = (multiNode: boolean) =>
  multiNode
    ? <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, ApiError, R> =>
      mapped(effect).pipe(
        Effect.timeoutOrElse({ duration: REQUEST_TIMEOUT, orElse: () => Effect.fail(notInTime) })
      )
    : mapped
