/**
 * The error side of the wire contract: `{code, error}` bodies with the HTTP status telling
 * the class of failure. Codes are listed once here and in docs/api.md; a number never changes meaning.
 */
import * as Schema from "effect/Schema"

export const ErrorCode = {
  InvalidParameter: 10001,
  Internal: 10002,
  NotAllowed: 10003,
  UnknownPath: 10004,
  BodyTooLarge: 10005,
  Unavailable: 10006,
  SlowConsumer: 10007,
  TooManyRequests: 10008,
  InvalidToken: 10101,
  ConversationTypeOutOfRange: 90010,
  EmptyMembers: 90011,
  UnsupportedProtocol: 90013,
  ConversationNotFound: 90020,
  NotMember: 90021,
  RemovedFromConversation: 90022,
  JoinNeedsInvitation: 90023
} as const

const fields = { code: Schema.Int, error: Schema.String }

export class BadRequest extends Schema.Error<BadRequest>("BadRequest")(fields, { httpApiStatus: 400 }) {}
export class Unauthorized extends Schema.Error<Unauthorized>("Unauthorized")(fields, { httpApiStatus: 401 }) {}
export class Forbidden extends Schema.Error<Forbidden>("Forbidden")(fields, { httpApiStatus: 403 }) {}
export class NotFound extends Schema.Error<NotFound>("NotFound")(fields, { httpApiStatus: 404 }) {}
export class PayloadTooLarge extends Schema.Error<PayloadTooLarge>("PayloadTooLarge")(fields, { httpApiStatus: 413 }) {}
export class TooManyRequests extends Schema.Error<TooManyRequests>("TooManyRequests")(fields, {
  httpApiStatus: 429
}) {}
export class InternalError extends Schema.Error<InternalError>("InternalError")(fields, { httpApiStatus: 500 }) {}
export class Unavailable extends Schema.Error<Unavailable>("Unavailable")(fields, { httpApiStatus: 503 }) {}

/** Every error an endpoint may answer with; declared on the whole API. */
export const ApiErrors = [
  BadRequest,
  Unauthorized,
  Forbidden,
  NotFound,
  PayloadTooLarge,
  InternalError,
  Unavailable,
  TooManyRequests
]
export type ApiError = InstanceType<(typeof ApiErrors)[number]>

const statusByClass = new Map<Function, number>(
  ApiErrors.map((error) => [error, error.ast.annotations?.httpApiStatus as number])
)

/** The HTTP status HttpApi answers `error` with (its class's `httpApiStatus`). */
export const statusOf = (error: ApiError): number => statusByClass.get(error.constructor) ?? 500
