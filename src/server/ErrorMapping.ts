/** Domain and cluster failures → the wire errors of the contract. Anything unknown stays a defect (10002). */
import { Effect, Predicate } from "effect"
import { type ApiError, BadRequest, ErrorCode, Forbidden, NotFound, Unavailable } from "../api/Errors.ts"
import { isDatabaseUnreachable } from "../storage/DatabaseHealth.ts"

const tagOf = (e: unknown) => Predicate.hasProperty(e, "_tag") ? String(e._tag) : undefined

export const toApiError = (e: unknown): Effect.Effect<never, ApiError> => {
  const x = e as any
  switch (tagOf(e)) {
    case "ConversationNotFound":
      return Effect.fail(
        new NotFound({ code: ErrorCode.ConversationNotFound, error: `conversation ${x.conversationId} not found` })
      )
    case "NotMember":
      return Effect.fail(
        new Forbidden({ code: ErrorCode.NotMember, error: `not a member of conversation ${x.conversationId}` })
      )
    case "RemovedFromConversation":
      return Effect.fail(
        new Forbidden({
          code: ErrorCode.RemovedFromConversation,
          error: `removed from conversation ${x.conversationId}: only the backend can add this session again`
        })
      )
    case "JoinNeedsInvitation":
      return Effect.fail(
        new Forbidden({
          code: ErrorCode.JoinNeedsInvitation,
          error: `joining conversation ${x.conversationId} needs an invitation from the backend`
        })
      )
    case "ConversationTypeOutOfRange":
      return Effect.fail(
        new BadRequest({
          code: ErrorCode.ConversationTypeOutOfRange,
          error: `conversation_type ${x.conversationType} is out of range 0..15`
        })
      )
    case "EmptyMembers":
      return Effect.fail(
        new BadRequest({ code: ErrorCode.EmptyMembers, error: "sessions must name at least one member" })
      )
    case "TooManyRequests":
    case "PayloadTooLarge":
      return Effect.fail(x)
    case "UnstorableMessage":
      return Effect.fail(
        new BadRequest({
          code: ErrorCode.InvalidParameter,
          error: "the message holds characters that cannot be stored (NUL or unpaired UTF-16 surrogates)"
        })
      )
    case "DatabaseUnavailable":
    // Effect cluster's own storage (its message and runner tables) failing: the database again.
    case "PersistenceError":
      return Effect.fail(new Unavailable({ code: ErrorCode.Unavailable, error: "database unavailable, retry" }))
    case "SqlError":
      return isDatabaseUnreachable(e)
        ? Effect.fail(new Unavailable({ code: ErrorCode.Unavailable, error: "database unavailable, retry" }))
        : Effect.die(e)
    case "MailboxFull":
      return Effect.fail(new Unavailable({ code: ErrorCode.Unavailable, error: "conversation is overloaded, retry" }))
    case "EntityNotAssignedToRunner":
    case "RunnerUnavailable":
    case "RunnerNotRegistered":
      return Effect.fail(new Unavailable({ code: ErrorCode.Unavailable, error: "conversation is moving, retry" }))
    default:
      return Effect.die(e)
  }
}

/**
 * How long a request may wait on the cluster. A call to an entity whose node died is answered by
 * nobody until the shard is re-hosted elsewhere (about 5 s); past this bound the client gets 10006
 * and retries (a send with the same client_msg_id cannot duplicate).
 */
export const REQUEST_TIMEOUT = "15 seconds"

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
        Effect.timeoutOrElse({
          duration: REQUEST_TIMEOUT,
          orElse: () =>
            Effect.fail(
              new Unavailable({ code: ErrorCode.Unavailable, error: "the cluster did not answer in time, retry" })
            )
        })
      )
    : mapped
