/**
 * A collection on a client: live Y.Docs loaded from the local store, an
 * outbox of local edits, and the sync socket that pushes them and streams
 * the collection's changes (docs/PROTOCOL.md, "The sync socket").
 *
 * This file is the public face: the `Collection` class, its small store
 * queries, and the two ways of syncing, `sync()` (one session) and
 * `follow()` / `stop()` (sessions in a loop, with backoff and the
 * goodbye). The work is split by concern, each a set of functions over
 * the state they share (`CollectionCore`, which the class keeps private):
 *
 * - collection-types.ts: the public types (events, statuses, reports);
 * - collection-core.ts: the shared state, the serial store queue, the
 *   store commit and its lazy part, statuses;
 * - local-docs.ts: loading live docs, saving local edits;
 * - socket.ts: opening a socket, hello and welcome, routing frames,
 *   presence frames;
 * - session.ts: one socket's state, its end, acks, done / idle;
 * - push.ts: the outbox pushed, confirmed, or refused and rejected;
 * - stream.ts: remote changes applied and stored, deletes, up_to_date;
 * - recover.ts: recovery after a reset.
 *
 * Every store operation runs on one serial queue per collection, so a
 * document's load, the remote changes applied to it and the local edits
 * written for it never interleave.
 */
import type * as Y from 'yjs'
import { Emitter } from './emitter.js'
import { SchemaError, TransportError } from './errors.js'
import { Presence } from './presence.js'
import type { CollectionState, RejectedEntry } from './store.js'
import type { ClientContext, CollectionEvents, CollectionOptions, ConnectionState, DocStatus, SyncReport } from './collection-types.js'
import { CollectionCore } from './collection-core.js'
import { loadDoc, whenSaved } from './local-docs.js'
import { type Counters, checkDone, checkIdle, finishSession } from './session.js'
import { runSession, sendFrame, sendPresence } from './socket.js'
import { pump } from './push.js'
import { afterDeletes } from './stream.js'
import { recover } from './recover.js'

export type {
  ClientContext,
  CollectionEvents,
  CollectionOptions,
  ConnectionState,
  DocStatus,
  Progress,
  ResetReason,
  SyncReport
} from './collection-types.js'

/** Resets one sync recovers from before it gives up. */
const MAX_RESETS = 3

export class Collection {
  readonly name: string
  readonly events = new Emitter<CollectionEvents>()
  /** Everything the parts of the collection share (collection-core.ts). */
  private readonly core: CollectionCore
  private running: Promise<unknown> | null = null
  private following = false
  private wake: (() => void) | null = null
  private stopDeadline = Infinity
  private closedFlag = false

  constructor (name: string, ctx: ClientContext, options: CollectionOptions = {}) {
    this.name = name
    this.core = new CollectionCore(name, ctx, options, this.events)
  }

  /** Resolves once the collection's local state is loaded. */
  async opened (): Promise<void> {
    await this.core.ready
  }

  /** The cursor, checksum and epoch held locally. */
  get syncState (): Readonly<CollectionState> {
    return { ...this.core.state }
  }

  get connectionState (): ConnectionState {
    return this.core.connection
  }

  /** The live Y.Doc of document `id`, loaded from the local store (empty if
   * it has nothing yet). Its local edits are saved and synced. */
  doc (id: string): Promise<Y.Doc> {
    return loadDoc(this.core, id)
  }

  /**
   * Presence in document `id`: who else has it open and where their
   * cursor is (Yjs awareness, shared with `/yws` clients of the same
   * document). Live while the collection follows (`follow()`): the local
   * state is sent on every (re)connect, remote states arrive as the room
   * changes and are dropped when the socket closes. Its `clientID` is the
   * document's Y.Doc's. It starts with an empty local state (`{}`); set
   * one with `setLocalStateField('user', {...})`, leave with `destroy()`.
   * The same object is returned until it is destroyed.
   */
  async presence (id: string): Promise<Presence> {
    const presences = this.core.presences
    const existing = presences.get(id)
    if (existing !== undefined && !existing.isDestroyed) return existing
    const ydoc = await this.doc(id)
    const again = presences.get(id)
    if (again !== undefined && !again.isDestroyed) return again
    const presence: Presence = new Presence(ydoc, id, (update) => sendPresence(this.core, id, update), () => {
      if (presences.get(id) === presence) presences.delete(id)
      sendFrame(this.core, { type: 'leave', doc: id })
    })
    presences.set(id, presence)
    return presence
  }

  /** The ids of the documents held locally (not deleted). */
  async documents (): Promise<string[]> {
    await this.whenSaved()
    const infos = await this.core.queue.run(() => this.core.store.documents(this.name))
    return infos.filter(d => !d.deleted).map(d => d.doc)
  }

  /** A document's sync status. */
  status (doc: string): DocStatus {
    return this.core.status(doc)
  }

  /** Local edits waiting for the server, in the store. */
  async outboxSize (): Promise<number> {
    await this.core.ready
    await this.core.flushLazy()
    return await this.core.queue.run(() => this.core.store.outboxSize(this.name))
  }

  /** Updates the server refused for good. */
  async rejected (): Promise<RejectedEntry[]> {
    await this.core.ready
    return await this.core.queue.run(() => this.core.store.rejected(this.name))
  }

  /** Deletes a document on the server (then locally): later pushes to it are
   * refused. Needs the server. */
  async delete (id: string): Promise<{ seq: number, head: number }> {
    await this.core.ready
    const answer = await this.core.ctx.http.deleteDocument(this.name, id)
    await this.core.queue.run(async () => {
      const res = await this.core.commit({ remote: [{ doc: id, update: null }] })
      afterDeletes(this.core, [id], res.rejected)
    })
    return answer
  }

  /** Runs compaction on the server now (POST …/compact). */
  async compactServer (): Promise<unknown> {
    return await this.core.ctx.http.compact(this.name)
  }

  /** Folds the local logs into snapshots now. */
  async compactLocal (): Promise<void> {
    await this.core.ready
    await this.core.queue.run(() => this.core.store.compact(this.name))
  }

  /** Resolves once every local edit made so far is in the local store. */
  whenSaved (): Promise<void> {
    return whenSaved(this.core)
  }

  // ---- sync ----------------------------------------------------------------

  /** Connects, pushes the outbox, pulls to up_to_date, acks the cursor and
   * disconnects. Errors: {@link TransportError} (the server is unreachable
   * or went away: the outbox is intact), {@link ServerError},
   * {@link UpgradeRequiredError} / {@link SchemaError} (nothing local was
   * touched). */
  async sync (): Promise<SyncReport> {
    await this.core.ready
    if (this.following) throw new Error('follow() is running on this collection')
    while (this.running !== null) await this.running.catch(() => {})
    const run = this.runSync()
    this.running = run
    try {
      return await run
    } finally {
      this.running = null
    }
  }

  private async runSync (): Promise<SyncReport> {
    await this.whenSaved()
    const core = this.core
    const counters: Counters = { pulled: 0, pushed: 0, alreadyThere: 0, rejected: 0, reset: null, resetPulled: 0, head: 0 }
    const limit = { id: Infinity }
    let resets = 0
    let pushedBeforeReset = 0
    for (;;) {
      const end = await runSession(core, 'sync', limit, counters)
      if (end.kind === 'done') break
      if (end.kind === 'reset') {
        if (++resets > MAX_RESETS) throw new TransportError(`the server answered reset ${resets} times in one sync`, 'reset')
        pushedBeforeReset = counters.pushed
        await recover(core, end.frame, counters)
        limit.id = Infinity
        continue
      }
      throw end.error
    }
    await core.epochFetch
    await core.flushLazy()
    const outboxLeft = await core.queue.run(() => core.store.outboxSize(this.name))
    const base = {
      alreadyThere: counters.alreadyThere,
      rejected: counters.rejected,
      followUpNeeded: outboxLeft > 0,
      outboxLeft,
      cursor: core.state.cursor,
      head: counters.head,
      epoch: core.state.epoch
    }
    if (counters.reset !== null) {
      return {
        kind: 'reset',
        reason: counters.reset.reason,
        pulled: counters.resetPulled + counters.pulled,
        pushed: counters.pushed - pushedBeforeReset,
        ...base
      }
    }
    const { pulled, pushed } = counters
    const kind = pulled === 0 ? (pushed === 0 ? 'noop' : 'pushed') : (pushed === 0 ? 'pulled' : 'merged')
    return { kind, pulled, pushed, ...base }
  }

  // ---- follow --------------------------------------------------------------

  /** Stays connected: pushes local edits as they are saved, applies remote
   * changes as they come, reconnects with backoff when the server goes
   * away, recovers after a reset. Ends with {@link Collection.stop}; a fatal
   * error (schema, auth) ends it too and is emitted as 'error'. */
  follow (): void {
    if (this.following) return
    if (this.closedFlag) throw new Error('the collection is closed')
    this.following = true
    this.core.stopRequested = false
    const loop = this.followLoop()
    this.running = loop
    loop.catch(err => this.events.emit('error', err as Error)).finally(() => {
      if (this.running === loop) this.running = null
      this.following = false
    })
  }

  get isFollowing (): boolean {
    return this.following
  }

  private async followLoop (): Promise<void> {
    const core = this.core
    await core.ready
    let attempt = 0
    const counters: Counters = { pulled: 0, pushed: 0, alreadyThere: 0, rejected: 0, reset: null, resetPulled: 0, head: 0 }
    for (;;) {
      if (core.stopRequested && Date.now() > this.stopDeadline) return
      const welcomedBefore = core.welcomes
      const end = await runSession(core, 'follow', { id: Infinity }, counters)
      if (core.welcomes > welcomedBefore) attempt = 0
      if (end.kind === 'done') return
      if (end.kind === 'reset') {
        try {
          await recover(core, end.frame, counters)
          attempt = 0
          continue
        } catch (err) {
          if (err instanceof SchemaError) throw err
          this.events.emit('error', err as Error)
        }
      } else if (end.kind === 'fatal') {
        throw end.error
      }
      if (core.stopRequested && Date.now() > this.stopDeadline) return
      // Lost: wait, then reconnect. A stop() cuts the wait short.
      const delay = Math.min(core.ctx.backoff.maxMs, core.ctx.backoff.minMs * 2 ** attempt)
      attempt = Math.min(attempt + 1, 20)
      const jittered = delay / 2 + Math.random() * delay / 2
      await new Promise<void>(resolve => {
        const timer = setTimeout(resolve, jittered)
        this.wake = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      this.wake = null
    }
  }

  /** Ends {@link Collection.follow}, saying goodbye: every local edit is
   * pushed and confirmed, the stream is read up to the head after that,
   * the cursor is acked, then the socket closes with 1000. Resolves with
   * whether the outbox is empty at the end (after `goodbyeTimeoutMs` the
   * socket is closed anyway and the outbox waits for the next session). */
  async stop (): Promise<{ complete: boolean }> {
    if (!this.following) return { complete: (await this.outboxSize()) === 0 }
    const core = this.core
    const running = this.running
    this.stopDeadline = Date.now() + core.ctx.goodbyeTimeoutMs
    core.stopRequested = true
    await this.whenSaved().catch(() => {})
    const session = core.session
    if (session !== null) {
      session.finishing = true
      pump(core, session)
      checkDone(core, session)
    }
    this.wake?.()
    const timer = setTimeout(() => {
      const s = core.session
      if (s !== null) finishSession(core, s, { kind: 'lost', error: new TransportError('the goodbye did not complete in time', 'goodbye_timeout') })
      this.wake?.()
    }, core.ctx.goodbyeTimeoutMs + 50)
    try {
      await running?.catch(() => {})
    } finally {
      clearTimeout(timer)
    }
    await core.flushLazy()
    return { complete: (await core.queue.run(() => core.store.outboxSize(this.name))) === 0 }
  }

  /** Resolves when a following collection is caught up: connected, nothing
   * in the outbox or in flight, the stream at the head. */
  whenSynced (): Promise<void> {
    return new Promise(resolve => {
      this.core.idleWaiters.push(resolve)
      const s = this.core.session
      if (s !== null) checkIdle(this.core, s)
    })
  }

  /** Stops following (with the goodbye) and forgets the live docs and
   * their presence (the socket's close removes it for everyone). */
  async close (): Promise<void> {
    if (this.closedFlag) return
    this.closedFlag = true
    const core = this.core
    for (const presence of [...core.presences.values()]) presence.destroy()
    await this.stop().catch(() => {})
    await this.whenSaved().catch(() => {})
    while (this.running !== null) await this.running.catch(() => {})
    core.tabs?.close()
    for (const { ydoc } of core.live.values()) ydoc.destroy()
    core.live.clear()
  }
}
