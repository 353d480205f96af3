/**
 * The in-memory store: the same contract as the SQLite one, nothing
 * survives the process. One instance may be handed to several clients in
 * turn (a test's "restart").
 */
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

type RowStatus = 'remote' | 'outbox' | 'pushed' | 'rejected'

interface Row {
  id: number
  doc: string
  data: Uint8Array
  status: RowStatus
}

interface MemDoc {
  /** Rows not in the outbox since the last fold, and their bytes. */
  foldRows: number
  foldBytes: number
  snapshot: Uint8Array | null
  stateVector: Uint8Array | null
  rows: Row[]
  deleted: boolean
  savedThrough: number
}

interface MemCollection {
  kv: Map<string, string>
  docs: Map<string, MemDoc>
  /** Outbox rows by id, in id order. */
  outbox: Map<number, Row>
  rejected: RejectedEntry[]
}

class MemoryStore implements SeqsyncStore {
  private readonly collections = new Map<string, MemCollection>()
  private nextId = 1
  private readonly compactAfterUpdates: number
  private readonly compactAfterBytes: number

  constructor (options: StoreOptions = {}) {
    this.compactAfterUpdates = options.compactAfterUpdates ?? DEFAULT_COMPACT_AFTER_UPDATES
    this.compactAfterBytes = options.compactAfterBytes ?? DEFAULT_COMPACT_AFTER_BYTES
  }

  private col (collection: string): MemCollection {
    let c = this.collections.get(collection)
    if (c === undefined) {
      c = { kv: new Map(), docs: new Map(), outbox: new Map(), rejected: [] }
      this.collections.set(collection, c)
    }
    return c
  }

  private docOf (c: MemCollection, doc: string): MemDoc {
    let d = c.docs.get(doc)
    if (d === undefined) {
      d = { foldRows: 0, foldBytes: 0, snapshot: null, stateVector: null, rows: [], deleted: false, savedThrough: 0 }
      c.docs.set(doc, d)
    }
    return d
  }

  async getKv (collection: string, key: string): Promise<string | undefined> {
    return this.col(collection).kv.get(key)
  }

  async setKv (collection: string, key: string, value: string): Promise<void> {
    this.col(collection).kv.set(key, value)
  }

  async state (collection: string): Promise<CollectionState> {
    const kv = this.col(collection).kv
    return {
      cursor: Number(kv.get('cursor') ?? 0),
      checksum: kv.get('checksum') ?? '',
      epoch: kv.get('epoch') ?? ''
    }
  }

  async documents (collection: string): Promise<DocumentInfo[]> {
    const c = this.col(collection)
    return [...c.docs.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([doc, d]) => ({
        doc,
        deleted: d.deleted,
        savedThrough: d.savedThrough,
        pending: d.rows.filter(r => r.status === 'outbox').length
      }))
  }

  async loadDocument (collection: string, doc: string): Promise<StoredDocument | undefined> {
    const d = this.col(collection).docs.get(doc)
    if (d === undefined) return undefined
    return {
      snapshot: d.snapshot,
      stateVector: d.stateVector,
      updates: d.rows.map(r => r.data),
      deleted: d.deleted,
      savedThrough: d.savedThrough
    }
  }

  async commit (collection: string, write: StoreWrite): Promise<CommitResult> {
    // Everything below is synchronous: the write is atomic by construction.
    const c = this.col(collection)
    const touched = new Set<string>()
    const rejected: RejectedEntry[] = []
    if (write.supersedeOutbox === true) {
      for (const row of c.outbox.values()) {
        row.status = 'pushed'
        this.countFoldable(c, row)
      }
      c.outbox.clear()
      for (const d of c.docs.values()) d.savedThrough = 0
    }
    for (const { doc, update } of write.remote ?? []) {
      const d = this.docOf(c, doc)
      touched.add(doc)
      if (update === null) {
        for (const row of d.rows) {
          if (row.status === 'outbox') {
            c.outbox.delete(row.id)
            rejected.push(this.rejectRow(c, row, 'document_deleted', `document ${doc} was deleted`))
          }
        }
        d.rows = []
        d.snapshot = null
        d.stateVector = null
        d.deleted = true
        d.foldRows = 0
        d.foldBytes = 0
      } else {
        d.deleted = false
        d.rows.push({ id: this.nextId++, doc, data: update.slice(), status: 'remote' })
        d.foldRows++
        d.foldBytes += update.length
      }
    }
    const localIds: number[] = []
    for (const { doc, update } of write.local ?? []) {
      const d = this.docOf(c, doc)
      touched.add(doc)
      const row: Row = { id: this.nextId++, doc, data: update.slice(), status: 'outbox' }
      d.rows.push(row)
      c.outbox.set(row.id, row)
      localIds.push(row.id)
    }
    for (const id of write.pushed ?? []) {
      const row = c.outbox.get(id)
      if (row === undefined) continue
      row.status = 'pushed'
      c.outbox.delete(id)
      touched.add(row.doc)
      this.countFoldable(c, row)
    }
    for (const { doc, seq } of write.saved ?? []) {
      const d = c.docs.get(doc)
      if (d !== undefined && seq > d.savedThrough) d.savedThrough = seq
    }
    if (write.state !== undefined) {
      const { cursor, checksum, epoch } = write.state
      if (cursor !== undefined) c.kv.set('cursor', String(cursor))
      if (checksum !== undefined) c.kv.set('checksum', checksum)
      if (epoch !== undefined) c.kv.set('epoch', epoch)
    }
    for (const doc of touched) {
      const d = c.docs.get(doc)
      if (d !== undefined && !d.deleted && this.due(d)) this.fold(d)
    }
    return { localIds, rejected }
  }

  /** An outbox row left the outbox: it may be folded now. */
  private countFoldable (c: MemCollection, row: Row): void {
    const d = c.docs.get(row.doc)
    if (d === undefined) return
    d.foldRows++
    d.foldBytes += row.data.length
  }

  private due (d: MemDoc): boolean {
    return d.foldRows >= this.compactAfterUpdates || (d.foldRows >= 2 && d.foldBytes >= this.compactAfterBytes)
  }

  private fold (d: MemDoc): void {
    if (d.rows.length === 0) return
    const folded = fold(d.snapshot, d.rows.map(r => r.data))
    d.snapshot = folded.snapshot
    d.stateVector = folded.stateVector
    // Outbox rows stay as rows until confirmed (they are in the snapshot
    // too); the rest is the snapshot now.
    d.rows = d.rows.filter(r => r.status === 'outbox')
    d.foldRows = 0
    d.foldBytes = 0
  }

  private rejectRow (c: MemCollection, row: Row, code: string, message: string): RejectedEntry {
    row.status = 'rejected'
    const entry: RejectedEntry = { id: row.id, doc: row.doc, update: row.data, code, message, at: Date.now() }
    c.rejected.push(entry)
    return entry
  }

  async outbox (collection: string, afterId: number, limit: number): Promise<OutboxEntry[]> {
    const out: OutboxEntry[] = []
    for (const row of this.col(collection).outbox.values()) {
      if (row.id <= afterId) continue
      out.push({ id: row.id, doc: row.doc, update: row.data })
      if (out.length >= limit) break
    }
    return out
  }

  async outboxSize (collection: string): Promise<number> {
    return this.col(collection).outbox.size
  }

  async reject (collection: string, ids: number[], code: string, message: string): Promise<RejectedEntry[]> {
    const c = this.col(collection)
    const out: RejectedEntry[] = []
    for (const id of ids) {
      const row = c.outbox.get(id)
      if (row === undefined) continue
      c.outbox.delete(id)
      this.countFoldable(c, row)
      out.push(this.rejectRow(c, row, code, message))
    }
    return out
  }

  async rejected (collection: string): Promise<RejectedEntry[]> {
    return [...this.col(collection).rejected]
  }

  async compact (collection: string, doc?: string): Promise<void> {
    const c = this.col(collection)
    for (const [id, d] of c.docs) {
      if (doc !== undefined && id !== doc) continue
      if (!d.deleted) this.fold(d)
    }
  }

  async close (): Promise<void> {}
}

/** A store in memory (tests, or an app that keeps nothing). */
export function memoryStore (options: StoreOptions = {}): SeqsyncStore {
  return new MemoryStore(options)
}
