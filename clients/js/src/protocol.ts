/**
 * The sync socket's frames (docs/PROTOCOL.md, "The sync socket"): every
 * WebSocket message is one binary frame, a `varuint` type followed by its
 * fields in lib0's encoding (`writeVarUint`, `writeVarString`,
 * `writeVarUint8Array`).
 *
 * Encoding goes through `lib0/encoding`, so the bytes are exactly those of
 * Yjs's own protocols. Decoding is strict and written here: a truncated
 * field, a varuint above 2^53 − 1, invalid UTF-8, an unknown type or bytes
 * left over after the last field throw a {@link FrameError}, as the server
 * refuses them with `invalid_frame`.
 */
import * as encoding from 'lib0/encoding'

/** Frame types, client → server. */
export const HELLO = 1
export const PUSH = 2
export const PUSH_BATCH = 3
export const ACK = 4
export const AWARENESS = 5
export const LEAVE = 6
/** Frame types, server → client. */
export const WELCOME = 64
export const PUSHED = 65
export const PUSH_ERROR = 66
export const CHANGES = 67
export const UP_TO_DATE = 68
export const ACKED = 69
export const RESET = 70
export const ERROR = 71
export const ACK_ERROR = 72
export const PRESENCE = 73

/** A change's kind in a `changes` frame. */
export const KIND_UPDATE = 0
export const KIND_DELETE = 1
export const KIND_SNAPSHOT = 2

export type ChangeKind = 'update' | 'delete' | 'snapshot'

const KIND_NAMES: ChangeKind[] = ['update', 'delete', 'snapshot']

export interface HelloFrame {
  type: 'hello'
  /** The client's peer id; empty: anonymous (acks refused). */
  peer: string
  /** The cursor: the client has every change ≤ `after`. */
  after: number
  /** The cursor's epoch; empty for a client that has none. */
  epoch: string
  /** The log checksum at `after` (16 hex); empty: not checked. */
  checksum: string
  /** The client's schema version; 0: the server's. */
  schemaVersion: number
  /** Documents to stream; empty: the whole collection. */
  docs: string[]
}

export interface PushFrame {
  type: 'push'
  id: number
  doc: string
  update: Uint8Array
}

export interface PushBatchFrame {
  type: 'push_batch'
  id: number
  updates: Array<{ doc: string, update: Uint8Array }>
}

export interface AckFrame {
  type: 'ack'
  seq: number
}

export interface WelcomeFrame {
  type: 'welcome'
  /** Empty: the collection does not exist yet. */
  epoch: string
  head: number
  schemaVersion: number
  maxPushesInFlight: number
}

export interface PushedFrame {
  type: 'pushed'
  id: number
  head: number
  /** One per update of the push; 0 when the update added nothing. */
  seqs: number[]
}

export interface PushErrorFrame {
  type: 'push_error'
  id: number
  code: string
  message: string
}

export interface Change {
  seq: number
  doc: string
  kind: ChangeKind
  schemaVersion: number
  /** The peer that pushed it; empty when unknown. */
  origin: string
  /** A Yjs v1 update; empty for a delete. */
  payload: Uint8Array
}

export interface ChangesFrame {
  type: 'changes'
  through: number
  checksum: string
  changes: Change[]
}

export interface UpToDateFrame {
  type: 'up_to_date'
  head: number
  /** The log checksum at `head`; empty at 0. */
  checksum: string
}

export interface AckedFrame {
  type: 'acked'
  seq: number
}

export interface ResetFrame {
  type: 'reset'
  /** `foreign_epoch`, `cursor_beyond_head` or `history_replaced`. */
  reason: string
  epoch: string
  head: number
}

export interface ErrorFrame {
  type: 'error'
  code: string
  message: string
}

/** An ack the server refused (no peer id, a token without `ack`, beyond
 * the head); the socket stays open. */
export interface AckErrorFrame {
  type: 'ack_error'
  seq: number
  code: string
  message: string
}

/** Presence in a document (a y-protocols awareness update); the first one
 * for a document joins its room. */
export interface AwarenessFrame {
  type: 'awareness'
  doc: string
  update: Uint8Array
}

/** Leaves a document's presence room. */
export interface LeaveFrame {
  type: 'leave'
  doc: string
}

/** States in a document's presence room (a y-protocols awareness update). */
export interface PresenceFrame {
  type: 'presence'
  doc: string
  update: Uint8Array
}

export type ClientFrame = HelloFrame | PushFrame | PushBatchFrame | AckFrame | AwarenessFrame | LeaveFrame
export type ServerFrame =
  | WelcomeFrame
  | PushedFrame
  | PushErrorFrame
  | ChangesFrame
  | UpToDateFrame
  | AckedFrame
  | ResetFrame
  | ErrorFrame
  | AckErrorFrame
  | PresenceFrame
export type Frame = ClientFrame | ServerFrame

/** A frame that cannot be decoded (or encoded): truncated, trailing bytes,
 * unknown type, invalid UTF-8, a varuint out of range, a bad kind. */
export class FrameError extends Error {
  /** Always `invalid_frame`, the server's code for the same refusal. */
  readonly code = 'invalid_frame'
  /** The byte offset where decoding stopped. */
  readonly offset: number
  constructor (message: string, offset: number) {
    super(`invalid frame: ${message} (at byte ${offset})`)
    this.name = 'FrameError'
    this.offset = offset
  }
}

const MAX_VARUINT = Number.MAX_SAFE_INTEGER // 2^53 - 1

function checkUint (value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > MAX_VARUINT) {
    throw new FrameError(`${what} must be an integer in [0, 2^53 - 1], got ${value}`, 0)
  }
}

/** Encodes a frame into its bytes. Throws {@link FrameError} for a field
 * out of range (a negative or fractional number). */
export function encodeFrame (frame: Frame): Uint8Array {
  const e = encoding.createEncoder()
  const uint = (value: number, what: string): void => {
    checkUint(value, what)
    encoding.writeVarUint(e, value)
  }
  const str = (value: string): void => encoding.writeVarString(e, value)
  const bytes = (value: Uint8Array): void => encoding.writeVarUint8Array(e, value)
  switch (frame.type) {
    case 'hello':
      uint(HELLO, 'type')
      str(frame.peer)
      uint(frame.after, 'after')
      str(frame.epoch)
      str(frame.checksum)
      uint(frame.schemaVersion, 'schema_version')
      uint(frame.docs.length, 'docs')
      for (const d of frame.docs) str(d)
      break
    case 'push':
      uint(PUSH, 'type')
      uint(frame.id, 'id')
      str(frame.doc)
      bytes(frame.update)
      break
    case 'push_batch':
      uint(PUSH_BATCH, 'type')
      uint(frame.id, 'id')
      uint(frame.updates.length, 'count')
      for (const u of frame.updates) {
        str(u.doc)
        bytes(u.update)
      }
      break
    case 'ack':
      uint(ACK, 'type')
      uint(frame.seq, 'seq')
      break
    case 'welcome':
      uint(WELCOME, 'type')
      str(frame.epoch)
      uint(frame.head, 'head')
      uint(frame.schemaVersion, 'schema_version')
      uint(frame.maxPushesInFlight, 'max_pushes_in_flight')
      break
    case 'pushed':
      uint(PUSHED, 'type')
      uint(frame.id, 'id')
      uint(frame.head, 'head')
      uint(frame.seqs.length, 'count')
      for (const s of frame.seqs) uint(s, 'seq')
      break
    case 'push_error':
      uint(PUSH_ERROR, 'type')
      uint(frame.id, 'id')
      str(frame.code)
      str(frame.message)
      break
    case 'changes':
      uint(CHANGES, 'type')
      uint(frame.through, 'through')
      str(frame.checksum)
      uint(frame.changes.length, 'count')
      for (const c of frame.changes) {
        uint(c.seq, 'seq')
        str(c.doc)
        uint(KIND_NAMES.indexOf(c.kind), 'kind')
        uint(c.schemaVersion, 'schema_version')
        str(c.origin)
        bytes(c.payload)
      }
      break
    case 'up_to_date':
      uint(UP_TO_DATE, 'type')
      uint(frame.head, 'head')
      str(frame.checksum)
      break
    case 'acked':
      uint(ACKED, 'type')
      uint(frame.seq, 'seq')
      break
    case 'reset':
      uint(RESET, 'type')
      str(frame.reason)
      str(frame.epoch)
      uint(frame.head, 'head')
      break
    case 'error':
      uint(ERROR, 'type')
      str(frame.code)
      str(frame.message)
      break
    case 'ack_error':
      uint(ACK_ERROR, 'type')
      uint(frame.seq, 'seq')
      str(frame.code)
      str(frame.message)
      break
    case 'awareness':
      uint(AWARENESS, 'type')
      str(frame.doc)
      bytes(frame.update)
      break
    case 'leave':
      uint(LEAVE, 'type')
      str(frame.doc)
      break
    case 'presence':
      uint(PRESENCE, 'type')
      str(frame.doc)
      bytes(frame.update)
      break
    default: {
      const never: never = frame
      throw new FrameError(`unknown frame ${JSON.stringify(never)}`, 0)
    }
  }
  return encoding.toUint8Array(e)
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/** A strict reader over one frame's bytes. */
class Reader {
  pos = 0
  constructor (private readonly buf: Uint8Array) {}

  uint (what: string): number {
    const start = this.pos
    let value = 0
    let mult = 1
    for (;;) {
      if (this.pos >= this.buf.length) throw new FrameError(`truncated varuint (${what})`, start)
      const byte = this.buf[this.pos++] as number
      value += (byte & 0x7f) * mult
      if (value > MAX_VARUINT) throw new FrameError(`varuint above 2^53 - 1 (${what})`, start)
      if (byte < 0x80) return value
      mult *= 128
      if (mult > 2 ** 56) throw new FrameError(`varuint too long (${what})`, start)
    }
  }

  bytes (what: string): Uint8Array {
    const len = this.uint(`${what} length`)
    const start = this.pos
    if (len > this.buf.length - this.pos) {
      throw new FrameError(`truncated ${what}: ${len} bytes announced, ${this.buf.length - this.pos} left`, start)
    }
    this.pos += len
    return this.buf.subarray(start, start + len)
  }

  string (what: string): string {
    const start = this.pos
    const raw = this.bytes(what)
    try {
      return utf8.decode(raw)
    } catch {
      throw new FrameError(`invalid UTF-8 in ${what}`, start)
    }
  }

  end (): void {
    if (this.pos !== this.buf.length) {
      throw new FrameError(`${this.buf.length - this.pos} bytes left over after the last field`, this.pos)
    }
  }
}

/** Decodes one frame (either direction). The returned byte fields are views
 * into `bytes` (copy them to keep them past the buffer's life). Throws
 * {@link FrameError} for anything malformed. */
export function decodeFrame (bytes: Uint8Array): Frame {
  const r = new Reader(bytes)
  const type = r.uint('type')
  let frame: Frame
  switch (type) {
    case HELLO: {
      const peer = r.string('peer')
      const after = r.uint('after')
      const epoch = r.string('epoch')
      const checksum = r.string('checksum')
      const schemaVersion = r.uint('schema_version')
      const n = r.uint('docs')
      const docs: string[] = []
      for (let i = 0; i < n; i++) docs.push(r.string('doc'))
      frame = { type: 'hello', peer, after, epoch, checksum, schemaVersion, docs }
      break
    }
    case PUSH: {
      const id = r.uint('id')
      const doc = r.string('doc')
      const update = r.bytes('update')
      frame = { type: 'push', id, doc, update }
      break
    }
    case PUSH_BATCH: {
      const id = r.uint('id')
      const n = r.uint('count')
      const updates: Array<{ doc: string, update: Uint8Array }> = []
      for (let i = 0; i < n; i++) {
        const doc = r.string('doc')
        const update = r.bytes('update')
        updates.push({ doc, update })
      }
      frame = { type: 'push_batch', id, updates }
      break
    }
    case ACK:
      frame = { type: 'ack', seq: r.uint('seq') }
      break
    case WELCOME: {
      const epoch = r.string('epoch')
      const head = r.uint('head')
      const schemaVersion = r.uint('schema_version')
      const maxPushesInFlight = r.uint('max_pushes_in_flight')
      frame = { type: 'welcome', epoch, head, schemaVersion, maxPushesInFlight }
      break
    }
    case PUSHED: {
      const id = r.uint('id')
      const head = r.uint('head')
      const n = r.uint('count')
      const seqs: number[] = []
      for (let i = 0; i < n; i++) seqs.push(r.uint('seq'))
      frame = { type: 'pushed', id, head, seqs }
      break
    }
    case PUSH_ERROR: {
      const id = r.uint('id')
      const code = r.string('code')
      const message = r.string('message')
      frame = { type: 'push_error', id, code, message }
      break
    }
    case CHANGES: {
      const through = r.uint('through')
      const checksum = r.string('checksum')
      const n = r.uint('count')
      const changes: Change[] = []
      for (let i = 0; i < n; i++) {
        const seq = r.uint('seq')
        const doc = r.string('doc')
        const kindAt = r.pos
        const kindNo = r.uint('kind')
        const kind = KIND_NAMES[kindNo]
        if (kind === undefined) throw new FrameError(`unknown change kind ${kindNo}`, kindAt)
        const schemaVersion = r.uint('schema_version')
        const origin = r.string('origin')
        const payload = r.bytes('payload')
        changes.push({ seq, doc, kind, schemaVersion, origin, payload })
      }
      frame = { type: 'changes', through, checksum, changes }
      break
    }
    case UP_TO_DATE: {
      const head = r.uint('head')
      const checksum = r.string('checksum')
      frame = { type: 'up_to_date', head, checksum }
      break
    }
    case ACKED:
      frame = { type: 'acked', seq: r.uint('seq') }
      break
    case RESET: {
      const reason = r.string('reason')
      const epoch = r.string('epoch')
      const head = r.uint('head')
      frame = { type: 'reset', reason, epoch, head }
      break
    }
    case ERROR: {
      const code = r.string('code')
      const message = r.string('message')
      frame = { type: 'error', code, message }
      break
    }
    case ACK_ERROR: {
      const seq = r.uint('seq')
      const code = r.string('code')
      const message = r.string('message')
      frame = { type: 'ack_error', seq, code, message }
      break
    }
    case AWARENESS: {
      const doc = r.string('doc')
      const update = r.bytes('update')
      frame = { type: 'awareness', doc, update }
      break
    }
    case LEAVE:
      frame = { type: 'leave', doc: r.string('doc') }
      break
    case PRESENCE: {
      const doc = r.string('doc')
      const update = r.bytes('update')
      frame = { type: 'presence', doc, update }
      break
    }
    default:
      throw new FrameError(`unknown frame type ${type}`, 0)
  }
  r.end()
  return frame
}

function isClientFrame (frame: Frame): frame is ClientFrame {
  switch (frame.type) {
    case 'hello':
    case 'push':
    case 'push_batch':
    case 'ack':
    case 'awareness':
    case 'leave':
      return true
    default:
      return false
  }
}

/** Decodes a frame the server sent; a client-direction frame is refused. */
export function decodeServerFrame (bytes: Uint8Array): ServerFrame {
  const frame = decodeFrame(bytes)
  if (isClientFrame(frame)) {
    throw new FrameError(`a client frame (${frame.type}) from the server`, 0)
  }
  return frame
}

/** Decodes a frame a client sent; a server-direction frame is refused. */
export function decodeClientFrame (bytes: Uint8Array): ClientFrame {
  const frame = decodeFrame(bytes)
  if (!isClientFrame(frame)) {
    throw new FrameError(`a server frame (${frame.type}) from a client`, 0)
  }
  return frame
}

/** Hex of bytes, for notes and error messages. */
export function toHex (bytes: Uint8Array): string {
  let s = ''
  for (const b of bytes) s += b.toString(16).padStart(2, '0')
  return s
}
