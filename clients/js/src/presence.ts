/**
 * Presence: who is in a document and where their cursor is (Yjs
 * "awareness"), carried over the collection's sync socket
 * (docs/PROTOCOL.md, "Presence").
 *
 * Why not y-protocols' `Awareness`: the client's core depends on `yjs` and
 * `lib0` only. This class speaks the same update format (so the server
 * relays it to `/yws` clients of the same document and back) and offers
 * the part of `Awareness`'s interface editor bindings use (`clientID`,
 * `doc`, `getLocalState`, `setLocalState`, `setLocalStateField`,
 * `getStates`, `states`, `meta`, `on`/`off` of `change` and `update` with
 * `(changes, origin)`), so `y-codemirror.next`'s `yCollab` or
 * `y-prosemirror`'s cursor plugin take it as they take an `Awareness`.
 *
 * Semantics are y-protocols': one state per Yjs client id with a clock;
 * an update is taken when its clock is newer (or equal with `null`, a
 * removal); the local state is renewed every 15 s and a remote state not
 * heard of for 30 s is dropped. When the socket closes, every remote state
 * is dropped at once (they would go stale unseen), as y-websocket does.
 */
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

/** A remote state not renewed for this long is dropped (y-protocols'). */
export const OUTDATED_TIMEOUT_MS = 30_000
/** The local state is sent again after this long without a change. */
const RENEW_MS = OUTDATED_TIMEOUT_MS / 2
/** How often the renewal and expiry are checked. */
const CHECK_MS = OUTDATED_TIMEOUT_MS / 10
/** Client states one update may carry, at most (a larger one is refused). */
const MAX_CLIENTS_PER_UPDATE = 4096

/** A client's state: any JSON object (or `null` once it left). */
export type PresenceState = Record<string, unknown>

/** The clients an update touched, as y-protocols reports them. */
export interface PresenceChanges {
  added: number[]
  updated: number[]
  removed: number[]
}

interface Meta {
  clock: number
  lastUpdated: number
}

type Listener = (changes: PresenceChanges, origin: unknown) => void

/**
 * One document's presence. Get it from `collection.presence(docId)`; it is
 * live while the collection follows (`collection.follow()`), and sends the
 * local state again whenever the socket reconnects.
 */
export class Presence {
  /** The document's Yjs doc; its client id is this client's in the room. */
  readonly doc: Y.Doc
  /** The document id in the collection. */
  readonly docId: string
  /** This client's id (the Y.Doc's). */
  readonly clientID: number
  /** Every known state, this client's included while it is not `null`. */
  readonly states = new Map<number, PresenceState>()
  /** Per client: its clock and when it was last heard of (ms). */
  readonly meta = new Map<number, Meta>()
  private readonly listeners = new Map<string, Set<Listener>>()
  private readonly send: (update: Uint8Array) => void
  private readonly onDestroy: () => void
  private timer: ReturnType<typeof setInterval> | null
  private destroyed = false

  /** Internal: built by the collection, which sends what `send` gets and
   * leaves the room on `onDestroy`. */
  constructor (doc: Y.Doc, docId: string, send: (update: Uint8Array) => void, onDestroy: () => void) {
    this.doc = doc
    this.docId = docId
    this.clientID = doc.clientID
    this.send = send
    this.onDestroy = onDestroy
    this.timer = setInterval(() => this.check(), CHECK_MS)
    // A Node process must not stay up for a presence timer alone.
    const unref = (this.timer as { unref?: () => void }).unref
    if (typeof unref === 'function') unref.call(this.timer)
    this.setLocalState({})
  }

  /** This client's state, or `null` once it set none. */
  getLocalState (): PresenceState | null {
    return this.states.get(this.clientID) ?? null
  }

  /** Sets this client's state (`null`: gone) and sends it to the room. */
  setLocalState (state: PresenceState | null): void {
    const clientID = this.clientID
    const meta = this.meta.get(clientID)
    const clock = meta === undefined ? 0 : meta.clock + 1
    const prev = this.states.get(clientID)
    if (state === null) this.states.delete(clientID)
    else this.states.set(clientID, state)
    this.meta.set(clientID, { clock, lastUpdated: Date.now() })
    const changes: PresenceChanges = { added: [], updated: [], removed: [] }
    const filtered: number[] = []
    if (state === null) {
      if (prev !== undefined) changes.removed.push(clientID)
    } else if (prev === undefined) {
      changes.added.push(clientID)
    } else {
      changes.updated.push(clientID)
      if (JSON.stringify(prev) !== JSON.stringify(state)) filtered.push(clientID)
    }
    if (changes.added.length > 0 || filtered.length > 0 || changes.removed.length > 0) {
      this.emit('change', { added: changes.added, updated: filtered, removed: changes.removed }, 'local')
    }
    this.emit('update', changes, 'local')
    if (!this.destroyed) this.send(this.encodeUpdate([clientID]))
  }

  /** Sets one field of this client's state. */
  setLocalStateField (field: string, value: unknown): void {
    const state = this.getLocalState()
    if (state !== null) this.setLocalState({ ...state, [field]: value })
  }

  /** Every known state, by client id. */
  getStates (): Map<number, PresenceState> {
    return this.states
  }

  /** Adds a listener of `change` (states that differ) or `update` (every
   * update, renewals included); called with `(changes, origin)`. */
  on (event: 'change' | 'update', listener: Listener): void {
    let set = this.listeners.get(event)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(event, set)
    }
    set.add(listener)
  }

  off (event: 'change' | 'update', listener: Listener): void {
    this.listeners.get(event)?.delete(listener)
  }

  /** Leaves the room: this client's state is removed for everyone and
   * the collection stops relaying this document's presence. */
  destroy (): void {
    if (this.destroyed) return
    this.setLocalState(null)
    this.destroyed = true
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    this.onDestroy()
  }

  get isDestroyed (): boolean {
    return this.destroyed
  }

  /** Internal: the update that carries these clients' states (y-protocols'
   * `encodeAwarenessUpdate`). */
  encodeUpdate (clients: number[]): Uint8Array {
    const e = encoding.createEncoder()
    encoding.writeVarUint(e, clients.length)
    for (const clientID of clients) {
      const state = this.states.get(clientID) ?? null
      const clock = this.meta.get(clientID)?.clock ?? 0
      encoding.writeVarUint(e, clientID)
      encoding.writeVarUint(e, clock)
      encoding.writeVarString(e, JSON.stringify(state))
    }
    return encoding.toUint8Array(e)
  }

  /** Internal: applies an update from the room (y-protocols'
   * `applyAwarenessUpdate`). Throws on malformed bytes, changing nothing. */
  applyUpdate (update: Uint8Array, origin: unknown): void {
    const entries = decodeUpdate(update)
    const now = Date.now()
    const added: number[] = []
    const updated: number[] = []
    const filteredUpdated: number[] = []
    const removed: number[] = []
    let reassert = false
    for (const { clientID, clock: entryClock, state } of entries) {
      let clock = entryClock
      const meta = this.meta.get(clientID)
      const prev = this.states.get(clientID)
      const current = meta === undefined ? 0 : meta.clock
      if (current < clock || (current === clock && state === null && this.states.has(clientID))) {
        if (state === null) {
          // Someone removed this client's own state (it was thought gone):
          // it is still here, so it says so again.
          if (clientID === this.clientID && this.getLocalState() !== null) {
            clock++
            reassert = true
          } else {
            this.states.delete(clientID)
          }
        } else {
          this.states.set(clientID, state)
        }
        this.meta.set(clientID, { clock, lastUpdated: now })
        if (meta === undefined && state !== null) {
          added.push(clientID)
        } else if (meta !== undefined && state === null) {
          removed.push(clientID)
        } else if (state !== null) {
          if (JSON.stringify(state) !== JSON.stringify(prev)) filteredUpdated.push(clientID)
          updated.push(clientID)
        }
      }
    }
    if (added.length > 0 || filteredUpdated.length > 0 || removed.length > 0) {
      this.emit('change', { added, updated: filteredUpdated, removed }, origin)
    }
    if (added.length > 0 || updated.length > 0 || removed.length > 0) {
      this.emit('update', { added, updated, removed }, origin)
    }
    // Someone removed this client's state (the server does when an old
    // socket of ours closes): send it again, at a newer clock, now rather
    // than at the next renewal.
    if (reassert) this.setLocalState(this.getLocalState())
  }

  /** Internal: the socket closed; every remote state is dropped. */
  dropRemote (origin: unknown): void {
    const removed: number[] = []
    for (const clientID of [...this.states.keys()]) {
      if (clientID === this.clientID) continue
      this.states.delete(clientID)
      removed.push(clientID)
    }
    for (const clientID of removed) {
      const meta = this.meta.get(clientID)
      if (meta !== undefined) this.meta.set(clientID, { clock: meta.clock, lastUpdated: Date.now() })
    }
    if (removed.length > 0) {
      const changes = { added: [], updated: [], removed }
      this.emit('change', changes, origin)
      this.emit('update', changes, origin)
    }
  }

  /** Renews the local state every 15 s; drops remote states not heard of
   * for 30 s. */
  private check (): void {
    const now = Date.now()
    const own = this.meta.get(this.clientID)
    if (this.getLocalState() !== null && own !== undefined && RENEW_MS <= now - own.lastUpdated) {
      this.setLocalState(this.getLocalState())
    }
    const removed: number[] = []
    for (const [clientID, meta] of this.meta) {
      if (clientID !== this.clientID && OUTDATED_TIMEOUT_MS <= now - meta.lastUpdated && this.states.has(clientID)) {
        this.states.delete(clientID)
        removed.push(clientID)
      }
    }
    if (removed.length > 0) {
      const changes = { added: [], updated: [], removed }
      this.emit('change', changes, 'timeout')
      this.emit('update', changes, 'timeout')
    }
  }

  private emit (event: string, changes: PresenceChanges, origin: unknown): void {
    const set = this.listeners.get(event)
    if (set === undefined) return
    for (const listener of [...set]) {
      try {
        listener(changes, origin)
      } catch (err) {
        console.error(`seqsync: a presence '${event}' listener threw`, err)
      }
    }
  }
}

/** The entries of an awareness update. Throws on malformed bytes. */
export function decodeUpdate (update: Uint8Array): Array<{ clientID: number, clock: number, state: PresenceState | null }> {
  const d = decoding.createDecoder(update)
  const count = decoding.readVarUint(d)
  if (count > MAX_CLIENTS_PER_UPDATE || count * 3 > update.length) {
    throw new Error(`an awareness update of ${count} clients in ${update.length} bytes`)
  }
  const entries: Array<{ clientID: number, clock: number, state: PresenceState | null }> = []
  for (let i = 0; i < count; i++) {
    const clientID = decoding.readVarUint(d)
    const clock = decoding.readVarUint(d)
    const parsed: unknown = JSON.parse(decoding.readVarString(d))
    const state = parsed !== null && typeof parsed === 'object' ? parsed as PresenceState : null
    entries.push({ clientID, clock, state })
  }
  if (decoding.hasContent(d)) throw new Error('bytes after the awareness update')
  return entries
}
