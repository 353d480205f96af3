/**
 * The local store behind a client: per collection an update log (each row
 * with its origin, `local` or `remote`, and for local rows whether the
 * server confirmed it: the outbox is the local rows not yet confirmed),
 * snapshots of documents with their state vectors (a document's log is
 * folded into its snapshot past a size threshold), a kv table (cursor,
 * checksum, epoch; the peer id under the collection ''), and a record of
 * the updates the server refused for good.
 *
 * The model is the seed's SQLite schema (snapshots, updates, kv). Every
 * {@link SeqsyncStore.commit} is one transaction: a crash leaves all of it
 * or none of it.
 */
import * as Y from 'yjs'

/** Where a collection's stream stands locally. */
export interface CollectionState {
  /** The client has every change ≤ cursor (0: nothing). */
  cursor: number
  /** The log checksum at `cursor` (16 hex digits); '' when unknown. */
  checksum: string
  /** The epoch the cursor belongs to; '' when none. */
  epoch: string
}

/** A local edit waiting for the server's confirmation. */
export interface OutboxEntry {
  /** Its position in the local log (increasing). */
  id: number
  doc: string
  update: Uint8Array
}

export interface DocumentInfo {
  doc: string
  deleted: boolean
  /** The highest seq the server confirmed for this document's local edits
   * (0: none yet, or not since the last reset). */
  savedThrough: number
  /** Local edits of it in the outbox. */
  pending: number
}

export interface StoredDocument {
  /** The folded part of its log, a Yjs v1 update (null: none yet). */
  snapshot: Uint8Array | null
  /** The snapshot's state vector. */
  stateVector: Uint8Array | null
  /** Log rows not folded into the snapshot, and the outbox rows, in log
   * order (an outbox row may also be in the snapshot: applying a Yjs update
   * twice changes nothing). */
  updates: Uint8Array[]
  deleted: boolean
  savedThrough: number
}

/** An update the server refused for good, moved out of the outbox. */
export interface RejectedEntry {
  id: number
  doc: string
  update: Uint8Array
  code: string
  message: string
  /** When (ms since the epoch). */
  at: number
}

/** One transaction on a collection. */
export interface StoreWrite {
  /** Changes received from the server, logged with origin `remote`;
   * `update: null` is a delete (the document's data is dropped, its outbox
   * rows are rejected as `document_deleted`). A remote update to a deleted
   * document revives it (the server's history is the reference). */
  remote?: Array<{ doc: string, update: Uint8Array | null }>
  /** Local edits, logged with origin `local` and queued in the outbox. */
  local?: Array<{ doc: string, update: Uint8Array }>
  /** The collection's state after this write. */
  state?: Partial<CollectionState>
  /** Outbox rows the server confirmed. */
  pushed?: number[]
  /** Per document, the seq its confirmed edits are saved through (the
   * highest is kept). */
  saved?: Array<{ doc: string, seq: number }>
  /** Every outbox row from before this write is marked confirmed (a
   * recovery re-pushes whole documents instead), and every savedThrough
   * goes back to 0 (seqs of another history). */
  supersedeOutbox?: boolean
}

export interface CommitResult {
  /** The ids of `write.local`, in order. */
  localIds: number[]
  /** Outbox rows rejected by this write (their document was deleted). */
  rejected: RejectedEntry[]
}

export interface StoreOptions {
  /** Fold a document's log into its snapshot once it holds this many rows
   * that are not in the outbox (default 500). */
  compactAfterUpdates?: number
  /** … or this many bytes of them (default 1 MiB). */
  compactAfterBytes?: number
}

/** What a client needs of a local store. Every method may be called
 * concurrently with others; `commit` and `reject` are transactions. Byte
 * arrays passed in may be views of larger buffers: a store copies what it
 * keeps. */
export interface SeqsyncStore {
  /** A value of the kv table ('' collection: the store's own keys). */
  getKv(collection: string, key: string): Promise<string | undefined>
  setKv(collection: string, key: string, value: string): Promise<void>
  /** The collection's cursor, checksum, epoch (zeros when new). */
  state(collection: string): Promise<CollectionState>
  /** Every document the store holds of the collection, in id order
   * (deleted ones flagged). */
  documents(collection: string): Promise<DocumentInfo[]>
  /** A document's stored state (undefined: never written). */
  loadDocument(collection: string, doc: string): Promise<StoredDocument | undefined>
  /** One transaction (see {@link StoreWrite}); may fold the logs of the
   * documents it touched into their snapshots in the same transaction. */
  commit(collection: string, write: StoreWrite): Promise<CommitResult>
  /** Outbox rows with id > `afterId`, in id order, at most `limit`. */
  outbox(collection: string, afterId: number, limit: number): Promise<OutboxEntry[]>
  /** How many rows the outbox holds. */
  outboxSize(collection: string): Promise<number>
  /** Moves outbox rows into the rejected record (one transaction). Rows no
   * longer in the outbox are skipped. Returns what was rejected. */
  reject(collection: string, ids: number[], code: string, message: string): Promise<RejectedEntry[]>
  /** The rejected record of the collection. */
  rejected(collection: string): Promise<RejectedEntry[]>
  /** Folds every document's log into its snapshot now (or one document's). */
  compact(collection: string, doc?: string): Promise<void>
  close(): Promise<void>
}

export const DEFAULT_COMPACT_AFTER_UPDATES = 500
export const DEFAULT_COMPACT_AFTER_BYTES = 1 << 20

/** Merges a snapshot and log rows into one update and its state vector. */
export function fold (snapshot: Uint8Array | null, rows: Uint8Array[]): { snapshot: Uint8Array, stateVector: Uint8Array } {
  const parts = snapshot === null ? rows : [snapshot, ...rows]
  const merged = parts.length === 1 ? (parts[0] as Uint8Array) : Y.mergeUpdates(parts)
  return { snapshot: merged, stateVector: Y.encodeStateVectorFromUpdate(merged) }
}

/** A document's whole stored state as one update (empty update when none). */
export function documentUpdate (stored: StoredDocument | undefined): Uint8Array {
  if (stored === undefined || stored.deleted) return Y.mergeUpdates([])
  const parts = stored.snapshot === null ? stored.updates : [stored.snapshot, ...stored.updates]
  if (parts.length === 0) return Y.mergeUpdates([])
  if (parts.length === 1) return parts[0] as Uint8Array
  return Y.mergeUpdates(parts)
}
