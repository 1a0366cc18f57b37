/**
 * Log output: one JSON object per line where logs are collected (`QUICKIM_LOG_FORMAT=json`, and by
 * default when stdout is not a terminal), Effect's pretty format on a terminal. Lines about a
 * message carry `conversationId` and `msgId` (a batch also `lastMsgId` and `count`) as
 * annotations, so a collector can follow one message through a node.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as References from "effect/References"
import { AppConfig } from "../Config.ts"

export const LoggingLive = Layer.unwrap(Effect.gen(function* () {
  const config = yield* AppConfig
  const format = config.logFormat ?? "auto"
  const json = format === "json" || (format === "auto" && !process.stdout.isTTY)
  return Layer.mergeAll(
    Logger.layer([json ? Logger.consoleJson : Logger.consolePretty()]),
    Layer.succeed(References.MinimumLogLevel, config.logLevel ?? "Info")
  )
}))

/**
 * Annotations for a line about messages of one conversation: its id and the MsgId, or for a batch
 * the first (`msgId`) and last (`lastMsgId`) MsgId and how many.
 */
export const aboutMessages = (conversationId: string, msgIds: ReadonlyArray<string>) =>
  msgIds.length <= 1
    ? { conversationId, msgId: msgIds[0] ?? "" }
    : { conversationId, msgId: msgIds[0], lastMsgId: msgIds[msgIds.length - 1], count: msgIds.length }

/** Whether `level` lets Debug lines through (a hot path skips building them otherwise). */
export const debugEnabled = (level: LogLevel.LogLevel | undefined) =>
  LogLevel.isGreaterThanOrEqualTo("Debug", level ?? "Info")
