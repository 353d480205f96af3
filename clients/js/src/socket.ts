/**
 * One sync socket's life as seen from the wire: opening it, the hello
 * (with the cursor as stored), the welcome (epoch, progress, presence
 * rejoined, pushing started), and every server frame routed to the part
 * that handles it: push.ts (`pushed`, `push_error`), stream.ts
 * (`changes`, `up_to_date`); `acked`, `reset` and `error` only move the
 * session along or end it (session.ts). Presence frames ride on the
 * socket of follow(), so they are sent and received here too.
 *
 * Why a file of its own: it is the only code that reads the socket's
 * events and switches on the frame types a server sends; the parts it
 * routes to get one typed frame each and never see the socket open or
 * close.
 */
import { ServerError, TransportError, UpgradeRequiredError } from './errors.js'
import type { PresenceFrame, ServerFrame, WelcomeFrame } from './protocol.js'
import { type SocketClose, SyncSocket } from './transport.js'
import type { ConnectionState } from './collection-types.js'
import type { CollectionCore } from './collection-core.js'
import { type Counters, Session, type SessionEnd, checkDone, emitProgress, errorEnd, finishSession } from './session.js'
import { onPushError, onPushed, pump } from './push.js'
import { onChanges, onUpToDate } from './stream.js'

/** Opens one socket, says hello and waits for the session to end (see
 * session.ts for how it does). */
export async function runSession (core: CollectionCore, mode: 'sync' | 'follow', limit: { id: number }, counters: Counters): Promise<SessionEnd> {
  const session = new Session(mode, limit, counters)
  session.finishing = mode === 'sync' || core.stopRequested
  const ended = new Promise<SessionEnd>(resolve => {
    session.end = resolve
  })
  setConnection(core, 'connecting')
  let socket: SyncSocket
  try {
    socket = await SyncSocket.open(core.ctx.wsUrl(core.name), core.ctx.WebSocket(), core.ctx.connectTimeoutMs)
  } catch (err) {
    setConnection(core, 'disconnected')
    return { kind: 'lost', error: err as Error }
  }
  session.socket = socket
  core.session = session
  socket.onFrame = (frame) => onFrame(core, session, frame)
  socket.onClose = (close) => onSocketClose(core, session, close)
  // The hello carries the cursor as stored now (after every queued write).
  await core.queue.run(() => {})
  session.startCursor = core.state.cursor
  session.arrivedThrough = core.state.cursor
  session.ackSent = core.state.cursor
  session.ackAnswered = core.state.cursor
  socket.send({
    type: 'hello',
    peer: core.peerId,
    after: core.state.cursor,
    epoch: core.state.epoch,
    checksum: core.state.checksum,
    schemaVersion: core.schemaVersion,
    docs: []
  })
  const end = await ended
  await core.flushLazy().catch(() => {})
  if (core.session === session) core.session = null
  setConnection(core, 'disconnected')
  return end
}

function setConnection (core: CollectionCore, state: ConnectionState): void {
  if (core.connection === state) return
  core.connection = state
  core.events.emit('connection', { state })
}

function onSocketClose (core: CollectionCore, session: Session, close: SocketClose): void {
  if (session.ended) return
  const error = close.error ?? new TransportError(`the sync socket closed (${close.code}${close.reason === '' ? '' : ` ${close.reason}`})`)
  if (close.error !== undefined && close.error.name === 'FrameError') {
    finishSession(core, session, { kind: 'lost', error: close.error })
    return
  }
  finishSession(core, session, { kind: 'lost', error })
}

function onFrame (core: CollectionCore, session: Session, frame: ServerFrame): void {
  if (session.ended) return
  switch (frame.type) {
    case 'welcome':
      onWelcome(core, session, frame)
      break
    case 'pushed':
      onPushed(core, session, frame)
      break
    case 'push_error':
      onPushError(core, session, frame)
      break
    case 'changes':
      onChanges(core, session, frame)
      break
    case 'up_to_date':
      onUpToDate(core, session, frame)
      break
    case 'acked':
      session.ackAnswered = Math.max(session.ackAnswered, frame.seq)
      checkDone(core, session)
      break
    case 'reset':
      // The server closes the socket next; recover on our side.
      core.events.emit('reset', { reason: frame.reason, epoch: frame.epoch, head: frame.head })
      finishSession(core, session, { kind: 'reset', frame })
      break
    case 'error':
      finishSession(core, session, errorEnd(core, frame.code, frame.message))
      break
    case 'presence':
      onPresence(core, frame)
      break
    case 'ack_error':
      // Refused, but answered: nothing waits for it any more. Compaction
      // on the server then does not know this peer's cursor (e.g. a token
      // for one document, which carries no `ack` right).
      session.ackAnswered = Math.max(session.ackAnswered, frame.seq)
      core.events.emit('error', new ServerError(frame.code, `the server refused the ack of seq ${frame.seq}: ${frame.message}`))
      checkDone(core, session)
      break
  }
}

function onWelcome (core: CollectionCore, session: Session, frame: WelcomeFrame): void {
  if (core.schemaVersion > 0 && frame.schemaVersion > core.schemaVersion) {
    finishSession(core, session, {
      kind: 'fatal',
      error: new UpgradeRequiredError(`the server's schema version is ${frame.schemaVersion}, this app's ${core.schemaVersion}: upgrade the app (local data is untouched)`, core.schemaVersion, frame.schemaVersion)
    })
    return
  }
  session.welcome = frame
  core.welcomes++
  rejoinPresences(core)
  session.target = Math.max(session.target, frame.head)
  session.counters.head = Math.max(session.counters.head, frame.head)
  session.progress.expected = Math.max(0, frame.head - session.startCursor)
  core.queue.run(async () => {
    if (frame.epoch !== '' && frame.epoch !== core.state.epoch) {
      await core.commit({ state: { epoch: frame.epoch } })
      core.state.epoch = frame.epoch
    }
    session.progress.toPush = await core.store.outboxSize(core.name)
    emitProgress(core, session)
  }).catch(err => finishSession(core, session, { kind: 'lost', error: err as Error }))
  setConnection(core, 'connected')
  pump(core, session)
}

// ---- presence ----------------------------------------------------------------

/** Sends a presence frame on the open, welcomed socket of `follow()`;
 * nothing otherwise (they are sent again at the next welcome). A one-shot
 * `sync()` carries no presence: the person would appear and vanish with
 * each sync. */
export function sendFrame (core: CollectionCore, frame: { type: 'awareness', doc: string, update: Uint8Array } | { type: 'leave', doc: string }): void {
  const session = core.session
  if (session === null || session.mode !== 'follow' || session.ended || session.welcome === null || session.socket === null) return
  session.socket.send(frame)
}

export function sendPresence (core: CollectionCore, doc: string, update: Uint8Array): void {
  sendFrame(core, { type: 'awareness', doc, update })
}

/** A new socket is welcomed: every presence (re)joins its room with its
 * local state (a `null` one joins without being seen). */
function rejoinPresences (core: CollectionCore): void {
  if (core.session?.mode !== 'follow') return
  for (const presence of core.presences.values()) {
    sendPresence(core, presence.docId, presence.encodeUpdate([presence.clientID]))
  }
}

function onPresence (core: CollectionCore, frame: PresenceFrame): void {
  const presence = core.presences.get(frame.doc)
  if (presence === undefined) return
  try {
    presence.applyUpdate(frame.update, 'server')
  } catch (err) {
    core.events.emit('error', new TransportError(`a presence frame for ${JSON.stringify(frame.doc)} did not decode: ${(err as Error).message}`))
  }
}
