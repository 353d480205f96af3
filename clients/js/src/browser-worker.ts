/**
 * `@seqsync/client/browser-worker`: the dedicated worker that holds a
 * browser store: its SQLite database and the SQL store core
 * (`sqlstore.ts`) over it. The page never touches SQLite itself:
 * `browserStore()` (`@seqsync/client/browser`) starts this script as a
 * module worker and sends it one message per store call (`commit`,
 * `loadDocument`, …), not per statement: a commit of a page of changes is
 * one round trip, and its merging and folding (Yjs) run here, off the
 * page's thread.
 *
 * Why a worker: the store is SQLite compiled to WebAssembly
 * (`@sqlite.org/sqlite-wasm`, the SQLite project's own build) on the
 * origin private file system through its "opfs-sahpool" VFS. That VFS
 * writes with synchronous access handles, which browsers hand out only to
 * dedicated workers; in exchange it needs no cross-origin-isolation
 * headers, and writes go to the file in place (a handle's `write()`; its
 * `flush()` is SQLite's `xSync`), so a committed transaction survives the
 * tab being killed, as SQLite on any disk does. It also holds its files
 * exclusively: one worker per pool at a time, which is what the page's Web
 * Lock (one per slot, see `browser.ts`) guarantees.
 *
 * Bundling: an app bundles this file as a module worker of its own
 * (`new Worker(new URL('…/browser-worker.js', import.meta.url), { type:
 * 'module' })` with Vite or webpack) and serves `sqlite3.wasm` from
 * `@sqlite.org/sqlite-wasm/sqlite3.wasm` next to the bundle (the package
 * looks for it relative to its own module URL).
 *
 * Messages (all fields plain data, answered in order):
 * - `{ id, op: 'open', pool, directory, synchronous, options }` → `{ id, ok: true }`
 * - `{ id, op: 'call', method, args }` → `{ id, ok: true, value }`: one
 *   {@link SeqsyncStore} method (`close` included)
 * - `{ id, op: 'outboxCollections' }` → the collections with outbox rows
 * - any failure → `{ id, ok: false, name, message }`
 */
import sqlite3InitModule, { type Database, type PreparedStatement, type SAHPoolUtil, type SqlValue as WasmValue } from '@sqlite.org/sqlite-wasm'
import { type SqlConnection, type SqlValue, SqlStore } from './sqlstore.js'
import type { SeqsyncStore, StoreOptions } from './store.js'

/** The one database file inside the pool. */
const DB_FILE = '/seqsync.sqlite3'
/** Prepared statements kept per database (the core uses a few dozen). */
const MAX_CACHED_STATEMENTS = 128
/** Opening retries while the pool's files are still held by a worker
 * that is going away (a reload: the old page's worker ends a moment after
 * the new page has the lock). */
const OPEN_ATTEMPTS = 40
const OPEN_RETRY_MS = 100

/** The store methods the page may call. */
const METHODS = new Set<keyof SeqsyncStore>(['getKv', 'setKv', 'state', 'documents', 'loadDocument', 'commit',
  'outbox', 'outboxSize', 'reject', 'rejected', 'compact', 'close'])

type Request =
  | { id: number, op: 'open', pool: string, directory: string, synchronous: 'normal' | 'full', options: StoreOptions }
  | { id: number, op: 'call', method: keyof SeqsyncStore, args: unknown[] }
  | { id: number, op: 'outboxCollections' }

interface WorkerScope {
  onmessage: ((event: { data: Request }) => void) | null
  postMessage: (message: unknown) => void
}
const scope = globalThis as unknown as WorkerScope

let db: Database | null = null
let pool: SAHPoolUtil | null = null
let store: SqlStore | null = null
/** `sqlite3_last_insert_rowid()` as a C call (`SELECT last_insert_rowid()`
 * would prepare a statement per insert). Set by `open`. */
let lastInsertRowid: (d: Database) => number = () => 0
const statements = new Map<string, PreparedStatement>()

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

async function open (poolName: string, directory: string, synchronous: 'normal' | 'full', options: StoreOptions): Promise<void> {
  if (db !== null) throw new Error('the store is already open in this worker')
  const sqlite3 = await sqlite3InitModule()
  lastInsertRowid = (d: Database) => Number(sqlite3.capi.sqlite3_last_insert_rowid(d))
  let lastError: unknown = null
  for (let attempt = 0; attempt < OPEN_ATTEMPTS; attempt++) {
    try {
      pool = await sqlite3.installOpfsSAHPoolVfs({ name: poolName, directory, initialCapacity: 6 })
      break
    } catch (err) {
      lastError = err
      await sleep(OPEN_RETRY_MS)
    }
  }
  if (pool === null) {
    throw new Error(`could not open the local store's files (${directory}): ${String(lastError)}; ` +
      'another worker holds them, or the browser has no origin private file system here')
  }
  db = new pool.OpfsSAHPoolDb(DB_FILE)
  // A rollback journal, not WAL. This VFS has no shared memory; WAL would
  // need exclusive locking mode (the WAL index in this worker's heap), and
  // that lost committed transactions across a reload in Chromium (two tabs
  // reloading at once: demo/test/notes.test.js caught it 3 runs of 3),
  // while the journal keeps every commit in the database file itself.
  // Exclusive locking all the same (this worker is the slot's only user):
  // SQLite then keeps its lock, its page cache and the journal file open
  // between transactions — opening 200 documents took 274 ms instead of
  // 734 ms — and the same two-tab test passes.
  // 64 KiB pages (a new database only): OPFS access handles cost per call,
  // and a catch-up writes megabytes. The 1,000-document cold start took
  // 19.3 s with 4 KiB pages, 13.0 s with 16 KiB, 8.5 s with 64 KiB, for an
  // edit-to-saved p50 of 14.9, 14.2 and 17.4 ms (demo/bench/browser.js, one
  // session).
  db.exec('PRAGMA page_size = 65536')
  db.exec('PRAGMA locking_mode = EXCLUSIVE')
  db.exec('PRAGMA journal_mode = TRUNCATE')
  db.exec('PRAGMA cache_size = -32768') // 32 MiB, as in Node: a large catch-up commit does not spill
  db.exec(`PRAGMA synchronous = ${synchronous === 'full' ? 'FULL' : 'NORMAL'}`)
  store = new SqlStore(connection, options)
}

/** The SQL core's connection: SQLite runs synchronously in this worker. */
const connection: SqlConnection = {
  run: async (sql: string, params: SqlValue[]) => {
    runStatement(sql, params, false)
    return lastInsertRowid(database())
  },
  all: async (sql: string, params: SqlValue[]) => runStatement(sql, params, true) as Array<Record<string, SqlValue>>,
  exec: async (sql: string) => { database().exec(sql) },
  close: async () => {
    for (const s of statements.values()) s.finalize()
    statements.clear()
    db?.close()
    db = null
    // Releases the pool's access handles at once, so the next page (or
    // the next user of the slot) need not wait for this worker to end.
    pool?.pauseVfs()
    pool = null
  }
}

function openStore (): SqlStore {
  if (store === null) throw new Error('the store is not open (or was closed)')
  return store
}

function database (): Database {
  if (db === null) throw new Error('the store is not open (or was closed)')
  return db
}

function prepared (sql: string): PreparedStatement {
  let stmt = statements.get(sql)
  if (stmt === undefined) {
    if (statements.size >= MAX_CACHED_STATEMENTS) {
      for (const s of statements.values()) s.finalize()
      statements.clear()
    }
    stmt = database().prepare(sql)
    statements.set(sql, stmt)
  }
  return stmt
}

/** Binds `params` (BLOBs as Uint8Array) and steps through every row. */
function runStatement (sql: string, params: unknown[], collect: boolean): Array<Record<string, WasmValue>> {
  const stmt = prepared(sql)
  const rows: Array<Record<string, WasmValue>> = []
  try {
    if (params.length > 0) stmt.bind(params as WasmValue[])
    while (stmt.step()) {
      if (collect) rows.push(stmt.get({}) as Record<string, WasmValue>)
    }
  } finally {
    stmt.reset(true)
  }
  return rows
}

async function handle (request: Request): Promise<unknown> {
  switch (request.op) {
    case 'open':
      await open(request.pool, request.directory, request.synchronous, request.options)
      return null
    case 'call': {
      if (!METHODS.has(request.method)) throw new Error(`no store method ${String(request.method)}`)
      const target = openStore()
      const method = target[request.method] as (...args: unknown[]) => Promise<unknown>
      const value = await method.apply(target, request.args)
      if (request.method === 'close') store = null
      return value
    }
    case 'outboxCollections': {
      await openStore().outboxSize('') // the schema exists once this returns
      const rows = runStatement('SELECT DISTINCT collection FROM updates WHERE status = 0', [], true)
      return rows.map(r => String(r.collection))
    }
  }
}

// One request at a time, in arrival order: `open` must finish before any
// call, and the SQL core serializes its transactions anyway.
let queue: Promise<unknown> = Promise.resolve()
scope.onmessage = (event) => {
  const request = event.data
  queue = queue.then(async () => {
    try {
      const value = await handle(request)
      scope.postMessage({ id: request.id, ok: true, value })
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err))
      scope.postMessage({ id: request.id, ok: false, name: e.name, message: e.message })
    }
  })
}
