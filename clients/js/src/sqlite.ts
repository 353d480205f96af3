/**
 * `@seqsync/client/sqlite`: the local store in one SQLite file, through
 * better-sqlite3 (Node). A separate entry point, so `@seqsync/client`
 * itself loads no native module.
 *
 * Schema (the seed's snapshots / updates / kv, with a collection column):
 * - `updates`: the log. `origin` is `local` or `remote`; `status` 0 = in the
 *   outbox (a local edit the server has not confirmed), 1 = confirmed (or
 *   remote), 2 = rejected by the server for good.
 * - `snapshots`: a document's folded log and its state vector.
 * - `documents`: per document its tombstone, the seq its confirmed edits
 *   are saved through, and the size of its foldable log (the compaction
 *   trigger).
 * - `kv`: cursor, checksum, epoch per collection; the peer id under ''.
 * - `rejected`: updates the server refused for good, with its code.
 */
import Database from 'better-sqlite3'
import * as Y from 'yjs'
import {
  type CollectionState,
  type CommitResult,
  type DocumentInfo,
  type OutboxEntry,
  type RejectedEntry,
  type SeqsyncStore,
  type StoreOptions,
  type StoreWrite,
  type StoredDocument,
  DEFAULT_COMPACT_AFTER_BYTES,
  DEFAULT_COMPACT_AFTER_UPDATES,
  fold
} from './store.js'

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

const SCHEMA = `
CREATE TABLE IF NOT EXISTS kv (
  collection TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (collection, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS updates (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  collection TEXT NOT NULL,
  doc TEXT NOT NULL,
  data BLOB NOT NULL,
  origin TEXT NOT NULL CHECK (origin IN ('local', 'remote')),
  status INTEGER NOT NULL CHECK (status IN (0, 1, 2))
);
CREATE INDEX IF NOT EXISTS updates_by_doc ON updates (collection, doc, id);
CREATE INDEX IF NOT EXISTS updates_outbox ON updates (collection, id) WHERE status = 0;
CREATE TABLE IF NOT EXISTS snapshots (
  collection TEXT NOT NULL,
  doc TEXT NOT NULL,
  data BLOB NOT NULL,
  state_vector BLOB NOT NULL,
  PRIMARY KEY (collection, doc)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS documents (
  collection TEXT NOT NULL,
  doc TEXT NOT NULL,
  deleted INTEGER NOT NULL DEFAULT 0,
  saved_through INTEGER NOT NULL DEFAULT 0,
  log_rows INTEGER NOT NULL DEFAULT 0,
  log_bytes INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (collection, doc)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
  id INTEGER PRIMARY KEY,
  collection TEXT NOT NULL,
  doc TEXT NOT NULL,
  data BLOB NOT NULL,
  code TEXT NOT NULL,
  message TEXT NOT NULL,
  at INTEGER NOT NULL
);
`

const OUTBOX = 0
const CONFIRMED = 1
const REJECTED = 2

type Stmt = Database.Statement<unknown[], unknown>

/** A document's log growth within one transaction. */
interface Growth { rows: number, bytes: number, revive: boolean }

class SqliteStore implements SeqsyncStore {
  private readonly db: Database.Database
  private readonly compactAfterUpdates: number
  private readonly compactAfterBytes: number
  private readonly s: Record<string, Stmt>

  constructor (path: string, options: SqliteStoreOptions) {
    this.compactAfterUpdates = options.compactAfterUpdates ?? DEFAULT_COMPACT_AFTER_UPDATES
    this.compactAfterBytes = options.compactAfterBytes ?? DEFAULT_COMPACT_AFTER_BYTES
    this.db = new Database(path)
    this.db.pragma('journal_mode = WAL')
    this.db.pragma(`synchronous = ${options.synchronous === 'full' ? 'FULL' : 'NORMAL'}`)
    this.db.pragma('busy_timeout = 5000')
    this.db.pragma('cache_size = -32768') // 32 MiB: a large catch-up commit does not spill
    this.db.exec(SCHEMA)
    const p = (sql: string): Stmt => this.db.prepare(sql)
    this.s = {
      kvGet: p('SELECT value FROM kv WHERE collection = ? AND key = ?'),
      kvSet: p('INSERT INTO kv (collection, key, value) VALUES (?, ?, ?) ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value'),
      kvAll: p('SELECT key, value FROM kv WHERE collection = ?'),
      docs: p(`SELECT d.doc, d.deleted, d.saved_through,
        (SELECT count(*) FROM updates u WHERE u.collection = d.collection AND u.doc = d.doc AND u.status = 0) AS pending
        FROM documents d WHERE d.collection = ? ORDER BY d.doc`),
      docGet: p('SELECT deleted, saved_through, log_rows, log_bytes FROM documents WHERE collection = ? AND doc = ?'),
      docEnsure: p('INSERT INTO documents (collection, doc) VALUES (?, ?) ON CONFLICT (collection, doc) DO NOTHING'),
      docGrow: p('UPDATE documents SET deleted = 0, log_rows = log_rows + ?, log_bytes = log_bytes + ? WHERE collection = ? AND doc = ?'),
      docUpsert: p(`INSERT INTO documents (collection, doc, log_rows, log_bytes) VALUES (?, ?, ?, ?)
        ON CONFLICT (collection, doc) DO UPDATE SET
          deleted = CASE WHEN ? THEN 0 ELSE deleted END,
          log_rows = log_rows + excluded.log_rows,
          log_bytes = log_bytes + excluded.log_bytes
        RETURNING deleted, log_rows, log_bytes`),
      docGrowKeep: p('UPDATE documents SET log_rows = log_rows + ?, log_bytes = log_bytes + ? WHERE collection = ? AND doc = ?'),
      docDelete: p('UPDATE documents SET deleted = 1, log_rows = 0, log_bytes = 0 WHERE collection = ? AND doc = ?'),
      docSaved: p('UPDATE documents SET saved_through = max(saved_through, ?) WHERE collection = ? AND doc = ?'),
      docFolded: p('UPDATE documents SET log_rows = 0, log_bytes = 0 WHERE collection = ? AND doc = ?'),
      docsReset: p(`UPDATE documents SET saved_through = 0,
        log_rows = (SELECT count(*) FROM updates u WHERE u.collection = documents.collection AND u.doc = documents.doc),
        log_bytes = (SELECT coalesce(sum(length(u.data)), 0) FROM updates u WHERE u.collection = documents.collection AND u.doc = documents.doc)
        WHERE collection = ?`),
      snapGet: p('SELECT data, state_vector FROM snapshots WHERE collection = ? AND doc = ?'),
      snapSet: p('INSERT INTO snapshots (collection, doc, data, state_vector) VALUES (?, ?, ?, ?) ON CONFLICT (collection, doc) DO UPDATE SET data = excluded.data, state_vector = excluded.state_vector'),
      snapDel: p('DELETE FROM snapshots WHERE collection = ? AND doc = ?'),
      rows: p('SELECT data FROM updates WHERE collection = ? AND doc = ? ORDER BY id'),
      insert: p('INSERT INTO updates (collection, doc, data, origin, status) VALUES (?, ?, ?, ?, ?)'),
      outboxOfDoc: p('SELECT id, doc, data FROM updates WHERE collection = ? AND doc = ? AND status = 0 ORDER BY id'),
      delRows: p('DELETE FROM updates WHERE collection = ? AND doc = ?'),
      delFolded: p('DELETE FROM updates WHERE collection = ? AND doc = ? AND status != 0'),
      outbox: p('SELECT id, doc, data FROM updates WHERE collection = ? AND status = 0 AND id > ? ORDER BY id LIMIT ?'),
      outboxSize: p('SELECT count(*) AS n FROM updates WHERE collection = ? AND status = 0'),
      outboxRow: p('SELECT doc, data FROM updates WHERE collection = ? AND id = ? AND status = 0'),
      setStatus: p('UPDATE updates SET status = ? WHERE id = ?'),
      supersede: p('UPDATE updates SET status = 1 WHERE collection = ? AND status = 0'),
      rejectInsert: p('INSERT INTO rejected (id, collection, doc, data, code, message, at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING'),
      rejectedAll: p('SELECT id, doc, data, code, message, at FROM rejected WHERE collection = ? ORDER BY id'),
      allDocs: p('SELECT doc FROM documents WHERE collection = ? AND deleted = 0')
    }
  }

  private get (name: string): Stmt {
    return this.s[name] as Stmt
  }

  async getKv (collection: string, key: string): Promise<string | undefined> {
    const row = this.get('kvGet').get(collection, key) as { value: string } | undefined
    return row?.value
  }

  async setKv (collection: string, key: string, value: string): Promise<void> {
    this.get('kvSet').run(collection, key, value)
  }

  async state (collection: string): Promise<CollectionState> {
    const kv = new Map<string, string>()
    for (const row of this.get('kvAll').all(collection) as Array<{ key: string, value: string }>) kv.set(row.key, row.value)
    return {
      cursor: Number(kv.get('cursor') ?? 0),
      checksum: kv.get('checksum') ?? '',
      epoch: kv.get('epoch') ?? ''
    }
  }

  async documents (collection: string): Promise<DocumentInfo[]> {
    const rows = this.get('docs').all(collection) as Array<{ doc: string, deleted: number, saved_through: number, pending: number }>
    return rows.map(r => ({ doc: r.doc, deleted: r.deleted !== 0, savedThrough: r.saved_through, pending: r.pending }))
  }

  async loadDocument (collection: string, doc: string): Promise<StoredDocument | undefined> {
    return this.db.transaction((): StoredDocument | undefined => {
      const d = this.get('docGet').get(collection, doc) as { deleted: number, saved_through: number } | undefined
      if (d === undefined) return undefined
      const snap = this.get('snapGet').get(collection, doc) as { data: Uint8Array, state_vector: Uint8Array } | undefined
      const rows = this.get('rows').all(collection, doc) as Array<{ data: Uint8Array }>
      return {
        snapshot: snap?.data ?? null,
        stateVector: snap?.state_vector ?? null,
        updates: rows.map(r => r.data),
        deleted: d.deleted !== 0,
        savedThrough: d.saved_through
      }
    })()
  }

  async commit (collection: string, write: StoreWrite): Promise<CommitResult> {
    return this.db.transaction((): CommitResult => {
      const touched = new Map<string, Growth>()
      const grow = (doc: string, bytes: number, revive: boolean): void => {
        const t = touched.get(doc)
        if (t === undefined) touched.set(doc, { rows: 1, bytes, revive })
        else {
          t.rows++
          t.bytes += bytes
          t.revive ||= revive
        }
      }
      const rejected: RejectedEntry[] = []
      if (write.supersedeOutbox === true) {
        this.get('supersede').run(collection)
        this.get('docsReset').run(collection)
      }
      const insert = this.get('insert')
      const ensure = this.get('docEnsure')
      const known = new Set<string>()
      const ensureDoc = (doc: string): void => {
        if (known.has(doc)) return
        ensure.run(collection, doc)
        known.add(doc)
      }
      // A document's remote updates in one write become one row (merged):
      // a catch-up of 260k changes over 1,000 documents writes a few
      // thousand rows, not 260k index entries spread over every page.
      const pending = new Map<string, Uint8Array[]>()
      const flushPending = (doc: string): void => {
        const list = pending.get(doc)
        if (list === undefined) return
        pending.delete(doc)
        const data = list.length === 1 ? list[0] as Uint8Array : Y.mergeUpdates(list)
        insert.run(collection, doc, data, 'remote', CONFIRMED)
        grow(doc, data.length, true)
      }
      for (const { doc, update } of write.remote ?? []) {
        if (update === null) {
          ensureDoc(doc)
          pending.delete(doc)
          touched.delete(doc)
          const outbox = this.get('outboxOfDoc').all(collection, doc) as Array<{ id: number, doc: string, data: Uint8Array }>
          const at = Date.now()
          for (const row of outbox) {
            const message = `document ${doc} was deleted`
            this.get('rejectInsert').run(row.id, collection, doc, row.data, 'document_deleted', message, at)
            rejected.push({ id: row.id, doc, update: row.data, code: 'document_deleted', message, at })
          }
          this.get('delRows').run(collection, doc)
          this.get('snapDel').run(collection, doc)
          this.get('docDelete').run(collection, doc)
        } else {
          let list = pending.get(doc)
          if (list === undefined) {
            list = []
            pending.set(doc, list)
          }
          list.push(update)
        }
      }
      for (const doc of [...pending.keys()]) flushPending(doc)
      const localIds: number[] = []
      for (const { doc, update } of write.local ?? []) {
        const info = insert.run(collection, doc, update, 'local', OUTBOX)
        localIds.push(Number(info.lastInsertRowid))
        if (!touched.has(doc)) touched.set(doc, { rows: 0, bytes: 0, revive: false })
      }
      for (const id of write.pushed ?? []) {
        const row = this.get('outboxRow').get(collection, id) as { doc: string, data: Uint8Array } | undefined
        if (row === undefined) continue
        this.get('setStatus').run(CONFIRMED, id)
        grow(row.doc, row.data.length, false)
      }
      for (const { doc, seq } of write.saved ?? []) this.get('docSaved').run(seq, collection, doc)
      if (write.state !== undefined) {
        const { cursor, checksum, epoch } = write.state
        const set = this.get('kvSet')
        if (cursor !== undefined) set.run(collection, 'cursor', String(cursor))
        if (checksum !== undefined) set.run(collection, 'checksum', checksum)
        if (epoch !== undefined) set.run(collection, 'epoch', epoch)
      }
      for (const doc of [...touched.keys()]) this.flushGrowth(collection, touched, doc)
      return { localIds, rejected }
    })()
  }

  /** Adds a document's growth in this transaction to its counters, reviving
   * it if a remote update arrived, and folds its log if due. */
  private flushGrowth (collection: string, touched: Map<string, Growth>, doc: string): void {
    const t = touched.get(doc)
    if (t === undefined) return
    touched.delete(doc)
    // One statement: create the document's row if needed, add the growth,
    // revive it if a remote update arrived, and read its counters back.
    const d = this.get('docUpsert').get(collection, doc, t.rows, t.bytes, t.revive ? 1 : 0) as { deleted: number, log_rows: number, log_bytes: number }
    if (d.deleted !== 0) return
    if (d.log_rows >= this.compactAfterUpdates || (d.log_rows >= 2 && d.log_bytes >= this.compactAfterBytes)) {
      this.foldDoc(collection, doc)
    }
  }

  private foldDoc (collection: string, doc: string): void {
    const rows = this.get('rows').all(collection, doc) as Array<{ data: Uint8Array }>
    if (rows.length === 0) return
    const snap = this.get('snapGet').get(collection, doc) as { data: Uint8Array } | undefined
    const folded = fold(snap?.data ?? null, rows.map(r => r.data))
    this.get('snapSet').run(collection, doc, folded.snapshot, folded.stateVector)
    this.get('delFolded').run(collection, doc)
    this.get('docFolded').run(collection, doc)
  }

  async outbox (collection: string, afterId: number, limit: number): Promise<OutboxEntry[]> {
    const rows = this.get('outbox').all(collection, afterId, limit) as Array<{ id: number, doc: string, data: Uint8Array }>
    return rows.map(r => ({ id: r.id, doc: r.doc, update: r.data }))
  }

  async outboxSize (collection: string): Promise<number> {
    return (this.get('outboxSize').get(collection) as { n: number }).n
  }

  async reject (collection: string, ids: number[], code: string, message: string): Promise<RejectedEntry[]> {
    return this.db.transaction((): RejectedEntry[] => {
      const out: RejectedEntry[] = []
      const at = Date.now()
      for (const id of ids) {
        const row = this.get('outboxRow').get(collection, id) as { doc: string, data: Uint8Array } | undefined
        if (row === undefined) continue
        this.get('setStatus').run(REJECTED, id)
        this.get('docGrowKeep').run(1, row.data.length, collection, row.doc)
        this.get('rejectInsert').run(id, collection, row.doc, row.data, code, message, at)
        out.push({ id, doc: row.doc, update: row.data, code, message, at })
      }
      return out
    })()
  }

  async rejected (collection: string): Promise<RejectedEntry[]> {
    const rows = this.get('rejectedAll').all(collection) as Array<{ id: number, doc: string, data: Uint8Array, code: string, message: string, at: number }>
    return rows.map(r => ({ id: r.id, doc: r.doc, update: r.data, code: r.code, message: r.message, at: r.at }))
  }

  async compact (collection: string, doc?: string): Promise<void> {
    this.db.transaction(() => {
      const docs = doc === undefined
        ? (this.get('allDocs').all(collection) as Array<{ doc: string }>).map(r => r.doc)
        : [doc]
      for (const d of docs) {
        const info = this.get('docGet').get(collection, d) as { deleted: number } | undefined
        if (info !== undefined && info.deleted === 0) this.foldDoc(collection, d)
      }
    })()
  }

  async close (): Promise<void> {
    if (this.db.open) this.db.close()
  }
}

/** A store in the SQLite file at `path` (created if missing; `:memory:`
 * for a throwaway one). */
export function sqliteStore (path: string, options: SqliteStoreOptions = {}): SeqsyncStore {
  return new SqliteStore(path, options)
}
