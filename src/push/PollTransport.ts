/**
 * `GET /notify?protoc=poll`: one message per request, waiting up to QUICKIM_POLL_WAIT (204 when
 * none came). The session's Mailbox keeps each platform's queue and position between polls
 * (PollPlatforms); a poll that cannot reach it answers 503 and the client polls again with its
 * cursor. When the token expires or is revoked, a waiting poll answers 401/10101.
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type * as HttpServerRequest from "effect/http/HttpServerRequest"
import * as HttpServerResponse from "effect/http/HttpServerResponse"
import { remoteAddressOf } from "../access/Access.ts"
import { RateLimits } from "../access/RateLimits.ts"
import { Revocations } from "../access/Revocations.ts"
import { ErrorCode } from "../api/Errors.ts"
import { RunnerWatch } from "../cluster/RunnerWatch.ts"
import { ShardRoutes } from "../cluster/ShardRoutes.ts"
import { AppConfig } from "../Config.ts"
import { Telemetry } from "../observability/Telemetry.ts"
import { Connections } from "./Connections.ts"
import { limited, NotifyRefused, type NotifyRequest, type ServeNotify } from "./Notify.ts"
import { Mailbox } from "./Protocol.ts"

export class PollTransport extends Context.Service<PollTransport, {
  readonly serve: ServeNotify
}>()("quick-im/push/PollTransport") {
  static readonly layerNoDeps = Layer.effect(
    PollTransport,
    Effect.gen(function* () {
      const mailboxes = yield* Mailbox.client
      const connections = yield* Connections
      const telemetry = yield* Telemetry
      const watch = yield* RunnerWatch
      const routes = yield* ShardRoutes
      const limits = yield* RateLimits
      const revocations = yield* Revocations
      const waitMs = Duration.toMillis((yield* AppConfig).pollWait)
      const unavailable = new NotifyRefused({
        status: 503,
        code: ErrorCode.Unavailable,
        error: "push unavailable, retry"
      })

      const serve = Effect.fnUntraced(function* (notify: NotifyRequest, request: HttpServerRequest.HttpServerRequest) {
        const release = yield* limits.admitPush("polls", notify.session, remoteAddressOf(request)).pipe(
          Effect.mapError(limited)
        )
        telemetry.connections.poll++
        // A runner leaving may have taken the session's mailbox with it, and a call to it is
        // answered by nobody: answer 503 then, and the client polls again with its cursor. Only
        // then: a poll cut while its mailbox lives may have just been answered, and that answer
        // would be lost to a client with no cursor yet (it cannot ask for it again). Where the
        // mailbox was when the poll began: here, on a node by the reports, or unknown.
        const mailboxAt = routes.holds(notify.session) ? null : routes.nodeOf(notify.session)
        const runnerLeft = yield* Deferred.make<void>()
        const unwatch = watch.onRunnerLeft((left) => {
          if (mailboxAt === undefined || (mailboxAt !== null && left.has(mailboxAt))) {
            Deferred.doneUnsafe(runnerLeft, Exit.void)
          }
        })
        const tokenEnded = yield* Deferred.make<never, NotifyRefused>()
        const unwatchToken = revocations.watch(notify.claims, (reason) =>
          Deferred.doneUnsafe(
            tokenEnded,
            Exit.fail(new NotifyRefused({ status: 401, code: ErrorCode.InvalidToken, error: reason }))
          ))
        const message = yield* mailboxes(notify.session).Poll({
          platform: notify.platform,
          waitMs,
          ...(notify.cursor === undefined ? {} : { cursor: notify.cursor }),
          ...(notify.events.length === 0 ? {} : { events: notify.events })
        }).pipe(
          // The cluster failing the call is a defect (500), as for any unexpected failure.
          Effect.orDie,
          // The session's mailbox may be between nodes; past the wait plus a margin, ask for a retry.
          Effect.timeoutOrElse({ duration: Duration.millis(waitMs + 10_000), orElse: () => Effect.fail(unavailable) }),
          Effect.raceFirst(Deferred.await(runnerLeft).pipe(Effect.andThen(Effect.fail(unavailable)))),
          // This node is stopping: the client polls again, on another node, with its cursor.
          Effect.raceFirst(Deferred.await(connections.stopping).pipe(Effect.andThen(Effect.fail(unavailable)))),
          Effect.raceFirst(Deferred.await(tokenEnded)),
          Effect.ensuring(Effect.sync(() => {
            release()
            telemetry.connections.poll--
            unwatch()
            unwatchToken()
          }))
        )
        if (message === null) return HttpServerResponse.empty({ status: 204 })
        if (!("Event" in message)) telemetry.deliveries.poll++
        return HttpServerResponse.jsonUnsafe(message, { headers: { "cache-control": "no-store" } })
      })

      return PollTransport.of({ serve })
    })
  )

  /** With the services it builds on (each built once per node: layers are shared by reference). */
  static readonly layer = this.layerNoDeps.pipe(
    Layer.provide([
      Connections.layer,
      RateLimits.layer,
      Revocations.layer,
      RunnerWatch.layer,
      ShardRoutes.layer,
      Telemetry.layer
    ])
  )
}
