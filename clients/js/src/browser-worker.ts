/**
 * `@seqsync/client/browser-worker`: the dedicated worker that holds a
 * browser store's SQLite database. The page never touches SQLite itself:
 * `browserStore()` (`@seqsync/client/browser`) starts this script as a
 * module worker and sends it one statement per message.
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
 * - `{ id, op: 'open', pool, directory, synchronous }` → `{ id, ok: true }`
 * - `{ id, op: 'run', sql, params }` → `{ id, ok: true, value: rowid }`
 * - `{ id, op: 'all', sql, params }` → `{ id, ok: true, value: rows }`
 * - `{ id, op: 'exec', sql }`, `{ id, op: 'close' }` → `{ id, ok: true }`
 * - any failure → `{ id, ok: false, name, message }`
 */
import sqlite3InitModule, { type Database, type PreparedStatement, type SAHPoolUtil, type SqlValue as WasmValue } from '@sqlite.org/sqlite-wasm'

/** The one database file inside the pool. */
const DB_FILE = '/seqsync.sqlite3'
/** Prepared statements kept per database (the core uses a few dozen). */
const MAX_CACHED_STATEMENTS = 128
/** Opening retries while the pool's files are still held by a worker
 * that is going away (a reload: the old page's worker ends a moment after
 * the new page has the lock). */
const OPEN_ATTEMPTS = 40
const OPEN_RETRY_MS = 100

type Request =
  | { id: number, op: 'open', pool: string, directory: string, synchronous: 'normal' | 'full' }
  | { id: number, op: 'run' | 'all', sql: string, params: unknown[] }
  | { id: number, op: 'exec', sql: string }
  | { id: number, op: 'close' }

interface WorkerScope {
  onmessage: ((event: { data: Request }) => void) | null
  postMessage: (message: unknown) => void
  close: () => void
}
const scope = globalThis as unknown as WorkerScope

let db: Database | null = null
let pool: SAHPoolUtil | null = null
const statements = new Map<string, PreparedStatement>()

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

async function open (poolName: string, directory: string, synchronous: 'normal' | 'full'): Promise<void> {
  if (db !== null) throw new Error('the store is already open in this worker')
  const sqlite3 = await sqlite3InitModule()
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
  // reloading at once: demo/test/notes.test.js caught it), while the
  // journal keeps every commit in the database file itself.
  db.exec('PRAGMA journal_mode = TRUNCATE')
  db.exec(`PRAGMA synchronous = ${synchronous === 'full' ? 'FULL' : 'NORMAL'}`)
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
      await open(request.pool, request.directory, request.synchronous)
      return null
    case 'run': {
      runStatement(request.sql, request.params, false)
      const rowid = database().selectValue('SELECT last_insert_rowid()')
      return typeof rowid === 'bigint' ? Number(rowid) : (rowid ?? 0)
    }
    case 'all':
      return runStatement(request.sql, request.params, true)
    case 'exec':
      database().exec(request.sql)
      return null
    case 'close':
      for (const s of statements.values()) s.finalize()
      statements.clear()
      db?.close()
      db = null
      // Releases the pool's access handles at once, so the next page (or
      // the next slot user) need not wait for this worker to be collected.
      pool?.pauseVfs()
      pool = null
      return null
  }
}

// One request at a time, in arrival order: the page's SQL core already
// awaits each statement, and `open` must finish before any statement.
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
