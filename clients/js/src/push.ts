/**
 * The push pipeline: outbox rows read from the store, merged per document
 * (`Y.mergeUpdates`), packed into `push` / `push_batch` frames with a
 * bounded number in flight, and the answers: `pushed` confirms rows
 * (lazily, see collection-core.ts), `push_error` either retries later
 * (retryable codes) or narrows a permanent refusal batch → document → row
 * until only the refused row goes to the rejected record.
 *
 * Why a file of its own: this is the one place that turns the outbox into
 * frames and back, with its own limits (below) mirroring the server's and
 * the Rust replica's. It runs inside a session (session.ts) and is woken
 * by socket.ts on welcome, by local-docs.ts when edits are saved, and by
 * `Collection.stop` for the goodbye.
 */
import * as Y from 'yjs'
import { PERMANENT_PUSH_CODES, RETRYABLE_PUSH_CODES, ServerError } from './errors.js'
import type { PushErrorFrame, PushedFrame } from './protocol.js'
import type { OutboxEntry, RejectedEntry } from './store.js'
import type { CollectionCore } from './collection-core.js'
import { type Session, checkDone, emitProgress, errorEnd, finishSession } from './session.js'

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
/** Retries of a push refused with a retryable code within one sync. */
const SYNC_RETRIES = 4

/** Outbox rows of one document, merged into one update. */
export interface Group {
  doc: string
  rows: number[]
  update: Uint8Array
}

/** One push or push_batch frame, sent or waiting to be. */
export interface Flight {
  id: number
  groups: Group[]
  /** batch → group → row: how finely a permanent refusal is bisected. */
  level: 'batch' | 'group' | 'row'
  attempts: number
}

function maxInFlight (session: Session): number {
  return Math.max(1, Math.min(MAX_IN_FLIGHT, session.welcome?.maxPushesInFlight ?? 1))
}

/** Sends outbox rows until the in-flight limit is reached. */
export function pump (core: CollectionCore, session: Session): void {
  if (session.ended || session.welcome === null) return
  if (session.pumping) {
    session.pumpAgain = true
    return
  }
  session.pumping = true
  core.queue.run(async () => {
    do {
      session.pumpAgain = false
      await fill(core, session)
    } while (session.pumpAgain && !session.ended)
  }).catch(err => {
    finishSession(core, session, { kind: 'lost', error: err as Error })
  }).finally(() => {
    session.pumping = false
    checkDone(core, session)
  })
}

async function fill (core: CollectionCore, session: Session): Promise<void> {
  const max = maxInFlight(session)
  while (!session.ended && session.inFlight.size < max) {
    const queued = session.requeue.shift()
    if (queued !== undefined) {
      send(session, queued)
      continue
    }
    if (session.exhausted) return
    // Read up to PLAN_ROWS rows / PLAN_BYTES, so a document's offline
    // edits are merged into few updates.
    const rows: OutboxEntry[] = []
    let bytes = 0
    while (rows.length < PLAN_ROWS && bytes < PLAN_BYTES) {
      const page = (await core.store.outbox(core.name, session.sentThrough, OUTBOX_PAGE)).filter(r => r.id <= session.limit.id)
      if (page.length === 0) break
      session.sentThrough = (page[page.length - 1] as OutboxEntry).id
      for (const r of page) bytes += r.update.length
      rows.push(...page)
    }
    if (rows.length === 0) {
      session.exhausted = true
      return
    }
    const flights = await plan(core, session, rows)
    session.requeue.push(...flights)
  }
}

/** Groups outbox rows per document (merged), then into batches. Rows of
 * documents deleted locally and oversized rows are rejected here. */
async function plan (core: CollectionCore, session: Session, rows: OutboxEntry[]): Promise<Flight[]> {
  const byDoc = new Map<string, OutboxEntry[]>()
  const deleted: number[] = []
  const oversized: number[] = []
  for (const row of rows) {
    if (core.deletedDocs.has(row.doc)) {
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
  if (deleted.length > 0) await rejectRows(core, session, deleted, 'document_deleted', 'the document was deleted')
  if (oversized.length > 0) await rejectRows(core, session, oversized, 'too_large', `an update over ${MAX_UPDATE_BYTES} bytes`)
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
      flights.push(makeFlight(session, current, 'batch'))
      current = []
      bytes = 0
    }
    current.push(g)
    bytes += g.update.length
  }
  if (current.length > 0) flights.push(makeFlight(session, current, 'batch'))
  return flights
}

function makeFlight (session: Session, groups: Group[], level: Flight['level']): Flight {
  return { id: session.nextPushId++, groups, level, attempts: 0 }
}

function send (session: Session, flight: Flight): void {
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

export function onPushed (core: CollectionCore, session: Session, frame: PushedFrame): void {
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
  core.queue.run(async () => {
    // Marking rows confirmed can wait for the next commit (at most
    // LAZY_MS): a crash before it only re-sends them, and the server
    // answers seq 0 for what it has.
    core.lazy.pushed.push(...ids)
    for (const [doc, seq] of saved) core.lazy.saved.set(doc, Math.max(core.lazy.saved.get(doc) ?? 0, seq))
    core.scheduleLazy()
    for (const g of flight.groups) {
      const s = core.statusOf(g.doc)
      s.pending = Math.max(0, s.pending - g.rows.length)
    }
    for (const [doc, seq] of saved) {
      const s = core.statusOf(doc)
      s.savedThrough = Math.max(s.savedThrough, seq)
      core.events.emit('status', core.status(doc))
    }
    session.progress.pushed += ids.length
    emitProgress(core, session)
  }).catch(err => finishSession(core, session, { kind: 'lost', error: err as Error }))
    .finally(() => pump(core, session))
}

export function onPushError (core: CollectionCore, session: Session, frame: PushErrorFrame): void {
  const flight = session.inFlight.get(frame.id)
  if (flight === undefined) return
  session.inFlight.delete(frame.id)
  const { code, message } = frame
  if (code === 'schema_too_old' || code === 'schema_too_new') {
    finishSession(core, session, errorEnd(core, code, message))
    return
  }
  const bisectable = code === 'batch_too_large' || code === 'empty_batch' || PERMANENT_PUSH_CODES.has(code)
  if (bisectable && flight.level === 'batch') {
    // One of the documents is refused: push them one by one.
    session.requeue.unshift(...flight.groups.map(g => makeFlight(session, [g], 'group')))
    pump(core, session)
    return
  }
  if (bisectable && flight.level === 'group') {
    // A merged update is refused: find the row.
    const g = flight.groups[0] as Group
    core.queue.run(async () => {
      const rows = await outboxRows(core, g.doc, g.rows)
      const solos = rows.map(r => makeFlight(session, [{ doc: r.doc, rows: [r.id], update: r.update }], 'row'))
      session.requeue.unshift(...solos)
    }).catch(err => finishSession(core, session, { kind: 'lost', error: err as Error }))
      .finally(() => pump(core, session))
    return
  }
  if (PERMANENT_PUSH_CODES.has(code) || code === 'batch_too_large' || code === 'empty_batch') {
    const ids = flight.groups.flatMap(g => g.rows)
    core.queue.run(() => rejectRows(core, session, ids, code, message))
      .catch(err => finishSession(core, session, { kind: 'lost', error: err as Error }))
      .finally(() => pump(core, session))
    return
  }
  // Retryable (or unknown): nothing was written; try again later.
  if (!RETRYABLE_PUSH_CODES.has(code)) core.events.emit('error', new ServerError(code, `push refused: ${code}: ${message}`))
  flight.attempts++
  if (session.mode === 'sync' && flight.attempts > SYNC_RETRIES) {
    // Left in the outbox for the next sync (followUpNeeded).
    checkDone(core, session)
    return
  }
  const delay = Math.min(core.ctx.backoff.maxMs, core.ctx.backoff.minMs * 2 ** flight.attempts)
  const timer = setTimeout(() => {
    session.retryTimers.delete(timer)
    session.requeue.push(flight)
    pump(core, session)
  }, delay)
  session.retryTimers.add(timer)
}

/** The outbox rows with these ids (of one document). */
async function outboxRows (core: CollectionCore, doc: string, ids: number[]): Promise<OutboxEntry[]> {
  const wanted = new Set(ids)
  const out: OutboxEntry[] = []
  let after = Math.min(...ids) - 1
  const last = Math.max(...ids)
  while (after < last) {
    const page = await core.store.outbox(core.name, after, OUTBOX_PAGE)
    if (page.length === 0) break
    for (const r of page) if (wanted.has(r.id) && r.doc === doc) out.push(r)
    after = (page[page.length - 1] as OutboxEntry).id
  }
  return out
}

/** Moves rows into the rejected record (inside the queue). */
async function rejectRows (core: CollectionCore, session: Session | null, ids: number[], code: string, message: string): Promise<void> {
  const rejected = await core.store.reject(core.name, ids, code, message)
  reportRejected(core, session, rejected)
}

export function reportRejected (core: CollectionCore, session: Session | null, rejected: RejectedEntry[]): void {
  const docs = new Set<string>()
  for (const r of rejected) {
    const s = core.statusOf(r.doc)
    s.pending = Math.max(0, s.pending - 1)
    docs.add(r.doc)
    if (session !== null) session.counters.rejected++
  }
  for (const r of rejected) {
    core.events.emit('rejected', r)
    core.events.emit('error', new ServerError(r.code, `an update of ${r.doc} was refused for good (${r.code}: ${r.message}); it is kept in the rejected record`))
  }
  for (const doc of docs) core.events.emit('status', core.status(doc))
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
