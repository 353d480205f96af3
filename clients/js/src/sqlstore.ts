/**
 * The local store on SQLite, written once over a minimal connection
 * interface ({@link SqlConnection}) so that every SQLite binding runs the
 * same schema, the same statements and the same transactions:
 * better-sqlite3 in Node (`@seqsync/client/sqlite`), op-sqlite in React
 * Native (`@seqsync/client/op-sqlite`).
 *
 * Why one core: the store is where "saved locally" is decided (a local
 * edit, a pulled page and its cursor in one transaction). Two copies of
 * that logic would drift; one copy passes one contract suite for every
 * binding.
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
 *
 * Transactions: the connection is shared by every collection of a client,
 * and the bindings' statements are async (op-sqlite's run on a native
 * thread), so the core runs one transaction at a time (a promise queue)
 * with `BEGIN IMMEDIATE` … `COMMIT`, `ROLLBACK` on any error: a commit is
 * all or nothing whatever the binding.
 */
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

/** A value bound to or read from a statement. BLOBs are read back as
 * `Uint8Array` or `ArrayBuffer` (the core copies either). */
export type SqlValue = string | number | null | Uint8Array | ArrayBuffer

/** What the core needs of a SQLite connection. Statements run in call
 * order; none runs while another is awaited (the core awaits each). */
export interface SqlConnection {
  /** Runs one statement; resolves with the rowid it inserted (0 if none). */
  run: (sql: string, params: SqlValue[]) => Promise<number>
  /** Runs one query; resolves with its rows, columns by name. */
  all: (sql: string, params: SqlValue[]) => Promise<Array<Record<string, SqlValue>>>
  /** Runs one statement without parameters (schema, BEGIN, COMMIT). */
  exec: (sql: string) => Promise<void>
  close: () => Promise<void>
}

/** The schema, one statement per entry (some bindings run one per call). */
export const SCHEMA: readonly string[] = [
  `CREATE TABLE IF NOT EXISTS kv (
  collection TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (collection, key)
) WITHOUT ROWID`,
  `CREATE TABLE IF NOT EXISTS updates (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  collection TEXT NOT NULL,
  doc TEXT NOT NULL,
  data BLOB NOT NULL,
  origin TEXT NOT NULL CHECK (origin IN ('local', 'remote')),
  status INTEGER NOT NULL CHECK (status IN (0, 1, 2))
)`,
  'CREATE INDEX IF NOT EXISTS updates_by_doc ON updates (collection, doc, id)',
  'CREATE INDEX IF NOT EXISTS updates_outbox ON updates (collection, id) WHERE status = 0',
  `CREATE TABLE IF NOT EXISTS snapshots (
  collection TEXT NOT NULL,
  doc TEXT NOT NULL,
  data BLOB NOT NULL,
  state_vector BLOB NOT NULL,
  PRIMARY KEY (collection, doc)
) WITHOUT ROWID`,
  `CREATE TABLE IF NOT EXISTS documents (
  collection TEXT NOT NULL,
  doc TEXT NOT NULL,
  deleted INTEGER NOT NULL DEFAULT 0,
  saved_through INTEGER NOT NULL DEFAULT 0,
  log_rows INTEGER NOT NULL DEFAULT 0,
  log_bytes INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (collection, doc)
) WITHOUT ROWID`,
  `CREATE TABLE IF NOT EXISTS rejected (
  id INTEGER PRIMARY KEY,
  collection TEXT NOT NULL,
  doc TEXT NOT NULL,
  data BLOB NOT NULL,
  code TEXT NOT NULL,
  message TEXT NOT NULL,
  at INTEGER NOT NULL
)`
]

const OUTBOX = 0
const CONFIRMED = 1
const REJECTED = 2

const SQL = {
  kvGet: 'SELECT value FROM kv WHERE collection = ? AND key = ?',
  kvSet: 'INSERT INTO kv (collection, key, value) VALUES (?, ?, ?) ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value',
  kvAll: 'SELECT key, value FROM kv WHERE collection = ?',
  docs: `SELECT d.doc, d.deleted, d.saved_through,
    (SELECT count(*) FROM updates u WHERE u.collection = d.collection AND u.doc = d.doc AND u.status = 0) AS pending
    FROM documents d WHERE d.collection = ? ORDER BY d.doc`,
  docGet: 'SELECT deleted, saved_through, log_rows, log_bytes FROM documents WHERE collection = ? AND doc = ?',
  docEnsure: 'INSERT INTO documents (collection, doc) VALUES (?, ?) ON CONFLICT (collection, doc) DO NOTHING',
  docUpsert: `INSERT INTO documents (collection, doc, log_rows, log_bytes) VALUES (?, ?, ?, ?)
    ON CONFLICT (collection, doc) DO UPDATE SET
      deleted = CASE WHEN ? THEN 0 ELSE deleted END,
      log_rows = log_rows + excluded.log_rows,
      log_bytes = log_bytes + excluded.log_bytes
    RETURNING deleted, log_rows, log_bytes`,
  docGrowKeep: 'UPDATE documents SET log_rows = log_rows + ?, log_bytes = log_bytes + ? WHERE collection = ? AND doc = ?',
  docDelete: 'UPDATE documents SET deleted = 1, log_rows = 0, log_bytes = 0 WHERE collection = ? AND doc = ?',
  docSaved: 'UPDATE documents SET saved_through = max(saved_through, ?) WHERE collection = ? AND doc = ?',
  docFolded: 'UPDATE documents SET log_rows = 0, log_bytes = 0 WHERE collection = ? AND doc = ?',
  docsReset: `UPDATE documents SET saved_through = 0,
    log_rows = (SELECT count(*) FROM updates u WHERE u.collection = documents.collection AND u.doc = documents.doc),
    log_bytes = (SELECT coalesce(sum(length(u.data)), 0) FROM updates u WHERE u.collection = documents.collection AND u.doc = documents.doc)
    WHERE collection = ?`,
  snapGet: 'SELECT data, state_vector FROM snapshots WHERE collection = ? AND doc = ?',
  snapSet: 'INSERT INTO snapshots (collection, doc, data, state_vector) VALUES (?, ?, ?, ?) ON CONFLICT (collection, doc) DO UPDATE SET data = excluded.data, state_vector = excluded.state_vector',
  snapDel: 'DELETE FROM snapshots WHERE collection = ? AND doc = ?',
  rows: 'SELECT data FROM updates WHERE collection = ? AND doc = ? ORDER BY id',
  insert: 'INSERT INTO updates (collection, doc, data, origin, status) VALUES (?, ?, ?, ?, ?)',
  outboxOfDoc: 'SELECT id, doc, data FROM updates WHERE collection = ? AND doc = ? AND status = 0 ORDER BY id',
  delRows: 'DELETE FROM updates WHERE collection = ? AND doc = ?',
  delFolded: 'DELETE FROM updates WHERE collection = ? AND doc = ? AND status != 0',
  outbox: 'SELECT id, doc, data FROM updates WHERE collection = ? AND status = 0 AND id > ? ORDER BY id LIMIT ?',
  outboxSize: 'SELECT count(*) AS n FROM updates WHERE collection = ? AND status = 0',
  outboxRow: 'SELECT doc, data FROM updates WHERE collection = ? AND id = ? AND status = 0',
  setStatus: 'UPDATE updates SET status = ? WHERE id = ?',
  supersede: 'UPDATE updates SET status = 1 WHERE collection = ? AND status = 0',
  rejectInsert: 'INSERT INTO rejected (id, collection, doc, data, code, message, at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING',
  rejectedAll: 'SELECT id, doc, data, code, message, at FROM rejected WHERE collection = ? ORDER BY id',
  allDocs: 'SELECT doc FROM documents WHERE collection = ? AND deleted = 0'
} as const

/** A document's log growth within one transaction. */
interface Growth { rows: number, bytes: number, revive: boolean }

/** A BLOB column as bytes the store owns (bindings may hand out views of
 * their own buffers, or ArrayBuffers). */
function bytes (value: SqlValue | undefined): Uint8Array {
  // `new Uint8Array(typedArray)` copies (a Node Buffer's own `slice` would
  // not); an ArrayBuffer is copied by its `slice`.
  if (value instanceof Uint8Array) return new Uint8Array(value)
  if (value instanceof ArrayBuffer) return new Uint8Array(value.slice(0))
  throw new TypeError(`expected a BLOB, got ${value === null ? 'null' : typeof value}`)
}

const num = (value: SqlValue | undefined): number => Number(value ?? 0)
const str = (value: SqlValue | undefined): string => String(value ?? '')

/** The store over `conn`. Creates the schema on first use. */
export class SqlStore implements SeqsyncStore {
  private readonly conn: SqlConnection
  private readonly compactAfterUpdates: number
  private readonly compactAfterBytes: number
  /** Transactions (and lone statements) run one at a time, in call order. */
  private tail: Promise<unknown>
  private closed = false

  /** `setup`: statements run first, in order (a binding's pragmas); then
   * the schema. If either fails, every call of the store fails with it. */
  constructor (conn: SqlConnection, options: StoreOptions = {}, setup: readonly string[] = []) {
    this.conn = conn
    this.compactAfterUpdates = options.compactAfterUpdates ?? DEFAULT_COMPACT_AFTER_UPDATES
    this.compactAfterBytes = options.compactAfterBytes ?? DEFAULT_COMPACT_AFTER_BYTES
    this.tail = (async () => {
      for (const statement of [...setup, ...SCHEMA]) await conn.exec(statement)
    })()
  }

  /** Runs `task` after everything queued before it. */
  private serial<T> (task: () => Promise<T>): Promise<T> {
    const run = this.tail.then(async () => {
      if (this.closed) throw new Error('the store is closed')
      return await task()
    })
    this.tail = run.catch(() => {})
    return run
  }

  /** Runs `task` in one transaction: all of it is committed, or none.
   * `read`: a read-only one (a consistent view, no write lock taken). */
  private transaction<T> (task: () => Promise<T>, kind: 'read' | 'write' = 'write'): Promise<T> {
    return this.serial(async () => {
      await this.conn.exec(kind === 'read' ? 'BEGIN' : 'BEGIN IMMEDIATE')
      try {
        const result = await task()
        await this.conn.exec('COMMIT')
        return result
      } catch (err) {
        await this.conn.exec('ROLLBACK').catch(() => {})
        throw err
      }
    })
  }

  private async one (sql: string, params: SqlValue[]): Promise<Record<string, SqlValue> | undefined> {
    return (await this.conn.all(sql, params))[0]
  }

  async getKv (collection: string, key: string): Promise<string | undefined> {
    return await this.serial(async () => {
      const row = await this.one(SQL.kvGet, [collection, key])
      return row === undefined ? undefined : str(row.value)
    })
  }

  async setKv (collection: string, key: string, value: string): Promise<void> {
    await this.serial(async () => { await this.conn.run(SQL.kvSet, [collection, key, value]) })
  }

  async state (collection: string): Promise<CollectionState> {
    const kv = new Map<string, string>()
    await this.serial(async () => {
      for (const row of await this.conn.all(SQL.kvAll, [collection])) kv.set(str(row.key), str(row.value))
    })
    return {
      cursor: Number(kv.get('cursor') ?? 0),
      checksum: kv.get('checksum') ?? '',
      epoch: kv.get('epoch') ?? ''
    }
  }

  async documents (collection: string): Promise<DocumentInfo[]> {
    const rows = await this.serial(async () => await this.conn.all(SQL.docs, [collection]))
    return rows.map(r => ({ doc: str(r.doc), deleted: num(r.deleted) !== 0, savedThrough: num(r.saved_through), pending: num(r.pending) }))
  }

  async loadDocument (collection: string, doc: string): Promise<StoredDocument | undefined> {
    return await this.transaction(async () => {
      const d = await this.one(SQL.docGet, [collection, doc])
      if (d === undefined) return undefined
      const snap = await this.one(SQL.snapGet, [collection, doc])
      const rows = await this.conn.all(SQL.rows, [collection, doc])
      return {
        snapshot: snap === undefined ? null : bytes(snap.data),
        stateVector: snap === undefined ? null : bytes(snap.state_vector),
        updates: rows.map(r => bytes(r.data)),
        deleted: num(d.deleted) !== 0,
        savedThrough: num(d.saved_through)
      }
    }, 'read')
  }

  async commit (collection: string, write: StoreWrite): Promise<CommitResult> {
    return await this.transaction(async () => {
      const { run, all } = this.conn
      const touched = new Map<string, Growth>()
      const grow = (doc: string, size: number, revive: boolean): void => {
        const t = touched.get(doc)
        if (t === undefined) touched.set(doc, { rows: 1, bytes: size, revive })
        else {
          t.rows++
          t.bytes += size
          t.revive ||= revive
        }
      }
      const rejected: RejectedEntry[] = []
      if (write.supersedeOutbox === true) {
        await run(SQL.supersede, [collection])
        await run(SQL.docsReset, [collection])
      }
      const known = new Set<string>()
      const ensureDoc = async (doc: string): Promise<void> => {
        if (known.has(doc)) return
        await run(SQL.docEnsure, [collection, doc])
        known.add(doc)
      }
      // A document's remote updates in one write become one row (merged):
      // a catch-up of 260k changes over 1,000 documents writes a few
      // thousand rows, not 260k index entries spread over every page.
      const pending = new Map<string, Uint8Array[]>()
      const flushPending = async (doc: string): Promise<void> => {
        const list = pending.get(doc)
        if (list === undefined) return
        pending.delete(doc)
        const data = list.length === 1 ? list[0] as Uint8Array : Y.mergeUpdates(list)
        await run(SQL.insert, [collection, doc, data, 'remote', CONFIRMED])
        grow(doc, data.length, true)
      }
      for (const { doc, update } of write.remote ?? []) {
        if (update === null) {
          await ensureDoc(doc)
          pending.delete(doc)
          touched.delete(doc)
          const outbox = await all(SQL.outboxOfDoc, [collection, doc])
          const at = Date.now()
          for (const row of outbox) {
            const message = `document ${doc} was deleted`
            const data = bytes(row.data)
            await run(SQL.rejectInsert, [num(row.id), collection, doc, data, 'document_deleted', message, at])
            rejected.push({ id: num(row.id), doc, update: data, code: 'document_deleted', message, at })
          }
          await run(SQL.delRows, [collection, doc])
          await run(SQL.snapDel, [collection, doc])
          await run(SQL.docDelete, [collection, doc])
        } else {
          let list = pending.get(doc)
          if (list === undefined) {
            list = []
            pending.set(doc, list)
          }
          list.push(update)
        }
      }
      for (const doc of [...pending.keys()]) await flushPending(doc)
      const localIds: number[] = []
      for (const { doc, update } of write.local ?? []) {
        localIds.push(await run(SQL.insert, [collection, doc, update, 'local', OUTBOX]))
        if (!touched.has(doc)) touched.set(doc, { rows: 0, bytes: 0, revive: false })
      }
      for (const id of write.pushed ?? []) {
        const row = await this.one(SQL.outboxRow, [collection, id])
        if (row === undefined) continue
        await run(SQL.setStatus, [CONFIRMED, id])
        grow(str(row.doc), bytes(row.data).length, false)
      }
      for (const { doc, seq } of write.saved ?? []) await run(SQL.docSaved, [seq, collection, doc])
      if (write.state !== undefined) {
        const { cursor, checksum, epoch } = write.state
        if (cursor !== undefined) await run(SQL.kvSet, [collection, 'cursor', String(cursor)])
        if (checksum !== undefined) await run(SQL.kvSet, [collection, 'checksum', checksum])
        if (epoch !== undefined) await run(SQL.kvSet, [collection, 'epoch', epoch])
      }
      for (const doc of [...touched.keys()]) await this.flushGrowth(collection, touched, doc)
      return { localIds, rejected }
    })
  }

  /** Adds a document's growth in this transaction to its counters, reviving
   * it if a remote update arrived, and folds its log if due. */
  private async flushGrowth (collection: string, touched: Map<string, Growth>, doc: string): Promise<void> {
    const t = touched.get(doc)
    if (t === undefined) return
    touched.delete(doc)
    // One statement: create the document's row if needed, add the growth,
    // revive it if a remote update arrived, and read its counters back.
    const d = await this.one(SQL.docUpsert, [collection, doc, t.rows, t.bytes, t.revive ? 1 : 0])
    if (d === undefined || num(d.deleted) !== 0) return
    const rows = num(d.log_rows)
    if (rows >= this.compactAfterUpdates || (rows >= 2 && num(d.log_bytes) >= this.compactAfterBytes)) {
      await this.foldDoc(collection, doc)
    }
  }

  private async foldDoc (collection: string, doc: string): Promise<void> {
    const rows = await this.conn.all(SQL.rows, [collection, doc])
    if (rows.length === 0) return
    const snap = await this.one(SQL.snapGet, [collection, doc])
    const folded = fold(snap === undefined ? null : bytes(snap.data), rows.map(r => bytes(r.data)))
    await this.conn.run(SQL.snapSet, [collection, doc, folded.snapshot, folded.stateVector])
    await this.conn.run(SQL.delFolded, [collection, doc])
    await this.conn.run(SQL.docFolded, [collection, doc])
  }

  async outbox (collection: string, afterId: number, limit: number): Promise<OutboxEntry[]> {
    const rows = await this.serial(async () => await this.conn.all(SQL.outbox, [collection, afterId, limit]))
    return rows.map(r => ({ id: num(r.id), doc: str(r.doc), update: bytes(r.data) }))
  }

  async outboxSize (collection: string): Promise<number> {
    return await this.serial(async () => num((await this.one(SQL.outboxSize, [collection]))?.n))
  }

  async reject (collection: string, ids: number[], code: string, message: string): Promise<RejectedEntry[]> {
    return await this.transaction(async () => {
      const out: RejectedEntry[] = []
      const at = Date.now()
      for (const id of ids) {
        const row = await this.one(SQL.outboxRow, [collection, id])
        if (row === undefined) continue
        const doc = str(row.doc)
        const data = bytes(row.data)
        await this.conn.run(SQL.setStatus, [REJECTED, id])
        await this.conn.run(SQL.docGrowKeep, [1, data.length, collection, doc])
        await this.conn.run(SQL.rejectInsert, [id, collection, doc, data, code, message, at])
        out.push({ id, doc, update: data, code, message, at })
      }
      return out
    })
  }

  async rejected (collection: string): Promise<RejectedEntry[]> {
    const rows = await this.serial(async () => await this.conn.all(SQL.rejectedAll, [collection]))
    return rows.map(r => ({ id: num(r.id), doc: str(r.doc), update: bytes(r.data), code: str(r.code), message: str(r.message), at: num(r.at) }))
  }

  async compact (collection: string, doc?: string): Promise<void> {
    await this.transaction(async () => {
      const docs = doc === undefined
        ? (await this.conn.all(SQL.allDocs, [collection])).map(r => str(r.doc))
        : [doc]
      for (const d of docs) {
        const info = await this.one(SQL.docGet, [collection, d])
        if (info !== undefined && num(info.deleted) === 0) await this.foldDoc(collection, d)
      }
    })
  }

  /** Closes the connection once everything queued has run. */
  async close (): Promise<void> {
    if (this.closed) return
    await this.serial(async () => {
      this.closed = true
      await this.conn.close()
    }).catch(() => {})
  }
}
