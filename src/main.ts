#!/usr/bin/env -S deno run -A
/**
 * Entry point: with no arguments a node (`serve`); otherwise the `quick-im` command line
 * (src/cli/Cli.ts, `--help` lists the commands). Exit codes: 0 done, 1 the server refused or
 * could not be reached, 2 the command line was wrong.
 */
import { restore } from "./NoFiberAsyncContext.ts" // first: before `effect` is evaluated
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Cause, Effect, Exit, Layer } from "effect"
import { CliError, Command } from "effect/cli"
import { MainLive } from "./App.ts"
import { cli } from "./cli/Cli.ts"

restore()

const args = process.argv.slice(2)

/** 2 for a wrong command line (help shown with the reason), 1 for a failed request or anything else. */
const exitCode = (exit: Exit.Exit<unknown, unknown>) => {
  if (Exit.isSuccess(exit)) return 0
  const error = Cause.squash(exit.cause)
  if (CliError.isCliError(error)) {
    if (error._tag === "ShowHelp") return error.errors.length === 0 ? 0 : 2
    return error._tag === "UserError" ? 1 : 2
  }
  return 1
}

const program = args.length === 0 ? Layer.launch(MainLive) : Command.runWith(cli, { version: "0.1.0" })(args).pipe(
  Effect.provide(NodeServices.layer),
  Effect.exit,
  Effect.flatMap((exit) =>
    Effect.sync(() => {
      const code = exitCode(exit)
      // The reason was already printed by the CLI runner; anything it did not print goes to stderr plainly.
      const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
      const reported = typeof error === "object" && error !== null && CliError.getUserMessage(error) !== undefined
      if (code === 1 && Exit.isFailure(exit) && !reported && !CliError.isCliError(error)) {
        console.error(`error: ${Cause.pretty(exit.cause)}`)
      }
      process.exit(code)
    })
  )
)

NodeRuntime.runMain(program as Effect.Effect<unknown, unknown>)
