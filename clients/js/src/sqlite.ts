/**
 * `@seqsync/client/sqlite`: the local store in one SQLite file, through
 * better-sqlite3 (Node). A separate entry point, so `@seqsync/client`
 * itself loads no native module. The schema, statements and transactions
 * are the shared SQL store's (`sqlstore.ts`); this file opens the file and
 * serves the core's connection interface from better-sqlite3.
 */
import Database from 'better-sqlite3'
import type { SeqsyncStore, StoreOptions } from './store.js'
import { type SqlConnection, type SqlValue, SqlStore } from './sqlstore.js'

export interface SqliteStoreOptions extends StoreOptions {
  /**
   * `normal` (default) or `full`. The store runs in WAL mode. With
   * `synchronous=NORMAL` every commit is written to the WAL file (write(2)
   * has returned, the bytes are in the kernel's page cache) before the
   * transaction returns; only the fsync is deferred to checkpoints. So an
   * edit the client reported "saved locally" survives the process being
   * killed at any point (SIGKILL, a crash, the tab closing): the kernel
   * still has the WAL, and the next open replays it. What NORMAL gives up is
   * the last commits on a power loss or an OS crash; `full` adds an fsync
   * per commit for that (a commit per burst of edits, so a few ms of latency
   * on "saved locally" per burst). The requirement here is the process kill,
   * hence NORMAL by default — the server's ack is what makes an edit durable
   * for good (it fsyncs before it answers).
   */
  synchronous?: 'normal' | 'full'
}

type Stmt = Database.Statement<unknown[], unknown>

/** The core's connection over better-sqlite3 (synchronous underneath; each
 * statement is prepared once and cached by its text). */
function connection (db: Database.Database): SqlConnection {
  const statements = new Map<string, Stmt>()
  const prepared = (sql: string): Stmt => {
    let stmt = statements.get(sql)
    if (stmt === undefined) {
      stmt = db.prepare(sql)
      statements.set(sql, stmt)
    }
    return stmt
  }
  return {
    run: async (sql: string, params: SqlValue[]) => Number(prepared(sql).run(...params).lastInsertRowid),
    all: async (sql: string, params: SqlValue[]) => prepared(sql).all(...params) as Array<Record<string, SqlValue>>,
    exec: async (sql: string) => { db.exec(sql) },
    close: async () => { if (db.open) db.close() }
  }
}

/** A store in the SQLite file at `path` (created if missing; `:memory:`
 * for a throwaway one). Opening is synchronous; statements run on the
 * calling thread. */
export function sqliteStore (path: string, options: SqliteStoreOptions = {}): SeqsyncStore {
  const db = new Database(path)
  db.pragma('journal_mode = WAL')
  db.pragma(`synchronous = ${options.synchronous === 'full' ? 'FULL' : 'NORMAL'}`)
  db.pragma('busy_timeout = 5000')
  db.pragma('cache_size = -32768') // 32 MiB: a large catch-up commit does not spill
  return new SqlStore(connection(db), options)
}
