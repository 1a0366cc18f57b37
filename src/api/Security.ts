/**
 * Middleware declarations of the contract: bearer-token sessions for public endpoints and
 * the trusted-caller guard for `inner/*`. Implementations live on the server side.
 */
import * as Context from "effect/Context"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import * as HttpApiSecurity from "effect/http-api/HttpApiSecurity"
import { Forbidden, Unauthorized } from "./Errors.ts"

/** The caller of a public endpoint, from its token. */
export class CurrentSession extends Context.Service<CurrentSession, {
  readonly sid: string
  readonly platform: number
}>()("quick-im/api/CurrentSession") {}

export class Authorization extends HttpApiMiddleware.Service<Authorization, { provides: CurrentSession }>()(
  "quick-im/api/Authorization",
  { security: { bearer: HttpApiSecurity.bearer }, error: Unauthorized }
) {}

export class InnerGuard extends HttpApiMiddleware.Service<InnerGuard>()("quick-im/api/InnerGuard", {
  error: Forbidden
}) {}

/** The header an `inner/*` caller presents when `QUICKIM_ADMIN_KEY` is set. */
export const ADMIN_KEY_HEADER = "x-quickim-admin-key"
