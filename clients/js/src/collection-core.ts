/**
 * The state every part of a collection shares, and the few operations on
 * it they all use: the serial store queue, the store commit that carries
 * the lazy part, and the per-document statuses.
 *
 * Why an object of its own: a collection's work is split by concern over
 * several files (local-docs.ts, socket.ts, session.ts, push.ts, stream.ts,
 * recover.ts; see collection.ts for the map), each a set of functions that
 * take this core. The public `Collection` holds one in a private field, so
 * nothing here is part of the package's API, and every part reads and
 * writes the same state without a web of back references.
 *
 * Every store operation runs on one serial queue per collection, so a
 * document's load, the remote changes applied to it and the local edits
 * written for it never interleave.
 */
import type * as Y from 'yjs'
import { TabRelay } from './tabs.js'
import type { Emitter } from './emitter.js'
import type { Presence } from './presence.js'
import type { CollectionState, CommitResult, SeqsyncStore, StoreWrite } from './store.js'
import type { ClientContext, CollectionEvents, CollectionOptions, ConnectionState, DocStatus } from './collection-types.js'
import type { Session } from './session.js'

/** Confirmations and cursor moves of our own changes reach the store
 * within this long (or with the next commit). */
const LAZY_MS = 100

/** A serial queue of async tasks. */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve()
  run<T> (task: () => Promise<T> | T): Promise<T> {
    const next = this.tail.then(task, task)
    this.tail = next.catch(() => {})
    return next
  }
}

/** A live document and its local-edit listener. */
export interface LiveDoc {
  ydoc: Y.Doc
}

export class CollectionCore {
  readonly name: string
  readonly events: Emitter<CollectionEvents>
  readonly ctx: ClientContext
  readonly store: SeqsyncStore
  readonly schemaVersion: number
  readonly queue = new SerialQueue()
  /** Resolves once the collection's local state is loaded. */
  readonly ready: Promise<void>
  state: CollectionState = { cursor: 0, checksum: '', epoch: '' }
  peerId = ''
  readonly live = new Map<string, LiveDoc>()
  readonly loading = new Map<string, Promise<Y.Doc>>()
  readonly statuses = new Map<string, DocStatus>()
  readonly presences = new Map<string, Presence>()
  readonly deletedDocs = new Set<string>()
  /** Local edits not yet written to the store (local-docs.ts). */
  unsaved: Array<{ doc: string, update: Uint8Array }> = []
  flushScheduled = false
  /** The origin of transactions the client applies itself. */
  readonly remoteOrigin = Symbol('seqsync-remote')
  /** The socket open now, if any (socket.ts). */
  session: Session | null = null
  /** stop() was asked: a session opened from now on finishes at once. */
  stopRequested = false
  /** Welcomes received so far: follow() restarts its backoff after one. */
  welcomes = 0
  /** whenSynced() callers waiting for the collection to be caught up. */
  idleWaiters: Array<() => void> = []
  connection: ConnectionState = 'disconnected'
  /** The epoch is being asked over HTTP (stream.ts, learnEpoch). */
  fetchingEpoch = false
  epochFetch: Promise<void> = Promise.resolve()
  /** Shows local edits to the other tabs of this browser at once. */
  readonly tabs: TabRelay | null

  constructor (name: string, ctx: ClientContext, options: CollectionOptions, events: Emitter<CollectionEvents>) {
    this.name = name
    this.events = events
    this.ctx = ctx
    this.store = ctx.store
    this.tabs = ctx.tabChannel === undefined ? null : new TabRelay(`seqsync-tabs:${ctx.tabChannel}:${name}`, doc => this.live.get(doc)?.ydoc)
    this.schemaVersion = options.schemaVersion ?? 0
    this.ready = this.queue.run(async () => {
      this.peerId = await ctx.peer()
      this.state = await this.store.state(name)
      for (const info of await this.store.documents(name)) {
        if (info.deleted) this.deletedDocs.add(info.doc)
        this.statuses.set(info.doc, { doc: info.doc, pending: info.pending, unsaved: 0, savedThrough: info.savedThrough })
      }
    })
    this.ready.catch(err => this.events.emit('error', err as Error))
  }

  /** A document's sync status (a copy). */
  status (doc: string): DocStatus {
    return { ...(this.statuses.get(doc) ?? { doc, pending: 0, unsaved: 0, savedThrough: 0 }) }
  }

  /** A document's status itself, created when it has none yet. */
  statusOf (doc: string): DocStatus {
    let s = this.statuses.get(doc)
    if (s === undefined) {
      s = { doc, pending: 0, unsaved: 0, savedThrough: 0 }
      this.statuses.set(doc, s)
    }
    return s
  }

  // ---- store writes ----------------------------------------------------------

  /** What may reach the store with the next commit: rows the server
   * confirmed, saved-through seqs, a cursor moved by our own changes. */
  lazy: { pushed: number[], saved: Map<string, number>, state: Partial<CollectionState> | null } = { pushed: [], saved: new Map(), state: null }
  private lazyTimer: ReturnType<typeof setTimeout> | null = null

  /** One store transaction (inside the queue), carrying the lazy part. */
  async commit (write: StoreWrite): Promise<CommitResult> {
    const lazy = this.lazy
    this.lazy = { pushed: [], saved: new Map(), state: null }
    const merged: StoreWrite = { ...write }
    if (lazy.pushed.length > 0) merged.pushed = [...lazy.pushed, ...(write.pushed ?? [])]
    if (lazy.saved.size > 0) merged.saved = [...[...lazy.saved].map(([doc, seq]) => ({ doc, seq })), ...(write.saved ?? [])]
    if (lazy.state !== null) merged.state = { ...lazy.state, ...(write.state ?? {}) }
    try {
      return await this.store.commit(this.name, merged)
    } catch (err) {
      // Keep the lazy part for the next try.
      this.lazy.pushed.unshift(...lazy.pushed)
      for (const [doc, seq] of lazy.saved) this.lazy.saved.set(doc, Math.max(this.lazy.saved.get(doc) ?? 0, seq))
      this.lazy.state ??= lazy.state
      throw err
    }
  }

  private hasLazy (): boolean {
    return this.lazy.pushed.length > 0 || this.lazy.saved.size > 0 || this.lazy.state !== null
  }

  scheduleLazy (): void {
    if (this.lazyTimer !== null) return
    this.lazyTimer = setTimeout(() => {
      this.lazyTimer = null
      this.flushLazy().catch(err => this.events.emit('error', err as Error))
    }, LAZY_MS)
  }

  /** Writes the lazy part now (queued). */
  flushLazy (): Promise<void> {
    return this.queue.run(async () => {
      if (this.hasLazy()) await this.commit({})
    })
  }
}
