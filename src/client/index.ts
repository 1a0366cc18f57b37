/** The quick-im client SDK: typed HTTP calls and a push subscriber that resumes by cursor. */
export { type ClientOptions, makeClient, type QuickImClient, type SendOptions } from "./Client.ts"
export {
  messages,
  type PushProtocol,
  PushRefused,
  type PushState,
  runSubscription,
  subscribe,
  type SubscribeOptions
} from "./Push.ts"
export type { ConversationDetail, MsgData } from "../domain/Conversation.ts"
export type { ConversationEvent, EventKind, LiveEvent, MemberEvent, ReadEvent, TypingEvent } from "../domain/Events.ts"
