#!/usr/bin/env -S deno run -A --v8-flags=--max-old-space-size=1536,--no-allocation-site-pretenuring
/**
 * Entry point: with no arguments a node (`serve`); otherwise the `quick-im` command line
 * (src/cli/Cli.ts, `--help` lists the commands). Exit codes: 0 done, 1 the server refused or
 * could not be reached, 2 the command line was wrong.
 */
import { restore } from "./NoFiberAsyncContext.ts" // first: before `effect` is evaluated
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as CliError from "effect/cli/CliError"
import * as Command from "effect/cli/Command"
import { MainLive } from "./App.ts"
import { cli } from "./cli/Cli.ts"

restore()

const args = process.argv.slice(2)

/** 2 for a wrong command line (help shown with the reason), 1 for a failed request or anything else. */
const exitCode = (error: unknown) => {
  if (!CliError.isCliError(error)) return 1
  if (error._tag === "ShowHelp") return error.errors.length === 0 ? 0 : 2
  return error._tag === "UserError" ? 1 : 2
}

const program = args.length === 0 ? Layer.launch(MainLive) : Command.runWith(cli, { version: "0.1.0" })(args).pipe(
  Effect.provide(NodeServices.layer),
  Effect.exit,
  Effect.flatMap((exit) =>
    Effect.sync(() => {
      if (Exit.isSuccess(exit)) return process.exit(0)
      const error = Cause.squash(exit.cause)
      // The CLI runner printed its own errors and those with a user message; anything else goes to stderr.
      const reported = CliError.isCliError(error)
        || (typeof error === "object" && error !== null && CliError.getUserMessage(error) !== undefined)
      if (!reported) console.error(`error: ${Cause.pretty(exit.cause)}`)
      process.exit(exitCode(error))
    })
  )
)

NodeRuntime.runMain(program as Effect.Effect<unknown, unknown>)
