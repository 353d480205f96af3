/**
 * One sync socket's state, from open to end (a `Session`), and the
 * bookkeeping every part of the socket's work shares: how a session ends,
 * when it is done (everything pushed confirmed, the stream at the head,
 * the cursor acked), when a following collection is caught up
 * (whenSynced), the debounced ack and the progress event.
 *
 * Why apart from socket.ts: push.ts and stream.ts end sessions, check
 * whether they are done and schedule acks. Kept here, under them, the
 * imports go one way: socket.ts routes frames to push.ts and stream.ts,
 * and all three use this file.
 */
import { SchemaError, ServerError, UpgradeRequiredError } from './errors.js'
import type { ChangesFrame, ResetFrame, WelcomeFrame } from './protocol.js'
import type { SyncSocket } from './transport.js'
import type { Progress } from './collection-types.js'
import type { CollectionCore } from './collection-core.js'
import type { Flight } from './push.js'

export type SessionEnd =
  | { kind: 'done' }
  | { kind: 'reset', frame: ResetFrame }
  | { kind: 'fatal', error: Error }
  | { kind: 'lost', error: Error }

/** What the sessions of one sync() or follow() did, for its report. */
export interface Counters {
  pulled: number
  pushed: number
  alreadyThere: number
  rejected: number
  reset: ResetFrame | null
  resetPulled: number
  head: number
}

/** One socket's state. */
export class Session {
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

export function finishSession (core: CollectionCore, session: Session, end: SessionEnd): void {
  if (session.ended) return
  session.ended = true
  for (const t of session.retryTimers) clearTimeout(t)
  session.retryTimers.clear()
  if (session.ackTimer !== null) clearTimeout(session.ackTimer)
  session.socket?.close(end.kind === 'done' ? 1000 : 1000)
  // Remote states would go stale unseen; they come back with the next
  // socket's room snapshot.
  for (const presence of core.presences.values()) presence.dropRemote('connection closed')
  session.end(end)
}

/** How an `error` frame (or a schema push_error) ends the session. */
export function errorEnd (core: CollectionCore, code: string, message: string): SessionEnd {
  if (code === 'schema_too_old') {
    return { kind: 'fatal', error: new UpgradeRequiredError(`the server no longer takes schema version ${core.schemaVersion}: upgrade the app (${message})`, core.schemaVersion, undefined, 'schema_too_old') }
  }
  if (code === 'schema_too_new') {
    return { kind: 'fatal', error: new SchemaError('schema_too_new', `this app's schema version ${core.schemaVersion} is newer than the server's: wait for the server (${message})`, core.schemaVersion) }
  }
  const error = new ServerError(code, `the server refused the sync socket: ${code}: ${message}`)
  if (code === 'storage' || code === 'shutting_down' || code === 'internal' || code === 'overloaded') {
    return { kind: 'lost', error }
  }
  return { kind: 'fatal', error }
}

export function emitProgress (core: CollectionCore, session: Session): void {
  const p = session.progress
  core.events.emit('progress', { received: Math.min(p.received, p.expected), expected: p.expected, pushed: Math.min(p.pushed, p.toPush), toPush: p.toPush })
}

// ---- acks --------------------------------------------------------------------

export function scheduleAck (core: CollectionCore, session: Session): void {
  if (session.mode === 'sync' || session.finishing) return // acked once at the end
  if (session.ackTimer !== null) return
  session.ackTimer = setTimeout(() => {
    session.ackTimer = null
    sendAck(core, session)
  }, core.ctx.ackDelayMs)
}

function sendAck (core: CollectionCore, session: Session): void {
  if (session.ended || core.peerId === '') return
  if (core.state.cursor <= session.ackSent) return
  // Ack only what is stored: flush the lazy cursor first.
  const seq = core.state.cursor
  session.ackSent = seq
  core.flushLazy().then(() => {
    if (session.socket?.send({ type: 'ack', seq }) !== true) session.ackSent = Math.min(session.ackSent, session.ackAnswered)
  }, () => {
    session.ackSent = session.ackAnswered
  })
}

// ---- done and idle -----------------------------------------------------------

/** Ends a finishing session once everything is confirmed and received,
 * and wakes whenSynced() waiters. */
export function checkDone (core: CollectionCore, session: Session): void {
  if (session.ended || session.welcome === null) return
  checkIdle(core, session)
  if (!session.finishing) return
  if (!settled(core, session)) return
  // Everything pushed is confirmed, the stream reached the head: ack.
  if (core.state.cursor > session.ackSent) {
    sendAck(core, session)
    return // the acked answer calls checkDone again
  }
  if (session.ackAnswered < session.ackSent) return
  finishSession(core, session, { kind: 'done' })
}

/** Nothing in flight or to send, and the stream at the target head. */
function settled (core: CollectionCore, session: Session): boolean {
  return session.exhausted &&
    !session.pumping &&
    session.inFlight.size === 0 &&
    session.requeue.length === 0 &&
    session.upToDate >= session.target &&
    core.unsaved.length === 0 &&
    session.retryTimers.size === 0
}

export function checkIdle (core: CollectionCore, session: Session): void {
  if (core.idleWaiters.length === 0 || !settled(core, session)) return
  if (session.retryTimers.size > 0) return
  const waiters = core.idleWaiters
  core.idleWaiters = []
  for (const w of waiters) w()
}
