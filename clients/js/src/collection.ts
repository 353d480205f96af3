/**
 * A collection on a client: live Y.Docs loaded from the local store, an
 * outbox of local edits, and the sync socket that pushes them and streams
 * the collection's changes (docs/PROTOCOL.md, "The sync socket").
 *
 * Every store operation runs on one serial queue per collection, so a
 * document's load, the remote changes applied to it and the local edits
 * written for it never interleave.
 */
import * as Y from 'yjs'
import { TabRelay } from './tabs.js'
import { Emitter } from './emitter.js'
import {
  PERMANENT_PUSH_CODES,
  RETRYABLE_PUSH_CODES,
  SchemaError,
  ServerError,
  TransportError,
  UpgradeRequiredError
} from './errors.js'
import { Presence } from './presence.js'
import type { ChangesFrame, PresenceFrame, PushErrorFrame, PushedFrame, ResetFrame, ServerFrame, UpToDateFrame, WelcomeFrame } from './protocol.js'
import type { CollectionState, CommitResult, OutboxEntry, RejectedEntry, SeqsyncStore, StoreWrite } from './store.js'
import { documentUpdate } from './store.js'
import { type Http, type SocketClose, SyncSocket, type WebSocketConstructor } from './transport.js'

/** Yjs client ids below this are reserved for the server's migrations
 * (`reserved_client_id`). */
const RESERVED_CLIENT_IDS = 65536
/** Outbox rows read per store call, and per planning step at most (rows,
 * bytes). */
const OUTBOX_PAGE = 2000
const PLAN_ROWS = 20_000
const PLAN_BYTES = 4 << 20
/** Rows of one document merged into one pushed update, at most, and their
 * bytes (the Rust replica's MERGE_UPDATES / MERGE_BYTES). */
const MERGE_ROWS = 1000
const MERGE_BYTES = 256 << 10
/** Updates per push_batch (the server's default max_batch_updates) and
 * bytes (under the default max_message_bytes of 8 MiB). */
const BATCH_UPDATES = 1000
const BATCH_BYTES = 4 << 20
/** An update larger than this is refused locally as `too_large` (the
 * server's default max_update_bytes is 8 MiB, and a frame over
 * max_message_bytes would close the socket). */
const MAX_UPDATE_BYTES = 8_000_000
/** Pushes answered-pending per socket, at most (also bounded by welcome's
 * max_pushes_in_flight). */
const MAX_IN_FLIGHT = 16
/** Pulled changes committed locally together, at most, and their bytes.
 * The store writes one merged row per document per commit, so a catch-up
 * costs rows in proportion to its commits: bytes bound a commit, and the
 * change count only caps the objects held at once. At 8,000 changes (the
 * Rust replica's LOCAL_COMMIT_CHANGES) the 1,000-document cold start in
 * Chromium wrote 33,899 rows in 38 commits and took 10.2 s; bounded by the
 * 8 MiB, 4,899 rows in 9 commits and 4.8 s (demo/bench/browser.js). */
const LOCAL_COMMIT_CHANGES = 65536
const LOCAL_COMMIT_BYTES = 8 << 20
/** Confirmations and cursor moves of our own changes reach the store
 * within this long (or with the next commit). */
const LAZY_MS = 100
/** How long frames gather before a commit while catching up. */
const CATCH_UP_GATHER_MS = 15
/** Resets one sync recovers from before it gives up. */
const MAX_RESETS = 3
/** Retries of a push refused with a retryable code within one sync. */
const SYNC_RETRIES = 4

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

/** A serial queue of async tasks. */
class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve()
  run<T> (task: () => Promise<T> | T): Promise<T> {
    const next = this.tail.then(task, task)
    this.tail = next.catch(() => {})
    return next
  }
}

interface Group {
  doc: string
  rows: number[]
  update: Uint8Array
}

interface Flight {
  id: number
  groups: Group[]
  /** batch → group → row: how finely a permanent refusal is bisected. */
  level: 'batch' | 'group' | 'row'
  attempts: number
}

type SessionEnd =
  | { kind: 'done' }
  | { kind: 'reset', frame: ResetFrame }
  | { kind: 'fatal', error: Error }
  | { kind: 'lost', error: Error }

interface Counters {
  pulled: number
  pushed: number
  alreadyThere: number
  rejected: number
  reset: ResetFrame | null
  resetPulled: number
  head: number
}

/** One socket's state. */
class Session {
  socket: SyncSocket | null = null
  welcome: WelcomeFrame | null = null
  ended = false
  end: (end: SessionEnd) => void = () => {}
  nextPushId = 1
  inFlight = new Map<number, Flight>()
  /** Flights to send before reading more of the outbox. */
  requeue: Flight[] = []
  /** Rows with an id ≤ this were handed to a flight in this session. */
  sentThrough = 0
  /** The outbox had nothing more to send at the last read. */
  exhausted = false
  pumping = false
  pumpAgain = false
  /** Retry timers pending. */
  retryTimers = new Set<ReturnType<typeof setTimeout>>()
  /** The head the stream must reach before the session is done. */
  target = 0
  /** The head of the last up_to_date applied (-1: none yet). */
  upToDate = -1
  /** The last seq acked / answered. */
  ackSent = 0
  ackAnswered = 0
  ackTimer: ReturnType<typeof setTimeout> | null = null
  /** The session should end once everything is confirmed (sync, stop). */
  finishing = false
  closing = false
  startCursor = 0
  /** The highest `through` seen on arrival. */
  arrivedThrough = 0
  /** changes frames received, not stored yet. */
  frames: ChangesFrame[] = []
  drainScheduled = false
  progress: Progress = { received: 0, expected: 0, pushed: 0, toPush: 0 }
  constructor (readonly mode: 'sync' | 'follow', readonly limit: { id: number }, readonly counters: Counters) {}
}

/** A live document and its local-edit listener. */
interface LiveDoc {
  ydoc: Y.Doc
}

export class Collection {
  readonly name: string
  readonly events = new Emitter<CollectionEvents>()
  private readonly ctx: ClientContext
  private readonly store: SeqsyncStore
  private readonly schemaVersion: number
  private readonly queue = new SerialQueue()
  private readonly ready: Promise<void>
  private state: CollectionState = { cursor: 0, checksum: '', epoch: '' }
  private peerId = ''
  private readonly live = new Map<string, LiveDoc>()
  private readonly loading = new Map<string, Promise<Y.Doc>>()
  private readonly statuses = new Map<string, DocStatus>()
  private readonly presences = new Map<string, Presence>()
  private readonly deletedDocs = new Set<string>()
  private unsaved: Array<{ doc: string, update: Uint8Array }> = []
  private flushScheduled = false
  /** The origin of transactions the client applies itself. */
  private readonly remoteOrigin = Symbol('seqsync-remote')
  private session: Session | null = null
  private running: Promise<unknown> | null = null
  private following = false
  private stopRequested = false
  private wake: (() => void) | null = null
  private idleWaiters: Array<() => void> = []
  private connection: ConnectionState = 'disconnected'
  private closedFlag = false
  /** Shows local edits to the other tabs of this browser at once. */
  private readonly tabs: TabRelay | null

  constructor (name: string, ctx: ClientContext, options: CollectionOptions = {}) {
    this.name = name
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

  /** Resolves once the collection's local state is loaded. */
  async opened (): Promise<void> {
    await this.ready
  }

  /** The cursor, checksum and epoch held locally. */
  get syncState (): Readonly<CollectionState> {
    return { ...this.state }
  }

  get connectionState (): ConnectionState {
    return this.connection
  }

  /** The live Y.Doc of document `id`, loaded from the local store (empty if
   * it has nothing yet). Its local edits are saved and synced. */
  async doc (id: string): Promise<Y.Doc> {
    await this.ready
    const live = this.live.get(id)
    if (live !== undefined) return live.ydoc
    let loading = this.loading.get(id)
    if (loading === undefined) {
      loading = this.queue.run(async () => {
        const already = this.live.get(id)
        if (already !== undefined) return already.ydoc
        const stored = await this.store.loadDocument(this.name, id)
        const ydoc = new Y.Doc()
        while (ydoc.clientID < RESERVED_CLIENT_IDS) ydoc.clientID = Math.floor(Math.random() * 0xffffffff) >>> 0
        if (stored !== undefined && !stored.deleted) {
          ydoc.transact(() => {
            if (stored.snapshot !== null) Y.applyUpdate(ydoc, stored.snapshot, this.remoteOrigin)
            for (const u of stored.updates) Y.applyUpdate(ydoc, u, this.remoteOrigin)
          }, this.remoteOrigin)
        }
        ydoc.on('update', (update: Uint8Array, origin: unknown) => {
          if (origin === this.remoteOrigin) return
          // Another tab's edit is saved and pushed here too (see tabs.ts:
          // this tab's later edits may build on it), but not relayed back.
          this.localEdit(id, update)
          if (this.tabs !== null && origin !== this.tabs.origin) this.tabs.edited(id, update)
        })
        this.live.set(id, { ydoc })
        this.tabs?.opened(id, ydoc)
        return ydoc
      })
      this.loading.set(id, loading)
      loading.finally(() => this.loading.delete(id)).catch(() => {})
    }
    return await loading
  }

  /**
   * Presence in document `id`: who else has it open and where their
   * cursor is (Yjs awareness, shared with `/yws` clients of the same
   * document). Live while the collection follows (`follow()`): the local
   * state is sent on every (re)connect, remote states arrive as the room
   * changes and are dropped when the socket closes. Its `clientID` is the
   * document's Y.Doc's. It starts with an empty local state (`{}`); set
   * one with `setLocalStateField('user', {...})`, leave with `destroy()`.
   * The same object is returned until it is destroyed.
   */
  async presence (id: string): Promise<Presence> {
    const existing = this.presences.get(id)
    if (existing !== undefined && !existing.isDestroyed) return existing
    const ydoc = await this.doc(id)
    const again = this.presences.get(id)
    if (again !== undefined && !again.isDestroyed) return again
    const presence: Presence = new Presence(ydoc, id, (update) => this.sendPresence(id, update), () => {
      if (this.presences.get(id) === presence) this.presences.delete(id)
      this.sendFrame({ type: 'leave', doc: id })
    })
    this.presences.set(id, presence)
    return presence
  }

  /** Sends a presence frame on the open, welcomed socket of `follow()`;
   * nothing otherwise (they are sent again at the next welcome). A one-shot
   * `sync()` carries no presence: the person would appear and vanish with
   * each sync. */
  private sendFrame (frame: { type: 'awareness', doc: string, update: Uint8Array } | { type: 'leave', doc: string }): void {
    const session = this.session
    if (session === null || session.mode !== 'follow' || session.ended || session.welcome === null || session.socket === null) return
    session.socket.send(frame)
  }

  private sendPresence (doc: string, update: Uint8Array): void {
    this.sendFrame({ type: 'awareness', doc, update })
  }

  /** A new socket is welcomed: every presence (re)joins its room with its
   * local state (a `null` one joins without being seen). */
  private rejoinPresences (): void {
    if (this.session?.mode !== 'follow') return
    for (const presence of this.presences.values()) {
      this.sendPresence(presence.docId, presence.encodeUpdate([presence.clientID]))
    }
  }

  private onPresence (frame: PresenceFrame): void {
    const presence = this.presences.get(frame.doc)
    if (presence === undefined) return
    try {
      presence.applyUpdate(frame.update, 'server')
    } catch (err) {
      this.events.emit('error', new TransportError(`a presence frame for ${JSON.stringify(frame.doc)} did not decode: ${(err as Error).message}`))
    }
  }

  /** The ids of the documents held locally (not deleted). */
  async documents (): Promise<string[]> {
    await this.whenSaved()
    const infos = await this.queue.run(() => this.store.documents(this.name))
    return infos.filter(d => !d.deleted).map(d => d.doc)
  }

  /** A document's sync status. */
  status (doc: string): DocStatus {
    return { ...(this.statuses.get(doc) ?? { doc, pending: 0, unsaved: 0, savedThrough: 0 }) }
  }

  /** Local edits waiting for the server, in the store. */
  async outboxSize (): Promise<number> {
    await this.ready
    await this.flushLazy()
    return await this.queue.run(() => this.store.outboxSize(this.name))
  }

  /** Updates the server refused for good. */
  async rejected (): Promise<RejectedEntry[]> {
    await this.ready
    return await this.queue.run(() => this.store.rejected(this.name))
  }

  /** Deletes a document on the server (then locally): later pushes to it are
   * refused. Needs the server. */
  async delete (id: string): Promise<{ seq: number, head: number }> {
    await this.ready
    const answer = await this.ctx.http.deleteDocument(this.name, id)
    await this.queue.run(async () => {
      const res = await this.commit({ remote: [{ doc: id, update: null }] })
      this.afterDeletes([id], res.rejected)
    })
    return answer
  }

  /** Runs compaction on the server now (POST …/compact). */
  async compactServer (): Promise<unknown> {
    return await this.ctx.http.compact(this.name)
  }

  /** Folds the local logs into snapshots now. */
  async compactLocal (): Promise<void> {
    await this.ready
    await this.queue.run(() => this.store.compact(this.name))
  }

  // ---- store writes ----------------------------------------------------------

  /** What may reach the store with the next commit: rows the server
   * confirmed, saved-through seqs, a cursor moved by our own changes. */
  private lazy: { pushed: number[], saved: Map<string, number>, state: Partial<CollectionState> | null } = { pushed: [], saved: new Map(), state: null }
  private lazyTimer: ReturnType<typeof setTimeout> | null = null

  /** One store transaction (inside the queue), carrying the lazy part. */
  private async commit (write: StoreWrite): Promise<CommitResult> {
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

  private scheduleLazy (): void {
    if (this.lazyTimer !== null) return
    this.lazyTimer = setTimeout(() => {
      this.lazyTimer = null
      this.flushLazy().catch(err => this.events.emit('error', err as Error))
    }, LAZY_MS)
  }

  /** Writes the lazy part now (queued). */
  private flushLazy (): Promise<void> {
    return this.queue.run(async () => {
      if (this.hasLazy()) await this.commit({})
    })
  }

  // ---- local edits -------------------------------------------------------

  private localEdit (doc: string, update: Uint8Array): void {
    this.unsaved.push({ doc, update })
    const s = this.statusOf(doc)
    s.unsaved++
    s.pending++
    if (!this.flushScheduled) {
      this.flushScheduled = true
      queueMicrotask(() => {
        this.flushLocal().catch(() => {})
      })
    }
  }

  private statusOf (doc: string): DocStatus {
    let s = this.statuses.get(doc)
    if (s === undefined) {
      s = { doc, pending: 0, unsaved: 0, savedThrough: 0 }
      this.statuses.set(doc, s)
    }
    return s
  }

  /** Writes the local edits made so far to the store (one transaction). */
  private flushLocal (): Promise<void> {
    this.flushScheduled = false
    const batch = this.unsaved
    this.unsaved = []
    // Say "unsaved" before the write starts: an app that shows "saved on
    // this device" from these events must not show it while an edit is
    // only in memory (closing the tab then would lose it).
    for (const doc of new Set(batch.map(e => e.doc))) this.events.emit('status', this.status(doc))
    return this.queue.run(async () => {
      if (batch.length === 0) return
      let localIds: number[]
      try {
        localIds = (await this.commit({ local: batch })).localIds
      } catch (err) {
        // Not saved: keep them for the next flush.
        this.unsaved = [...batch, ...this.unsaved]
        this.events.emit('error', err as Error)
        throw err
      }
      const session = this.session
      if (session !== null && session.mode === 'sync' && session.limit.id === Infinity && localIds.length > 0) {
        // Edits made during a sync wait for the next one.
        session.limit.id = (localIds[0] as number) - 1
      }
      const docs = new Set<string>()
      for (const { doc } of batch) {
        this.statusOf(doc).unsaved--
        docs.add(doc)
      }
      if (session !== null) session.progress.toPush += batch.length
      this.events.emit('saved', { docs: [...docs], count: batch.length })
      for (const doc of docs) this.events.emit('status', this.status(doc))
      if (session !== null) {
        session.exhausted = false
        this.pump(session)
      }
    })
  }

  /** Resolves once every local edit made so far is in the local store. */
  async whenSaved (): Promise<void> {
    await this.ready
    await this.flushLocal()
  }

  // ---- sync ----------------------------------------------------------------

  /** Connects, pushes the outbox, pulls to up_to_date, acks the cursor and
   * disconnects. Errors: {@link TransportError} (the server is unreachable
   * or went away: the outbox is intact), {@link ServerError},
   * {@link UpgradeRequiredError} / {@link SchemaError} (nothing local was
   * touched). */
  async sync (): Promise<SyncReport> {
    await this.ready
    if (this.following) throw new Error('follow() is running on this collection')
    while (this.running !== null) await this.running.catch(() => {})
    const run = this.runSync()
    this.running = run
    try {
      return await run
    } finally {
      this.running = null
    }
  }

  private async runSync (): Promise<SyncReport> {
    await this.whenSaved()
    const counters: Counters = { pulled: 0, pushed: 0, alreadyThere: 0, rejected: 0, reset: null, resetPulled: 0, head: 0 }
    const limit = { id: Infinity }
    let resets = 0
    let pushedBeforeReset = 0
    for (;;) {
      const end = await this.runSession('sync', limit, counters)
      if (end.kind === 'done') break
      if (end.kind === 'reset') {
        if (++resets > MAX_RESETS) throw new TransportError(`the server answered reset ${resets} times in one sync`, 'reset')
        pushedBeforeReset = counters.pushed
        await this.recover(end.frame, counters)
        limit.id = Infinity
        continue
      }
      throw end.error
    }
    await this.epochFetch
    await this.flushLazy()
    const outboxLeft = await this.queue.run(() => this.store.outboxSize(this.name))
    const base = {
      alreadyThere: counters.alreadyThere,
      rejected: counters.rejected,
      followUpNeeded: outboxLeft > 0,
      outboxLeft,
      cursor: this.state.cursor,
      head: counters.head,
      epoch: this.state.epoch
    }
    if (counters.reset !== null) {
      return {
        kind: 'reset',
        reason: counters.reset.reason,
        pulled: counters.resetPulled + counters.pulled,
        pushed: counters.pushed - pushedBeforeReset,
        ...base
      }
    }
    const { pulled, pushed } = counters
    const kind = pulled === 0 ? (pushed === 0 ? 'noop' : 'pushed') : (pushed === 0 ? 'pulled' : 'merged')
    return { kind, pulled, pushed, ...base }
  }

  // ---- follow --------------------------------------------------------------

  /** Stays connected: pushes local edits as they are saved, applies remote
   * changes as they come, reconnects with backoff when the server goes
   * away, recovers after a reset. Ends with {@link Collection.stop}; a fatal
   * error (schema, auth) ends it too and is emitted as 'error'. */
  follow (): void {
    if (this.following) return
    if (this.closedFlag) throw new Error('the collection is closed')
    this.following = true
    this.stopRequested = false
    const loop = this.followLoop()
    this.running = loop
    loop.catch(err => this.events.emit('error', err as Error)).finally(() => {
      if (this.running === loop) this.running = null
      this.following = false
    })
  }

  get isFollowing (): boolean {
    return this.following
  }

  private async followLoop (): Promise<void> {
    await this.ready
    let attempt = 0
    const counters: Counters = { pulled: 0, pushed: 0, alreadyThere: 0, rejected: 0, reset: null, resetPulled: 0, head: 0 }
    for (;;) {
      if (this.stopRequested && Date.now() > this.stopDeadline) return
      const welcomedBefore = this.welcomes
      const end = await this.runSession('follow', { id: Infinity }, counters)
      if (this.welcomes > welcomedBefore) attempt = 0
      if (end.kind === 'done') return
      if (end.kind === 'reset') {
        try {
          await this.recover(end.frame, counters)
          attempt = 0
          continue
        } catch (err) {
          if (err instanceof SchemaError) throw err
          this.events.emit('error', err as Error)
        }
      } else if (end.kind === 'fatal') {
        throw end.error
      }
      if (this.stopRequested && Date.now() > this.stopDeadline) return
      // Lost: wait, then reconnect. A stop() cuts the wait short.
      const delay = Math.min(this.ctx.backoff.maxMs, this.ctx.backoff.minMs * 2 ** attempt)
      attempt = Math.min(attempt + 1, 20)
      const jittered = delay / 2 + Math.random() * delay / 2
      await new Promise<void>(resolve => {
        const timer = setTimeout(resolve, jittered)
        this.wake = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      this.wake = null
    }
  }

  private welcomes = 0
  private stopDeadline = Infinity

  /** Ends {@link Collection.follow}, saying goodbye: every local edit is
   * pushed and confirmed, the stream is read up to the head after that,
   * the cursor is acked, then the socket closes with 1000. Resolves with
   * whether the outbox is empty at the end (after `goodbyeTimeoutMs` the
   * socket is closed anyway and the outbox waits for the next session). */
  async stop (): Promise<{ complete: boolean }> {
    if (!this.following) return { complete: (await this.outboxSize()) === 0 }
    const running = this.running
    this.stopDeadline = Date.now() + this.ctx.goodbyeTimeoutMs
    this.stopRequested = true
    await this.whenSaved().catch(() => {})
    const session = this.session
    if (session !== null) {
      session.finishing = true
      this.pump(session)
      this.checkDone(session)
    }
    this.wake?.()
    const timer = setTimeout(() => {
      const s = this.session
      if (s !== null) this.finishSession(s, { kind: 'lost', error: new TransportError('the goodbye did not complete in time', 'goodbye_timeout') })
      this.wake?.()
    }, this.ctx.goodbyeTimeoutMs + 50)
    try {
      await running?.catch(() => {})
    } finally {
      clearTimeout(timer)
    }
    await this.flushLazy()
    return { complete: (await this.queue.run(() => this.store.outboxSize(this.name))) === 0 }
  }

  /** Resolves when a following collection is caught up: connected, nothing
   * in the outbox or in flight, the stream at the head. */
  whenSynced (): Promise<void> {
    return new Promise(resolve => {
      this.idleWaiters.push(resolve)
      const s = this.session
      if (s !== null) this.checkIdle(s)
    })
  }

  // ---- one socket ------------------------------------------------------------

  private async runSession (mode: 'sync' | 'follow', limit: { id: number }, counters: Counters): Promise<SessionEnd> {
    const session = new Session(mode, limit, counters)
    session.finishing = mode === 'sync' || this.stopRequested
    const ended = new Promise<SessionEnd>(resolve => {
      session.end = resolve
    })
    this.setConnection('connecting')
    let socket: SyncSocket
    try {
      socket = await SyncSocket.open(this.ctx.wsUrl(this.name), this.ctx.WebSocket(), this.ctx.connectTimeoutMs)
    } catch (err) {
      this.setConnection('disconnected')
      return { kind: 'lost', error: err as Error }
    }
    session.socket = socket
    this.session = session
    socket.onFrame = (frame) => this.onFrame(session, frame)
    socket.onClose = (close) => this.onSocketClose(session, close)
    // The hello carries the cursor as stored now (after every queued write).
    await this.queue.run(() => {})
    session.startCursor = this.state.cursor
    session.arrivedThrough = this.state.cursor
    session.ackSent = this.state.cursor
    session.ackAnswered = this.state.cursor
    socket.send({
      type: 'hello',
      peer: this.peerId,
      after: this.state.cursor,
      epoch: this.state.epoch,
      checksum: this.state.checksum,
      schemaVersion: this.schemaVersion,
      docs: []
    })
    const end = await ended
    await this.flushLazy().catch(() => {})
    if (this.session === session) this.session = null
    this.setConnection('disconnected')
    return end
  }

  private setConnection (state: ConnectionState): void {
    if (this.connection === state) return
    this.connection = state
    this.events.emit('connection', { state })
  }

  private finishSession (session: Session, end: SessionEnd): void {
    if (session.ended) return
    session.ended = true
    for (const t of session.retryTimers) clearTimeout(t)
    session.retryTimers.clear()
    if (session.ackTimer !== null) clearTimeout(session.ackTimer)
    session.socket?.close(end.kind === 'done' ? 1000 : 1000)
    // Remote states would go stale unseen; they come back with the next
    // socket's room snapshot.
    for (const presence of this.presences.values()) presence.dropRemote('connection closed')
    session.end(end)
  }

  private onSocketClose (session: Session, close: SocketClose): void {
    if (session.ended) return
    const error = close.error ?? new TransportError(`the sync socket closed (${close.code}${close.reason === '' ? '' : ` ${close.reason}`})`)
    if (close.error !== undefined && close.error.name === 'FrameError') {
      this.finishSession(session, { kind: 'lost', error: close.error })
      return
    }
    this.finishSession(session, { kind: 'lost', error })
  }

  private onFrame (session: Session, frame: ServerFrame): void {
    if (session.ended) return
    switch (frame.type) {
      case 'welcome':
        this.onWelcome(session, frame)
        break
      case 'pushed':
        this.onPushed(session, frame)
        break
      case 'push_error':
        this.onPushError(session, frame)
        break
      case 'changes':
        this.onChanges(session, frame)
        break
      case 'up_to_date':
        this.onUpToDate(session, frame)
        break
      case 'acked':
        session.ackAnswered = Math.max(session.ackAnswered, frame.seq)
        this.checkDone(session)
        break
      case 'reset':
        // The server closes the socket next; recover on our side.
        this.events.emit('reset', { reason: frame.reason, epoch: frame.epoch, head: frame.head })
        this.finishSession(session, { kind: 'reset', frame })
        break
      case 'error':
        this.finishSession(session, this.errorEnd(frame.code, frame.message))
        break
      case 'presence':
        this.onPresence(frame)
        break
      case 'ack_error':
        // Refused, but answered: nothing waits for it any more. Compaction
        // on the server then does not know this peer's cursor (e.g. a token
        // for one document, which carries no `ack` right).
        session.ackAnswered = Math.max(session.ackAnswered, frame.seq)
        this.events.emit('error', new ServerError(frame.code, `the server refused the ack of seq ${frame.seq}: ${frame.message}`))
        this.checkDone(session)
        break
    }
  }

  private errorEnd (code: string, message: string): SessionEnd {
    if (code === 'schema_too_old') {
      return { kind: 'fatal', error: new UpgradeRequiredError(`the server no longer takes schema version ${this.schemaVersion}: upgrade the app (${message})`, this.schemaVersion, undefined, 'schema_too_old') }
    }
    if (code === 'schema_too_new') {
      return { kind: 'fatal', error: new SchemaError('schema_too_new', `this app's schema version ${this.schemaVersion} is newer than the server's: wait for the server (${message})`, this.schemaVersion) }
    }
    const error = new ServerError(code, `the server refused the sync socket: ${code}: ${message}`)
    if (code === 'storage' || code === 'shutting_down' || code === 'internal' || code === 'overloaded') {
      return { kind: 'lost', error }
    }
    return { kind: 'fatal', error }
  }

  private onWelcome (session: Session, frame: WelcomeFrame): void {
    if (this.schemaVersion > 0 && frame.schemaVersion > this.schemaVersion) {
      this.finishSession(session, {
        kind: 'fatal',
        error: new UpgradeRequiredError(`the server's schema version is ${frame.schemaVersion}, this app's ${this.schemaVersion}: upgrade the app (local data is untouched)`, this.schemaVersion, frame.schemaVersion)
      })
      return
    }
    session.welcome = frame
    this.welcomes++
    this.rejoinPresences()
    session.target = Math.max(session.target, frame.head)
    session.counters.head = Math.max(session.counters.head, frame.head)
    session.progress.expected = Math.max(0, frame.head - session.startCursor)
    this.queue.run(async () => {
      if (frame.epoch !== '' && frame.epoch !== this.state.epoch) {
        await this.commit({ state: { epoch: frame.epoch } })
        this.state.epoch = frame.epoch
      }
      session.progress.toPush = await this.store.outboxSize(this.name)
      this.emitProgress(session)
    }).catch(err => this.finishSession(session, { kind: 'lost', error: err as Error }))
    this.setConnection('connected')
    this.pump(session)
  }

  private emitProgress (session: Session): void {
    const p = session.progress
    this.events.emit('progress', { received: Math.min(p.received, p.expected), expected: p.expected, pushed: Math.min(p.pushed, p.toPush), toPush: p.toPush })
  }

  // ---- pushing -------------------------------------------------------------

  private maxInFlight (session: Session): number {
    return Math.max(1, Math.min(MAX_IN_FLIGHT, session.welcome?.maxPushesInFlight ?? 1))
  }

  /** Sends outbox rows until the in-flight limit is reached. */
  private pump (session: Session): void {
    if (session.ended || session.welcome === null) return
    if (session.pumping) {
      session.pumpAgain = true
      return
    }
    session.pumping = true
    this.queue.run(async () => {
      do {
        session.pumpAgain = false
        await this.fill(session)
      } while (session.pumpAgain && !session.ended)
    }).catch(err => {
      this.finishSession(session, { kind: 'lost', error: err as Error })
    }).finally(() => {
      session.pumping = false
      this.checkDone(session)
    })
  }

  private async fill (session: Session): Promise<void> {
    const max = this.maxInFlight(session)
    while (!session.ended && session.inFlight.size < max) {
      const queued = session.requeue.shift()
      if (queued !== undefined) {
        this.send(session, queued)
        continue
      }
      if (session.exhausted) return
      // Read up to PLAN_ROWS rows / PLAN_BYTES, so a document's offline
      // edits are merged into few updates.
      const rows: OutboxEntry[] = []
      let bytes = 0
      while (rows.length < PLAN_ROWS && bytes < PLAN_BYTES) {
        const page = (await this.store.outbox(this.name, session.sentThrough, OUTBOX_PAGE)).filter(r => r.id <= session.limit.id)
        if (page.length === 0) break
        session.sentThrough = (page[page.length - 1] as OutboxEntry).id
        for (const r of page) bytes += r.update.length
        rows.push(...page)
      }
      if (rows.length === 0) {
        session.exhausted = true
        return
      }
      const flights = await this.plan(session, rows)
      session.requeue.push(...flights)
    }
  }

  /** Groups outbox rows per document (merged), then into batches. Rows of
   * documents deleted locally and oversized rows are rejected here. */
  private async plan (session: Session, rows: OutboxEntry[]): Promise<Flight[]> {
    const byDoc = new Map<string, OutboxEntry[]>()
    const deleted: number[] = []
    const oversized: number[] = []
    for (const row of rows) {
      if (this.deletedDocs.has(row.doc)) {
        deleted.push(row.id)
        continue
      }
      if (row.update.length > MAX_UPDATE_BYTES) {
        oversized.push(row.id)
        continue
      }
      let list = byDoc.get(row.doc)
      if (list === undefined) {
        list = []
        byDoc.set(row.doc, list)
      }
      list.push(row)
    }
    if (deleted.length > 0) await this.rejectRows(session, deleted, 'document_deleted', 'the document was deleted')
    if (oversized.length > 0) await this.rejectRows(session, oversized, 'too_large', `an update over ${MAX_UPDATE_BYTES} bytes`)
    const groups: Group[] = []
    for (const [doc, list] of byDoc) {
      let i = 0
      while (i < list.length) {
        let bytes = 0
        let j = i
        while (j < list.length && j - i < MERGE_ROWS) {
          const len = (list[j] as OutboxEntry).update.length
          if (j > i && bytes + len > MERGE_BYTES) break
          bytes += len
          j++
        }
        groups.push(...mergeGroup(doc, list.slice(i, j)))
        i = j
      }
    }
    const flights: Flight[] = []
    let current: Group[] = []
    let bytes = 0
    for (const g of groups) {
      if (current.length > 0 && (current.length >= BATCH_UPDATES || bytes + g.update.length > BATCH_BYTES)) {
        flights.push(this.flight(session, current, 'batch'))
        current = []
        bytes = 0
      }
      current.push(g)
      bytes += g.update.length
    }
    if (current.length > 0) flights.push(this.flight(session, current, 'batch'))
    return flights
  }

  private flight (session: Session, groups: Group[], level: Flight['level']): Flight {
    return { id: session.nextPushId++, groups, level, attempts: 0 }
  }

  private send (session: Session, flight: Flight): void {
    if (flight.groups.length === 1 && flight.level === 'batch') flight.level = 'group'
    if (flight.level === 'group' && flight.groups.length === 1 && (flight.groups[0] as Group).rows.length === 1) flight.level = 'row'
    session.inFlight.set(flight.id, flight)
    const ok = flight.groups.length === 1
      ? session.socket?.send({ type: 'push', id: flight.id, doc: (flight.groups[0] as Group).doc, update: (flight.groups[0] as Group).update })
      : session.socket?.send({ type: 'push_batch', id: flight.id, updates: flight.groups.map(g => ({ doc: g.doc, update: g.update })) })
    if (ok !== true) {
      session.inFlight.delete(flight.id)
      session.requeue.unshift(flight)
    }
  }

  private onPushed (session: Session, frame: PushedFrame): void {
    const flight = session.inFlight.get(frame.id)
    if (flight === undefined) return
    session.inFlight.delete(frame.id)
    session.target = Math.max(session.target, frame.head)
    session.counters.head = Math.max(session.counters.head, frame.head)
    const ids: number[] = []
    const saved = new Map<string, number>()
    flight.groups.forEach((g, i) => {
      const seq = frame.seqs[i] ?? 0
      ids.push(...g.rows)
      if (seq > 0) session.counters.pushed += g.rows.length
      else session.counters.alreadyThere += g.rows.length
      // seq 0: the update added nothing, so all of it is in the log at or
      // before the head.
      const through = seq > 0 ? seq : frame.head
      saved.set(g.doc, Math.max(saved.get(g.doc) ?? 0, through))
    })
    this.queue.run(async () => {
      // Marking rows confirmed can wait for the next commit (at most
      // LAZY_MS): a crash before it only re-sends them, and the server
      // answers seq 0 for what it has.
      this.lazy.pushed.push(...ids)
      for (const [doc, seq] of saved) this.lazy.saved.set(doc, Math.max(this.lazy.saved.get(doc) ?? 0, seq))
      this.scheduleLazy()
      for (const g of flight.groups) {
        const s = this.statusOf(g.doc)
        s.pending = Math.max(0, s.pending - g.rows.length)
      }
      for (const [doc, seq] of saved) {
        const s = this.statusOf(doc)
        s.savedThrough = Math.max(s.savedThrough, seq)
        this.events.emit('status', this.status(doc))
      }
      session.progress.pushed += ids.length
      this.emitProgress(session)
    }).catch(err => this.finishSession(session, { kind: 'lost', error: err as Error }))
      .finally(() => this.pump(session))
  }

  private onPushError (session: Session, frame: PushErrorFrame): void {
    const flight = session.inFlight.get(frame.id)
    if (flight === undefined) return
    session.inFlight.delete(frame.id)
    const { code, message } = frame
    if (code === 'schema_too_old' || code === 'schema_too_new') {
      this.finishSession(session, this.errorEnd(code, message))
      return
    }
    const bisectable = code === 'batch_too_large' || code === 'empty_batch' || PERMANENT_PUSH_CODES.has(code)
    if (bisectable && flight.level === 'batch') {
      // One of the documents is refused: push them one by one.
      session.requeue.unshift(...flight.groups.map(g => this.flight(session, [g], 'group')))
      this.pump(session)
      return
    }
    if (bisectable && flight.level === 'group') {
      // A merged update is refused: find the row.
      const g = flight.groups[0] as Group
      this.queue.run(async () => {
        const rows = await this.outboxRows(g.doc, g.rows)
        const solos = rows.map(r => this.flight(session, [{ doc: r.doc, rows: [r.id], update: r.update }], 'row'))
        session.requeue.unshift(...solos)
      }).catch(err => this.finishSession(session, { kind: 'lost', error: err as Error }))
        .finally(() => this.pump(session))
      return
    }
    if (PERMANENT_PUSH_CODES.has(code) || code === 'batch_too_large' || code === 'empty_batch') {
      const ids = flight.groups.flatMap(g => g.rows)
      this.queue.run(() => this.rejectRows(session, ids, code, message))
        .catch(err => this.finishSession(session, { kind: 'lost', error: err as Error }))
        .finally(() => this.pump(session))
      return
    }
    // Retryable (or unknown): nothing was written; try again later.
    if (!RETRYABLE_PUSH_CODES.has(code)) this.events.emit('error', new ServerError(code, `push refused: ${code}: ${message}`))
    flight.attempts++
    if (session.mode === 'sync' && flight.attempts > SYNC_RETRIES) {
      // Left in the outbox for the next sync (followUpNeeded).
      this.checkDone(session)
      return
    }
    const delay = Math.min(this.ctx.backoff.maxMs, this.ctx.backoff.minMs * 2 ** flight.attempts)
    const timer = setTimeout(() => {
      session.retryTimers.delete(timer)
      session.requeue.push(flight)
      this.pump(session)
    }, delay)
    session.retryTimers.add(timer)
  }

  /** The outbox rows with these ids (of one document). */
  private async outboxRows (doc: string, ids: number[]): Promise<OutboxEntry[]> {
    const wanted = new Set(ids)
    const out: OutboxEntry[] = []
    let after = Math.min(...ids) - 1
    const last = Math.max(...ids)
    while (after < last) {
      const page = await this.store.outbox(this.name, after, OUTBOX_PAGE)
      if (page.length === 0) break
      for (const r of page) if (wanted.has(r.id) && r.doc === doc) out.push(r)
      after = (page[page.length - 1] as OutboxEntry).id
    }
    return out
  }

  /** Moves rows into the rejected record (inside the queue). */
  private async rejectRows (session: Session | null, ids: number[], code: string, message: string): Promise<void> {
    const rejected = await this.store.reject(this.name, ids, code, message)
    this.reportRejected(session, rejected)
  }

  private reportRejected (session: Session | null, rejected: RejectedEntry[]): void {
    const docs = new Set<string>()
    for (const r of rejected) {
      const s = this.statusOf(r.doc)
      s.pending = Math.max(0, s.pending - 1)
      docs.add(r.doc)
      if (session !== null) session.counters.rejected++
    }
    for (const r of rejected) {
      this.events.emit('rejected', r)
      this.events.emit('error', new ServerError(r.code, `an update of ${r.doc} was refused for good (${r.code}: ${r.message}); it is kept in the rejected record`))
    }
    for (const doc of docs) this.events.emit('status', this.status(doc))
  }

  // ---- the stream ------------------------------------------------------------

  private onChanges (session: Session, frame: ChangesFrame): void {
    // Frames that arrive while the store is busy are committed together
    // (up to LOCAL_COMMIT_CHANGES / LOCAL_COMMIT_BYTES per transaction): a
    // catch-up of 260k changes is a few dozen local commits, not a
    // thousand.
    this.applyOnArrival(session, frame)
    session.frames.push(frame)
    if (session.drainScheduled) return
    session.drainScheduled = true
    this.queue.run(() => this.drainFrames(session))
      .catch(err => this.finishSession(session, { kind: 'lost', error: err as Error }))
      .finally(() => this.checkDone(session))
  }

  /** Applies a frame's updates to the live docs as it arrives, before it is
   * stored (the store commit then only moves the cursor with the data):
   * the other client's keystroke shows without waiting for the local
   * disk. Safe: a crash before the commit leaves the cursor before the
   * frame, which is streamed again. Docs applied here are skipped when the
   * frame is stored. */
  private applyOnArrival (session: Session, frame: ChangesFrame): void {
    if (this.schemaVersion > 0 && frame.changes.some(c => c.schemaVersion > this.schemaVersion)) return
    const byDoc = new Map<string, Uint8Array[]>()
    for (const c of frame.changes) {
      if (c.seq <= session.arrivedThrough) continue
      if (c.kind === 'delete' || (c.origin !== '' && c.origin === this.peerId)) continue
      if (!this.live.has(c.doc)) continue
      let list = byDoc.get(c.doc)
      if (list === undefined) {
        list = []
        byDoc.set(c.doc, list)
      }
      list.push(c.payload)
    }
    session.arrivedThrough = Math.max(session.arrivedThrough, frame.through)
    if (byDoc.size === 0) return
    for (const [doc, updates] of byDoc) {
      const live = this.live.get(doc) as LiveDoc
      live.ydoc.transact(() => {
        for (const u of updates) Y.applyUpdate(live.ydoc, u, this.remoteOrigin)
      }, this.remoteOrigin)
    }
    appliedOnArrival.set(frame, new Set(byDoc.keys()))
    this.events.emit('change', { docs: [...byDoc.keys()], source: 'stream' })
  }

  private async drainFrames (session: Session): Promise<void> {
    // Catching up (the stream is not at welcome's head yet): let frames
    // gather for a moment, so a commit covers thousands of changes.
    const catchingUp = (): boolean => session.welcome !== null && this.state.cursor + pendingChanges(session) < session.welcome.head
    if (catchingUp() && pendingChanges(session) < LOCAL_COMMIT_CHANGES) {
      await new Promise(resolve => setTimeout(resolve, CATCH_UP_GATHER_MS))
    }
    while (session.frames.length > 0 && !session.ended) {
      const frames: ChangesFrame[] = []
      let changes = 0
      let bytes = 0
      while (session.frames.length > 0 && changes < LOCAL_COMMIT_CHANGES && bytes < LOCAL_COMMIT_BYTES) {
        const f = session.frames.shift() as ChangesFrame
        frames.push(f)
        changes += f.changes.length
        for (const c of f.changes) bytes += c.payload.length
      }
      await this.applyFrames(session, frames)
    }
    session.drainScheduled = false
  }

  /** Stores frames' changes and their last cursor in one transaction. */
  private async applyFrames (session: Session, frames: ChangesFrame[]): Promise<void> {
    if (this.schemaVersion > 0) {
      for (const frame of frames) {
        const newer = frame.changes.find(c => c.schemaVersion > this.schemaVersion)
        if (newer !== undefined) {
          // Frames before it are fine: keep them.
          const ok = frames.slice(0, frames.indexOf(frame))
          if (ok.length > 0) await this.applyFrames(session, ok)
          this.finishSession(session, {
            kind: 'fatal',
            error: new UpgradeRequiredError(`a change of ${newer.doc} is at schema version ${newer.schemaVersion}, this app's is ${this.schemaVersion}: upgrade the app (nothing of it was stored)`, this.schemaVersion, newer.schemaVersion)
          })
          return
        }
      }
    }
    const remote: Array<{ doc: string, update: Uint8Array | null }> = []
    const toApply: Array<{ doc: string, update: Uint8Array | null }> = []
    let others = 0
    const deletes: string[] = []
    let cursor = this.state.cursor
    let checksum = this.state.checksum
    for (const frame of frames) {
      const applied = appliedOnArrival.get(frame)
      for (const c of frame.changes) {
        if (c.seq <= cursor) continue // already had it
        if (c.origin !== '' && c.origin === this.peerId && c.kind !== 'delete') continue // our own edit, back
        others++
        if (c.kind === 'delete') {
          remote.push({ doc: c.doc, update: null })
          deletes.push(c.doc)
        } else {
          remote.push({ doc: c.doc, update: c.payload })
          if (applied === undefined || !applied.has(c.doc)) toApply.push({ doc: c.doc, update: c.payload })
        }
      }
      if (frame.through > cursor) {
        cursor = frame.through
        checksum = frame.checksum
      }
    }
    if (remote.length === 0 && cursor === this.state.cursor) return
    if (remote.length === 0) {
      // Only our own changes came back: the cursor moves in memory now and
      // in the store with the next commit (a crash before it re-reads them,
      // and they are skipped again).
      this.state.cursor = cursor
      this.state.checksum = checksum
      this.lazy.state = { cursor, checksum }
      this.scheduleLazy()
      session.progress.received = cursor - session.startCursor
      this.emitProgress(session)
      this.scheduleAck(session)
      return
    }
    const res = await this.commit({ remote, state: { cursor, checksum } })
    this.state.cursor = cursor
    this.state.checksum = checksum
    session.counters.pulled += others
    for (const { doc, update } of remote) if (update !== null) this.deletedDocs.delete(doc)
    this.applyToLive(toApply, 'stream')
    if (deletes.length > 0) this.afterDeletes(deletes, res.rejected, session)
    session.progress.received = cursor - session.startCursor
    this.emitProgress(session)
    this.scheduleAck(session)
  }

  /** Applies stored remote updates to the live docs, one transaction per
   * document. */
  private applyToLive (remote: Array<{ doc: string, update: Uint8Array | null }>, source: 'stream' | 'recovery'): void {
    const byDoc = new Map<string, Uint8Array[]>()
    for (const { doc, update } of remote) {
      if (update === null) continue
      this.deletedDocs.delete(doc)
      let list = byDoc.get(doc)
      if (list === undefined) {
        list = []
        byDoc.set(doc, list)
      }
      list.push(update)
    }
    for (const [doc, updates] of byDoc) {
      const live = this.live.get(doc)
      if (live === undefined) continue
      live.ydoc.transact(() => {
        for (const u of updates) Y.applyUpdate(live.ydoc, u, this.remoteOrigin)
      }, this.remoteOrigin)
    }
    if (byDoc.size > 0) this.events.emit('change', { docs: [...byDoc.keys()], source })
  }

  private afterDeletes (docs: string[], rejected: RejectedEntry[], session: Session | null = null): void {
    for (const doc of docs) {
      this.deletedDocs.add(doc)
      this.events.emit('deleted', { doc })
    }
    this.reportRejected(session, rejected)
  }

  private onUpToDate (session: Session, frame: UpToDateFrame): void {
    this.queue.run(async () => {
      if (session.ended) return
      if (frame.head > this.state.cursor) {
        // Changes after the cursor that the stream did not send (filtered
        // or compacted away): the cursor moves past them.
        const checksum = frame.checksum
        await this.commit({ state: { cursor: frame.head, checksum } })
        this.state.cursor = frame.head
        this.state.checksum = checksum
        this.scheduleAck(session)
      }
      if (this.state.epoch === '' && this.state.cursor > 0 && !this.fetchingEpoch) this.learnEpoch()
      session.upToDate = Math.max(session.upToDate, frame.head)
      session.counters.head = Math.max(session.counters.head, frame.head)
      session.progress.received = session.progress.expected
      this.emitProgress(session)
    }).catch(err => this.finishSession(session, { kind: 'lost', error: err as Error }))
      .finally(() => this.checkDone(session))
  }

  private fetchingEpoch = false
  private epochFetch: Promise<void> = Promise.resolve()

  /** The collection was created during this session (welcome had no
   * epoch, and no frame carries it since): ask for it over HTTP, so the
   * next hello names the cursor's epoch. */
  private learnEpoch (): void {
    this.fetchingEpoch = true
    this.epochFetch = this.ctx.http.epoch(this.name).then(epoch => this.queue.run(async () => {
      if (epoch === null || this.state.epoch !== '') return
      await this.commit({ state: { epoch } })
      this.state.epoch = epoch
    })).catch(() => {}).finally(() => { this.fetchingEpoch = false })
  }

  private scheduleAck (session: Session): void {
    if (session.mode === 'sync' || session.finishing) return // acked once at the end
    if (session.ackTimer !== null) return
    session.ackTimer = setTimeout(() => {
      session.ackTimer = null
      this.sendAck(session)
    }, this.ctx.ackDelayMs)
  }

  private sendAck (session: Session): void {
    if (session.ended || this.peerId === '') return
    if (this.state.cursor <= session.ackSent) return
    // Ack only what is stored: flush the lazy cursor first.
    const seq = this.state.cursor
    session.ackSent = seq
    this.flushLazy().then(() => {
      if (session.socket?.send({ type: 'ack', seq }) !== true) session.ackSent = Math.min(session.ackSent, session.ackAnswered)
    }, () => {
      session.ackSent = session.ackAnswered
    })
  }

  /** Ends a finishing session once everything is confirmed and received,
   * and wakes whenSynced() waiters. */
  private checkDone (session: Session): void {
    if (session.ended || session.welcome === null) return
    this.checkIdle(session)
    if (!session.finishing) return
    if (!this.settled(session)) return
    // Everything pushed is confirmed, the stream reached the head: ack.
    if (this.state.cursor > session.ackSent) {
      this.sendAck(session)
      return // the acked answer calls checkDone again
    }
    if (session.ackAnswered < session.ackSent) return
    this.finishSession(session, { kind: 'done' })
  }

  /** Nothing in flight or to send, and the stream at the target head. */
  private settled (session: Session): boolean {
    return session.exhausted &&
      !session.pumping &&
      session.inFlight.size === 0 &&
      session.requeue.length === 0 &&
      session.upToDate >= session.target &&
      this.unsaved.length === 0 &&
      session.retryTimers.size === 0
  }

  private checkIdle (session: Session): void {
    if (this.idleWaiters.length === 0 || !this.settled(session)) return
    if (session.retryTimers.size > 0) return
    const waiters = this.idleWaiters
    this.idleWaiters = []
    for (const w of waiters) w()
  }

  // ---- reset -----------------------------------------------------------------

  /** After a reset: send every local document's state vector, apply the
   * server's answers, adopt its cursor and epoch, and queue every local
   * document's whole state for pushing back (the server logs only what it
   * lacks). Nothing local is lost. */
  private async recover (frame: ResetFrame, counters: Counters): Promise<void> {
    await this.whenSaved()
    await this.flushLazy()
    // One queued task, the request included: no local write lands between
    // the state vectors sent and the outbox superseded (edits made
    // meanwhile wait in memory and are written after).
    await this.queue.run(async () => {
      const locals = new Map<string, Y.Doc>()
      for (const info of await this.store.documents(this.name)) {
        if (info.deleted) continue
        const ydoc = new Y.Doc()
        Y.applyUpdate(ydoc, documentUpdate(await this.store.loadDocument(this.name, info.doc)))
        locals.set(info.doc, ydoc)
      }
      const svs = new Map<string, Uint8Array>()
      for (const [doc, ydoc] of locals) svs.set(doc, Y.encodeStateVector(ydoc))
      const answer = await this.ctx.http.recover(this.name, svs)
      if (this.schemaVersion > 0 && answer.schemaVersion > this.schemaVersion) {
        throw new UpgradeRequiredError(`the server's schema version is ${answer.schemaVersion}, this app's ${this.schemaVersion}: upgrade the app (local data is untouched)`, this.schemaVersion, answer.schemaVersion)
      }
      let changed = 0
      const remote: Array<{ doc: string, update: Uint8Array | null }> = []
      for (const { doc, update } of answer.documents) {
        remote.push({ doc, update })
        const ydoc = locals.get(doc)
        if (ydoc === undefined) {
          changed++
          continue
        }
        let did = false
        const onUpdate = (): void => { did = true }
        ydoc.on('update', onUpdate)
        Y.applyUpdate(ydoc, update)
        ydoc.off('update', onUpdate)
        if (did) changed++
      }
      const deleted = new Set(answer.deleted)
      const newlyDeleted = answer.deleted.filter(d => !this.deletedDocs.has(d))
      for (const doc of answer.deleted) remote.push({ doc, update: null })
      // Push back every local document whole: the server logs only what
      // it lacks (an update that adds nothing is answered with seq 0).
      const local: Array<{ doc: string, update: Uint8Array }> = []
      for (const [doc, ydoc] of locals) {
        if (deleted.has(doc)) continue
        local.push({ doc, update: Y.encodeStateAsUpdate(ydoc) })
      }
      const epoch = answer.epoch ?? ''
      const res = await this.store.commit(this.name, {
        remote,
        local,
        supersedeOutbox: true,
        state: { cursor: answer.cursor, epoch, checksum: '' }
      })
      this.state = { cursor: answer.cursor, epoch, checksum: '' }
      for (const s of this.statuses.values()) {
        s.savedThrough = 0
        s.pending = s.unsaved
      }
      for (const { doc } of local) this.statusOf(doc).pending++
      this.applyToLive(remote, 'recovery')
      this.afterDeletes(newlyDeleted, res.rejected)
      counters.reset = frame
      counters.resetPulled += changed
      for (const s of this.statuses.values()) this.events.emit('status', this.status(s.doc))
    })
  }

  /** Stops following (with the goodbye) and forgets the live docs and
   * their presence (the socket's close removes it for everyone). */
  async close (): Promise<void> {
    if (this.closedFlag) return
    this.closedFlag = true
    for (const presence of [...this.presences.values()]) presence.destroy()
    await this.stop().catch(() => {})
    await this.whenSaved().catch(() => {})
    while (this.running !== null) await this.running.catch(() => {})
    this.tabs?.close()
    for (const { ydoc } of this.live.values()) ydoc.destroy()
    this.live.clear()
  }
}

/** Per changes frame, the documents applied to live docs on arrival. */
const appliedOnArrival = new WeakMap<ChangesFrame, Set<string>>()

function pendingChanges (session: Session): number {
  let n = 0
  for (const f of session.frames) n += f.changes.length
  return n
}

/** Merges a document's rows into one update; rows that do not merge (a
 * broken update) are pushed alone, so the server refuses only them. */
function mergeGroup (doc: string, rows: OutboxEntry[]): Group[] {
  if (rows.length === 1) {
    const r = rows[0] as OutboxEntry
    return [{ doc, rows: [r.id], update: r.update }]
  }
  try {
    return [{ doc, rows: rows.map(r => r.id), update: Y.mergeUpdates(rows.map(r => r.update)) }]
  } catch {
    return rows.map(r => ({ doc, rows: [r.id], update: r.update }))
  }
}
