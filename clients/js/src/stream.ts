/**
 * The stream: `changes` frames applied to the live docs as they arrive and
 * stored with their cursor and checksum (gathered into few local commits
 * while catching up), deletes, `up_to_date` (the cursor moved past what
 * the stream did not send), and the epoch of a collection created during
 * the session. `applyToLive` and `afterDeletes` also serve recover.ts and
 * `Collection.delete`.
 *
 * Why a file of its own: this is the pull half of the socket. It shares
 * with the push pipeline only the session it runs in (session.ts) and the
 * report of rejected rows (a delete refuses the document's outbox rows).
 */
import * as Y from 'yjs'
import { UpgradeRequiredError } from './errors.js'
import type { ChangesFrame, UpToDateFrame } from './protocol.js'
import type { RejectedEntry } from './store.js'
import type { CollectionCore, LiveDoc } from './collection-core.js'
import { type Session, checkDone, emitProgress, finishSession, scheduleAck } from './session.js'
import { reportRejected } from './push.js'

/** Pulled changes committed locally together, at most, and their bytes.
 * The store writes one merged row per document per commit, so a catch-up
 * costs rows in proportion to its commits: bytes bound a commit, and the
 * change count only caps the objects held at once. At 8,000 changes (the
 * Rust replica's LOCAL_COMMIT_CHANGES) the 1,000-document cold start in
 * Chromium wrote 33,899 rows in 38 commits and took 10.2 s; bounded by the
 * 8 MiB, 4,899 rows in 9 commits and 4.8 s (demo/bench/browser.js). */
const LOCAL_COMMIT_CHANGES = 65536
const LOCAL_COMMIT_BYTES = 8 << 20
/** How long frames gather before a commit while catching up. */
const CATCH_UP_GATHER_MS = 15

export function onChanges (core: CollectionCore, session: Session, frame: ChangesFrame): void {
  // Frames that arrive while the store is busy are committed together
  // (up to LOCAL_COMMIT_CHANGES / LOCAL_COMMIT_BYTES per transaction): a
  // catch-up of 260k changes is a few dozen local commits, not a
  // thousand.
  applyOnArrival(core, session, frame)
  session.frames.push(frame)
  if (session.drainScheduled) return
  session.drainScheduled = true
  core.queue.run(() => drainFrames(core, session))
    .catch(err => finishSession(core, session, { kind: 'lost', error: err as Error }))
    .finally(() => checkDone(core, session))
}

/** Applies a frame's updates to the live docs as it arrives, before it is
 * stored (the store commit then only moves the cursor with the data):
 * the other client's keystroke shows without waiting for the local
 * disk. Safe: a crash before the commit leaves the cursor before the
 * frame, which is streamed again. Docs applied here are skipped when the
 * frame is stored. */
function applyOnArrival (core: CollectionCore, session: Session, frame: ChangesFrame): void {
  if (core.schemaVersion > 0 && frame.changes.some(c => c.schemaVersion > core.schemaVersion)) return
  const byDoc = new Map<string, Uint8Array[]>()
  for (const c of frame.changes) {
    if (c.seq <= session.arrivedThrough) continue
    if (c.kind === 'delete' || (c.origin !== '' && c.origin === core.peerId)) continue
    if (!core.live.has(c.doc)) continue
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
    const live = core.live.get(doc) as LiveDoc
    live.ydoc.transact(() => {
      for (const u of updates) Y.applyUpdate(live.ydoc, u, core.remoteOrigin)
    }, core.remoteOrigin)
  }
  appliedOnArrival.set(frame, new Set(byDoc.keys()))
  core.events.emit('change', { docs: [...byDoc.keys()], source: 'stream' })
}

async function drainFrames (core: CollectionCore, session: Session): Promise<void> {
  // Catching up (the stream is not at welcome's head yet): let frames
  // gather for a moment, so a commit covers thousands of changes.
  const catchingUp = (): boolean => session.welcome !== null && core.state.cursor + pendingChanges(session) < session.welcome.head
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
    await applyFrames(core, session, frames)
  }
  session.drainScheduled = false
}

/** Stores frames' changes and their last cursor in one transaction. */
async function applyFrames (core: CollectionCore, session: Session, frames: ChangesFrame[]): Promise<void> {
  if (core.schemaVersion > 0) {
    for (const frame of frames) {
      const newer = frame.changes.find(c => c.schemaVersion > core.schemaVersion)
      if (newer !== undefined) {
        // Frames before it are fine: keep them.
        const ok = frames.slice(0, frames.indexOf(frame))
        if (ok.length > 0) await applyFrames(core, session, ok)
        finishSession(core, session, {
          kind: 'fatal',
          error: new UpgradeRequiredError(`a change of ${newer.doc} is at schema version ${newer.schemaVersion}, this app's is ${core.schemaVersion}: upgrade the app (nothing of it was stored)`, core.schemaVersion, newer.schemaVersion)
        })
        return
      }
    }
  }
  const remote: Array<{ doc: string, update: Uint8Array | null }> = []
  const toApply: Array<{ doc: string, update: Uint8Array | null }> = []
  let others = 0
  const deletes: string[] = []
  let cursor = core.state.cursor
  let checksum = core.state.checksum
  for (const frame of frames) {
    const applied = appliedOnArrival.get(frame)
    for (const c of frame.changes) {
      if (c.seq <= cursor) continue // already had it
      if (c.origin !== '' && c.origin === core.peerId && c.kind !== 'delete') continue // our own edit, back
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
  if (remote.length === 0 && cursor === core.state.cursor) return
  if (remote.length === 0) {
    // Only our own changes came back: the cursor moves in memory now and
    // in the store with the next commit (a crash before it re-reads them,
    // and they are skipped again).
    core.state.cursor = cursor
    core.state.checksum = checksum
    core.lazy.state = { cursor, checksum }
    core.scheduleLazy()
    session.progress.received = cursor - session.startCursor
    emitProgress(core, session)
    scheduleAck(core, session)
    return
  }
  const res = await core.commit({ remote, state: { cursor, checksum } })
  core.state.cursor = cursor
  core.state.checksum = checksum
  session.counters.pulled += others
  for (const { doc, update } of remote) if (update !== null) core.deletedDocs.delete(doc)
  applyToLive(core, toApply, 'stream')
  if (deletes.length > 0) afterDeletes(core, deletes, res.rejected, session)
  session.progress.received = cursor - session.startCursor
  emitProgress(core, session)
  scheduleAck(core, session)
}

/** Applies stored remote updates to the live docs, one transaction per
 * document. */
export function applyToLive (core: CollectionCore, remote: Array<{ doc: string, update: Uint8Array | null }>, source: 'stream' | 'recovery'): void {
  const byDoc = new Map<string, Uint8Array[]>()
  for (const { doc, update } of remote) {
    if (update === null) continue
    core.deletedDocs.delete(doc)
    let list = byDoc.get(doc)
    if (list === undefined) {
      list = []
      byDoc.set(doc, list)
    }
    list.push(update)
  }
  for (const [doc, updates] of byDoc) {
    const live = core.live.get(doc)
    if (live === undefined) continue
    live.ydoc.transact(() => {
      for (const u of updates) Y.applyUpdate(live.ydoc, u, core.remoteOrigin)
    }, core.remoteOrigin)
  }
  if (byDoc.size > 0) core.events.emit('change', { docs: [...byDoc.keys()], source })
}

export function afterDeletes (core: CollectionCore, docs: string[], rejected: RejectedEntry[], session: Session | null = null): void {
  for (const doc of docs) {
    core.deletedDocs.add(doc)
    core.events.emit('deleted', { doc })
  }
  reportRejected(core, session, rejected)
}

export function onUpToDate (core: CollectionCore, session: Session, frame: UpToDateFrame): void {
  core.queue.run(async () => {
    if (session.ended) return
    if (frame.head > core.state.cursor) {
      // Changes after the cursor that the stream did not send (filtered
      // or compacted away): the cursor moves past them.
      const checksum = frame.checksum
      await core.commit({ state: { cursor: frame.head, checksum } })
      core.state.cursor = frame.head
      core.state.checksum = checksum
      scheduleAck(core, session)
    }
    if (core.state.epoch === '' && core.state.cursor > 0 && !core.fetchingEpoch) learnEpoch(core)
    session.upToDate = Math.max(session.upToDate, frame.head)
    session.counters.head = Math.max(session.counters.head, frame.head)
    session.progress.received = session.progress.expected
    emitProgress(core, session)
  }).catch(err => finishSession(core, session, { kind: 'lost', error: err as Error }))
    .finally(() => checkDone(core, session))
}

/** The collection was created during this session (welcome had no
 * epoch, and no frame carries it since): ask for it over HTTP, so the
 * next hello names the cursor's epoch. */
function learnEpoch (core: CollectionCore): void {
  core.fetchingEpoch = true
  core.epochFetch = core.ctx.http.epoch(core.name).then(epoch => core.queue.run(async () => {
    if (epoch === null || core.state.epoch !== '') return
    await core.commit({ state: { epoch } })
    core.state.epoch = epoch
  })).catch(() => {}).finally(() => { core.fetchingEpoch = false })
}

/** Per changes frame, the documents applied to live docs on arrival. */
const appliedOnArrival = new WeakMap<ChangesFrame, Set<string>>()

function pendingChanges (session: Session): number {
  let n = 0
  for (const f of session.frames) n += f.changes.length
  return n
}
