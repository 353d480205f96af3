/**
 * The types a collection shows the app (statuses, events, sync reports,
 * options) and what the client hands each collection (`ClientContext`).
 *
 * Why a file of their own: the collection's work is split over several
 * files (see collection.ts), and each of them needs these types; here, the
 * parts import them without importing the `Collection` class, which
 * imports every part. collection.ts re-exports them, so the package's
 * names do not change.
 */
import type { RejectedEntry, SeqsyncStore } from './store.js'
import type { Http, WebSocketConstructor } from './transport.js'

/** A document's sync status. */
export interface DocStatus {
  doc: string
  /** Local edits not yet confirmed by the server (saved locally or not). */
  pending: number
  /** Local edits not yet written to the local store. */
  unsaved: number
  /** The seq through which the server confirmed this document's edits
   * (from `pushed`: committed to disk on the server). */
  savedThrough: number
}

export type ConnectionState = 'disconnected' | 'connecting' | 'connected'

export interface Progress {
  /** Changes received since the socket opened… */
  received: number
  /** …of those expected (welcome's head − the cursor). */
  expected: number
  /** Local edits confirmed… */
  pushed: number
  /** …of those in the outbox when the socket opened (and added since). */
  toPush: number
}

export type ResetReason = 'foreign_epoch' | 'cursor_beyond_head' | 'history_replaced' | string

/** What a {@link Collection.sync} did (the Rust replica's cases). */
export interface SyncReport {
  kind: 'noop' | 'pulled' | 'pushed' | 'merged' | 'reset'
  /** Changes by others applied locally (for a reset: documents whose
   * server state changed the local one). */
  pulled: number
  /** Local edits (outbox rows) the server logged (for a reset: whole
   * documents pushed back that added something on the server). */
  pushed: number
  /** Local edits sent that the server already had (logged nothing). */
  alreadyThere: number
  /** Updates moved to the rejected record during this sync. */
  rejected: number
  /** Local edits left in the outbox (made during the sync, or refused with
   * a retryable code): sync again. */
  followUpNeeded: boolean
  outboxLeft: number
  /** For a reset: why. */
  reason?: ResetReason
  cursor: number
  head: number
  epoch: string
}

export interface CollectionEvents extends Record<string, unknown> {
  status: DocStatus
  /** Local edits written to the local store. */
  saved: { docs: string[], count: number }
  connection: { state: ConnectionState }
  progress: Progress
  /** Remote changes applied (stream or recovery). */
  change: { docs: string[], source: 'stream' | 'recovery' }
  deleted: { doc: string }
  rejected: RejectedEntry
  reset: { reason: ResetReason, epoch: string, head: number }
  error: Error
}

export interface CollectionOptions {
  /** The app's schema version (sent in hello; a server at a newer one
   * raises {@link UpgradeRequiredError}). Omitted: the server's. */
  schemaVersion?: number
}

/** What the client hands its collections. */
export interface ClientContext {
  store: SeqsyncStore
  http: Http
  wsUrl(collection: string): string
  WebSocket(): WebSocketConstructor
  peer(): Promise<string>
  connectTimeoutMs: number
  ackDelayMs: number
  goodbyeTimeoutMs: number
  backoff: { minMs: number, maxMs: number }
  /** The BroadcastChannel name of this store's tabs (see `tabs.ts`), or
   * undefined for none. */
  tabChannel: string | undefined
}
