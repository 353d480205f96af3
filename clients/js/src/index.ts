export { SeqsyncClient, type SeqsyncClientOptions } from './client.js'
export {
  Collection,
  type CollectionOptions,
  type CollectionEvents,
  type ConnectionState,
  type DocStatus,
  type Progress,
  type ResetReason,
  type SyncReport
} from './collection.js'
export { Emitter } from './emitter.js'
export { Presence, type PresenceState, type PresenceChanges } from './presence.js'
export {
  SeqsyncError,
  SchemaError,
  UpgradeRequiredError,
  ServerError,
  TransportError,
  PERMANENT_PUSH_CODES,
  RETRYABLE_PUSH_CODES
} from './errors.js'
export { memoryStore } from './memory.js'
export {
  type SeqsyncStore,
  type StoreWrite,
  type StoreOptions,
  type CommitResult,
  type CollectionState,
  type DocumentInfo,
  type OutboxEntry,
  type RejectedEntry,
  type StoredDocument,
  documentUpdate
} from './store.js'
export { FrameError, encodeFrame, decodeFrame } from './protocol.js'
export type { WebSocketLike, WebSocketConstructor, FetchLike } from './transport.js'
