/**
 * Recovery after a reset (`foreign_epoch`, `cursor_beyond_head`,
 * `history_replaced`): the server's history no longer continues the local
 * cursor, so the client sends every local document's state vector to
 * `POST …/recover`, applies the answers, adopts the server's cursor and
 * epoch, and queues every local document whole for pushing back. Nothing
 * local is lost.
 *
 * Why a file of its own: it runs between two sessions, not on a socket
 * (the sync() and follow() loops of collection.ts call it after a session
 * ended with `reset`), and it replaces the local state wholesale (HTTP,
 * then the outbox superseded in one store transaction) where every other
 * part only moves it forward.
 */
import * as Y from 'yjs'
import { UpgradeRequiredError } from './errors.js'
import type { ResetFrame } from './protocol.js'
import { documentUpdate } from './store.js'
import type { CollectionCore } from './collection-core.js'
import type { Counters } from './session.js'
import { whenSaved } from './local-docs.js'
import { afterDeletes, applyToLive } from './stream.js'

/** After a reset: send every local document's state vector, apply the
 * server's answers, adopt its cursor and epoch, and queue every local
 * document's whole state for pushing back (the server logs only what it
 * lacks). Nothing local is lost. */
export async function recover (core: CollectionCore, frame: ResetFrame, counters: Counters): Promise<void> {
  await whenSaved(core)
  await core.flushLazy()
  // One queued task, the request included: no local write lands between
  // the state vectors sent and the outbox superseded (edits made
  // meanwhile wait in memory and are written after).
  await core.queue.run(async () => {
    const locals = new Map<string, Y.Doc>()
    for (const info of await core.store.documents(core.name)) {
      if (info.deleted) continue
      const ydoc = new Y.Doc()
      Y.applyUpdate(ydoc, documentUpdate(await core.store.loadDocument(core.name, info.doc)))
      locals.set(info.doc, ydoc)
    }
    const svs = new Map<string, Uint8Array>()
    for (const [doc, ydoc] of locals) svs.set(doc, Y.encodeStateVector(ydoc))
    const answer = await core.ctx.http.recover(core.name, svs)
    if (core.schemaVersion > 0 && answer.schemaVersion > core.schemaVersion) {
      throw new UpgradeRequiredError(`the server's schema version is ${answer.schemaVersion}, this app's ${core.schemaVersion}: upgrade the app (local data is untouched)`, core.schemaVersion, answer.schemaVersion)
    }
    let changed = 0
    const remote: Array<{ doc: string, update: Uint8Array | null }> = []
    for (const { doc, update } of answer.documents) {
      remote.push({ doc, update })
      const ydoc = locals.get(doc)
      if (ydoc === undefined) {
        changed++
        continue
      }
      let did = false
      const onUpdate = (): void => { did = true }
      ydoc.on('update', onUpdate)
      Y.applyUpdate(ydoc, update)
      ydoc.off('update', onUpdate)
      if (did) changed++
    }
    const deleted = new Set(answer.deleted)
    const newlyDeleted = answer.deleted.filter(d => !core.deletedDocs.has(d))
    for (const doc of answer.deleted) remote.push({ doc, update: null })
    // Push back every local document whole: the server logs only what
    // it lacks (an update that adds nothing is answered with seq 0).
    const local: Array<{ doc: string, update: Uint8Array }> = []
    for (const [doc, ydoc] of locals) {
      if (deleted.has(doc)) continue
      local.push({ doc, update: Y.encodeStateAsUpdate(ydoc) })
    }
    const epoch = answer.epoch ?? ''
    const res = await core.store.commit(core.name, {
      remote,
      local,
      supersedeOutbox: true,
      state: { cursor: answer.cursor, epoch, checksum: '' }
    })
    core.state = { cursor: answer.cursor, epoch, checksum: '' }
    for (const s of core.statuses.values()) {
      s.savedThrough = 0
      s.pending = s.unsaved
    }
    for (const { doc } of local) core.statusOf(doc).pending++
    applyToLive(core, remote, 'recovery')
    afterDeletes(core, newlyDeleted, res.rejected)
    counters.reset = frame
    counters.resetPulled += changed
    for (const s of core.statuses.values()) core.events.emit('status', core.status(s.doc))
  })
}
