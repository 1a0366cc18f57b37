/** Entry point: `serve` (default), `migrate`, or `cluster status [--url URL]`. */
import { restore } from "./NoFiberAsyncContext.ts" // first: before `effect` is evaluated
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { MainLive } from "./App.ts"
import { clusterStatus } from "./cli/ClusterStatus.ts"
import { AppConfig } from "./Config.ts"
import { LoggingLive } from "./observability/Logging.ts"
import { DatabaseLive } from "./storage/Database.ts"

restore()

const command = process.argv[2] ?? "serve"

if (command === "cluster") {
  clusterStatus(process.argv.slice(3)).then((code) => process.exit(code))
} else {
  const program = command === "migrate"
    ? Effect.gen(function* () {
      yield* Effect.logInfo("database migrated")
    }).pipe(Effect.provide(Layer.merge(DatabaseLive, LoggingLive).pipe(Layer.provide(AppConfig.layer))))
    : command === "serve"
    ? Layer.launch(MainLive)
    : Effect.logError(`unknown command '${command}': use 'serve', 'migrate' or 'cluster status'`).pipe(
      Effect.andThen(Effect.sync(() => process.exit(2)))
    )
  NodeRuntime.runMain(program as Effect.Effect<unknown, unknown>)
}
