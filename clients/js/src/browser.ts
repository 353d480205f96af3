/**
 * `@seqsync/client/browser`: the local store in a browser tab — SQLite
 * compiled to WebAssembly on the origin private file system (OPFS), run in
 * a dedicated worker (`browser-worker.ts`) with the same SQL core as the
 * Node and React Native stores (`sqlstore.ts`); each store call is one
 * message to it. A reload, online or offline, finds every document, the
 * cursor, the epoch and the outbox where the last committed transaction
 * left them.
 *
 * Why `@sqlite.org/sqlite-wasm` on OPFS and not sql.js on IndexedDB: sql.js
 * keeps the whole database in memory and persists it by writing the whole
 * file back (to IndexedDB), so "saved on this device" would cost a write
 * of the whole database per burst of edits, and a tab killed between two
 * of those loses what came after the last one. The SQLite project's build
 * writes pages in place through OPFS synchronous access handles and flushes
 * at each commit, like SQLite on any disk: the same durability rule as the
 * other stores. Its "opfs-sahpool" VFS needs no cross-origin-isolation
 * headers (a host can serve the app as it is).
 *
 * Several tabs: that VFS holds its files exclusively (one worker at a
 * time), and a client's cursor, peer id and outbox describe one sync loop,
 * so two live clients must never share one database. Each tab therefore
 * takes a *slot*: slot k is a database of its own in the directory
 * `.seqsync/NAME/k`, owned by whoever holds the Web Lock
 * `seqsync-store:NAME:k`. A reloaded tab takes the slot it held before
 * (remembered in its sessionStorage), waiting a moment for the old page to
 * let go of it; a new tab takes the lowest free slot (a lone tab gets
 * slot 0, with everything in it; a second tab opened beside it, slot 1).
 * Every slot is a full client of its own (its own peer id, cursor and
 * outbox), so tabs never corrupt each other's store; a client on this
 * store relays its edits to the other tabs at once, offline too (its
 * `tabChannel`, see `tabs.ts`).
 *
 * Adoption: an edit saved in slot 1 while offline must not wait for a
 * second tab to be opened again. When a tab opens its store, it takes the
 * lock of every other free slot in turn and moves that slot's outbox into
 * its own (one transaction here, then one there: a crash in between leaves
 * the edit in both outboxes, and pushing a Yjs update twice changes
 * nothing). So whichever tab opens next pushes what any closed tab saved.
 */
import type {
  CollectionState, CommitResult, DocumentInfo, OutboxEntry, RejectedEntry, SeqsyncStore, StoreOptions, StoreWrite, StoredDocument
} from './store.js'
import { SeqsyncError } from './errors.js'

export interface BrowserStoreOptions extends StoreOptions {
  /** Names the store within the origin (default `seqsync`): two apps on
   * one origin pick different names. */
  name?: string
  /** The URL of the bundled worker script (`@seqsync/client/browser-worker`
   * built as a module worker), or a function that starts it. */
  worker: string | URL | (() => WorkerLike)
  /** How many tabs may hold a store at once (default 8). The tab past the
   * last gets a {@link BrowserStoreError} `store_busy`. */
  maxTabs?: number
  /** `normal` (default) or `full`. The database keeps a rollback journal
   * (see browser-worker.ts for why not WAL): every commit is written to the
   * database file and flushed before the transaction returns, with either
   * setting; `full` adds flushes of the journal. */
  synchronous?: 'normal' | 'full'
  /** How long one store call (a commit, a load) may take before the store
   * reports the worker as stuck (default 30,000 ms). */
  callTimeoutMs?: number
}

/** A browser store's failure: `store_busy` (every slot is held by another
 * tab), `no_locks` (no Web Locks API: not a secure context?),
 * `worker_failed` (the worker could not start or open the files),
 * `store_closed`, `call_timeout`, or `sqlite` (a statement failed; the
 * transaction it belonged to was rolled back). */
export class BrowserStoreError extends SeqsyncError {
  constructor (code: string, message: string) {
    super(code, message)
    this.name = 'BrowserStoreError'
  }
}

/** The part of `Worker` the store uses. */
export interface WorkerLike {
  postMessage: (message: unknown) => void
  terminate: () => void
  onmessage: ((event: { data: unknown }) => void) | null
  onerror: ((event: { message?: string }) => void) | null
}

/** A browser store: a {@link SeqsyncStore} plus which slot it holds. Its
 * methods run in the worker, one message each. */
export interface BrowserStore extends SeqsyncStore {
  /** The slot this tab holds (0 for the first tab). */
  readonly slot: number
  /** Outbox rows moved in from other slots when the store opened. */
  readonly adopted: number
  /** The store's name: a client on this store relays its local edits to
   * the other tabs holding the same name (`SeqsyncClientOptions.tabChannel`). */
  readonly tabChannel: string
}

interface LockManagerLike {
  request: (name: string, options: { ifAvailable?: boolean, signal?: AbortSignal }, callback: (lock: unknown) => Promise<unknown>) => Promise<unknown>
}

interface Reply { id: number, ok: boolean, value?: unknown, name?: string, message?: string }

const DEFAULT_MAX_TABS = 8
/** Slots past this are refused whatever `maxTabs` says (each slot is a
 * worker and a WebAssembly instance while it is adopted). */
const MAX_SLOTS = 64
const DEFAULT_CALL_TIMEOUT_MS = 30_000
/** Outbox rows moved per transaction while adopting a slot. */
const ADOPT_BATCH_ROWS = 500
/** How long a reloaded tab waits for the slot it held before the reload
 * (the old page lets go of its lock as it is torn down, a moment after
 * the new page starts). */
const RELOAD_WAIT_MS = 3_000

function locks (): LockManagerLike {
  const nav = (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator
  if (nav?.locks === undefined) {
    throw new BrowserStoreError('no_locks', 'the Web Locks API is missing (navigator.locks): the store needs a secure context (https or localhost) in a current browser')
  }
  return nav.locks
}

/** A held Web Lock: `release()` lets it go. */
interface Held { release: () => void }

/** Takes lock `name` if nobody holds it; undefined otherwise. With
 * `waitMs`, waits that long for it instead. */
async function tryLock (name: string, waitMs = 0): Promise<Held | undefined> {
  let release: () => void = () => {}
  const released = new Promise<void>(resolve => { release = resolve })
  const options = waitMs > 0 ? { signal: AbortSignal.timeout(waitMs) } : { ifAvailable: true }
  const acquired = await new Promise<boolean>((resolve, reject) => {
    locks().request(name, options, async (lock) => {
      if (lock === null) { resolve(false); return }
      resolve(true)
      await released
    }).catch((err: unknown) => {
      // The wait timed out: somebody else holds it.
      if (waitMs > 0 && (err as { name?: string }).name === 'TimeoutError') resolve(false)
      else reject(err)
    })
  })
  return acquired ? { release } : undefined
}

const lockName = (name: string, slot: number): string => `seqsync-store:${name}:${slot}`

/** The slot this tab held before a reload (sessionStorage is per tab and
 * survives a reload), so a reloaded tab gets its own store back and not
 * the next free one. */
function rememberedSlot (name: string): number | undefined {
  try {
    const value = (globalThis as { sessionStorage?: { getItem: (k: string) => string | null } }).sessionStorage?.getItem(lockName(name, -1))
    const slot = value === null || value === undefined ? NaN : Number(value)
    return Number.isInteger(slot) && slot >= 0 ? slot : undefined
  } catch {
    return undefined // storage blocked: scan from slot 0
  }
}

function rememberSlot (name: string, slot: number): void {
  try {
    (globalThis as { sessionStorage?: { setItem: (k: string, v: string) => void } }).sessionStorage?.setItem(lockName(name, -1), String(slot))
  } catch {
    // storage blocked: the next reload scans from slot 0
  }
}

/** The store as the page sees it: each method one message to the worker
 * (`browser-worker.ts`), which runs it on the SQL core over SQLite. */
class WorkerStore implements SeqsyncStore {
  private readonly worker: WorkerLike
  private readonly pending = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void, timer: ReturnType<typeof setTimeout> }>()
  private nextId = 1
  private failed: BrowserStoreError | null = null
  private readonly timeoutMs: number
  private readonly onClose: () => void

  constructor (worker: WorkerLike, timeoutMs: number, onClose: () => void) {
    this.worker = worker
    this.timeoutMs = timeoutMs
    this.onClose = onClose
    worker.onmessage = (event) => {
      const reply = event.data as Reply
      const waiting = this.pending.get(reply.id)
      if (waiting === undefined) return
      this.pending.delete(reply.id)
      clearTimeout(waiting.timer)
      if (reply.ok) waiting.resolve(reply.value)
      else waiting.reject(new BrowserStoreError('sqlite', `${reply.name ?? 'Error'}: ${reply.message ?? ''}`))
    }
    worker.onerror = (event) => {
      this.fail(new BrowserStoreError('worker_failed', `the store's worker failed: ${event.message ?? 'unknown error'} (is the worker URL right, and sqlite3.wasm served next to it?)`))
    }
  }

  private fail (error: BrowserStoreError): void {
    if (this.failed !== null) return
    this.failed = error
    for (const waiting of this.pending.values()) {
      clearTimeout(waiting.timer)
      waiting.reject(error)
    }
    this.pending.clear()
  }

  request (message: Record<string, unknown>): Promise<unknown> {
    if (this.failed !== null) return Promise.reject(this.failed)
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new BrowserStoreError('call_timeout', `the store's worker did not answer within ${this.timeoutMs} ms`))
      }, this.timeoutMs)
      this.pending.set(id, { resolve, reject, timer })
      this.worker.postMessage({ ...message, id })
    })
  }

  private async call<T> (method: keyof SeqsyncStore, args: unknown[]): Promise<T> {
    return await this.request({ op: 'call', method, args }) as T
  }

  getKv (collection: string, key: string): Promise<string | undefined> { return this.call('getKv', [collection, key]) }
  setKv (collection: string, key: string, value: string): Promise<void> { return this.call('setKv', [collection, key, value]) }
  state (collection: string): Promise<CollectionState> { return this.call('state', [collection]) }
  documents (collection: string): Promise<DocumentInfo[]> { return this.call('documents', [collection]) }
  loadDocument (collection: string, doc: string): Promise<StoredDocument | undefined> { return this.call('loadDocument', [collection, doc]) }
  commit (collection: string, write: StoreWrite): Promise<CommitResult> { return this.call('commit', [collection, write]) }
  outbox (collection: string, afterId: number, limit: number): Promise<OutboxEntry[]> { return this.call('outbox', [collection, afterId, limit]) }
  outboxSize (collection: string): Promise<number> { return this.call('outboxSize', [collection]) }
  reject (collection: string, ids: number[], code: string, message: string): Promise<RejectedEntry[]> { return this.call('reject', [collection, ids, code, message]) }
  rejected (collection: string): Promise<RejectedEntry[]> { return this.call('rejected', [collection]) }
  compact (collection: string, doc?: string): Promise<void> { return this.call('compact', doc === undefined ? [collection] : [collection, doc]) }

  /** The collections whose outbox has rows (for adoption). */
  outboxCollections (): Promise<string[]> { return this.request({ op: 'outboxCollections' }) as Promise<string[]> }

  async close (): Promise<void> {
    if (this.failed === null) {
      await this.call('close', []).catch(() => {})
      this.fail(new BrowserStoreError('store_closed', 'the store is closed'))
    }
    this.worker.terminate()
    this.onClose()
  }
}

function startWorker (spec: BrowserStoreOptions['worker']): WorkerLike {
  if (typeof spec === 'function') return spec()
  const WorkerCtor = (globalThis as { Worker?: new (url: string | URL, options: { type: 'module', name?: string }) => WorkerLike }).Worker
  if (WorkerCtor === undefined) throw new BrowserStoreError('worker_failed', 'this environment has no Worker')
  return new WorkerCtor(spec, { type: 'module', name: 'seqsync-store' })
}

/** Opens slot `slot` (its lock already held): its worker and store. */
async function openSlot (name: string, slot: number, held: Held, options: BrowserStoreOptions): Promise<WorkerStore> {
  let worker: WorkerLike
  try {
    worker = startWorker(options.worker)
  } catch (err) {
    held.release()
    throw err instanceof BrowserStoreError ? err : new BrowserStoreError('worker_failed', String(err))
  }
  const store = new WorkerStore(worker, options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS, () => held.release())
  try {
    await store.request({
      op: 'open',
      pool: `seqsync-${name}-${slot}`,
      directory: `.seqsync/${name}/${slot}`,
      synchronous: options.synchronous ?? 'normal',
      options: { compactAfterUpdates: options.compactAfterUpdates, compactAfterBytes: options.compactAfterBytes }
    })
  } catch (err) {
    await store.close()
    const message = err instanceof Error ? err.message : String(err)
    throw new BrowserStoreError('worker_failed', `could not open the local store (slot ${slot}): ${message}`)
  }
  return store
}

/** Whether slot `slot` was ever opened (its OPFS directory exists):
 * starting a worker only to find an empty slot costs a WebAssembly start. */
async function slotExists (name: string, slot: number): Promise<boolean> {
  const storage = (globalThis as { navigator?: { storage?: { getDirectory?: () => Promise<DirectoryLike> } } }).navigator?.storage
  if (storage?.getDirectory === undefined) return true // cannot tell: look inside
  try {
    let dir = await storage.getDirectory()
    for (const part of ['.seqsync', name, String(slot)]) dir = await dir.getDirectoryHandle(part)
    return true
  } catch {
    return false // NotFoundError: never used
  }
}

interface DirectoryLike { getDirectoryHandle: (name: string) => Promise<DirectoryLike> }

/** Moves the outbox of every free slot but `own` into `target`. */
async function adoptFreeSlots (name: string, own: number, slots: number, target: WorkerStore, options: BrowserStoreOptions): Promise<number> {
  let moved = 0
  for (let slot = 0; slot < slots; slot++) {
    if (slot === own || !(await slotExists(name, slot))) continue
    const held = await tryLock(lockName(name, slot))
    if (held === undefined) continue // a live tab: it pushes its own outbox
    const store = await openSlot(name, slot, held, options)
    try {
      for (const collection of await store.outboxCollections()) {
        for (;;) {
          const rows = await store.outbox(collection, 0, ADOPT_BATCH_ROWS)
          if (rows.length === 0) break
          await target.commit(collection, { local: rows.map(r => ({ doc: r.doc, update: r.update })) })
          await store.commit(collection, { pushed: rows.map(r => r.id) })
          moved += rows.length
        }
      }
    } finally {
      await store.close()
    }
  }
  return moved
}

/**
 * Opens this tab's store: takes the slot this tab held before a reload, or
 * else the lowest free one (Web Locks), starts the worker on it, then moves
 * the outbox of every other free slot into it. Resolves once the store is ready; `close()` ends the worker and
 * frees the slot (closing the page does too).
 *
 * Errors: {@link BrowserStoreError} `store_busy` when `maxTabs` tabs hold
 * one already, `no_locks`, `worker_failed`.
 */
export async function browserStore (options: BrowserStoreOptions): Promise<BrowserStore> {
  const name = options.name ?? 'seqsync'
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) {
    throw new BrowserStoreError('invalid_name', `store name ${JSON.stringify(name)}: use 1 to 64 letters, digits, '.', '_' or '-'`)
  }
  const slots = Math.min(Math.max(1, options.maxTabs ?? DEFAULT_MAX_TABS), MAX_SLOTS)
  // The slot held before a reload first (waiting for it), then the lowest
  // free one.
  const previous = rememberedSlot(name)
  const candidates: Array<{ slot: number, waitMs: number }> = []
  if (previous !== undefined && previous < slots) candidates.push({ slot: previous, waitMs: RELOAD_WAIT_MS })
  for (let slot = 0; slot < slots; slot++) if (slot !== previous) candidates.push({ slot, waitMs: 0 })
  for (const { slot, waitMs } of candidates) {
    const held = await tryLock(lockName(name, slot), waitMs)
    if (held === undefined) continue
    rememberSlot(name, slot)
    const store = await openSlot(name, slot, held, options)
    let adopted = 0
    try {
      adopted = await adoptFreeSlots(name, slot, slots, store, options)
    } catch (err) {
      await store.close()
      throw err
    }
    return Object.assign(store, { slot, adopted, tabChannel: name }) as BrowserStore
  }
  throw new BrowserStoreError('store_busy', `all ${slots} slots of store "${name}" are held by other tabs; close one, or raise maxTabs`)
}
