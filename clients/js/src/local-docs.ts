/**
 * Live documents and the local edits made in them: a document is loaded
 * from the store into one live Y.Doc, and every edit of it is counted as
 * unsaved, written to the store with the others of its burst (one
 * transaction, a microtask later), and handed to the push pipeline.
 *
 * Why apart from push.ts: saving is what the app waits on ("saved on this
 * device", offline too) and needs no socket; pushing is what an open
 * socket then does with the outbox. This file only wakes the pipeline
 * (`pump`) once the edits are in the store.
 */
import * as Y from 'yjs'
import type { CollectionCore } from './collection-core.js'
import { pump } from './push.js'

/** Yjs client ids below this are reserved for the server's migrations
 * (`reserved_client_id`). */
const RESERVED_CLIENT_IDS = 65536

/** The live Y.Doc of document `id`, loaded from the local store (empty if
 * it has nothing yet); see `Collection.doc`. */
export async function loadDoc (core: CollectionCore, id: string): Promise<Y.Doc> {
  await core.ready
  const live = core.live.get(id)
  if (live !== undefined) return live.ydoc
  let loading = core.loading.get(id)
  if (loading === undefined) {
    loading = core.queue.run(async () => {
      const already = core.live.get(id)
      if (already !== undefined) return already.ydoc
      const stored = await core.store.loadDocument(core.name, id)
      const ydoc = new Y.Doc()
      while (ydoc.clientID < RESERVED_CLIENT_IDS) ydoc.clientID = Math.floor(Math.random() * 0xffffffff) >>> 0
      if (stored !== undefined && !stored.deleted) {
        ydoc.transact(() => {
          if (stored.snapshot !== null) Y.applyUpdate(ydoc, stored.snapshot, core.remoteOrigin)
          for (const u of stored.updates) Y.applyUpdate(ydoc, u, core.remoteOrigin)
        }, core.remoteOrigin)
      }
      ydoc.on('update', (update: Uint8Array, origin: unknown) => {
        if (origin === core.remoteOrigin) return
        // Another tab's edit is saved and pushed here too (see tabs.ts:
        // this tab's later edits may build on it), but not relayed back.
        localEdit(core, id, update)
        if (core.tabs !== null && origin !== core.tabs.origin) core.tabs.edited(id, update)
      })
      core.live.set(id, { ydoc })
      core.tabs?.opened(id, ydoc)
      return ydoc
    })
    core.loading.set(id, loading)
    loading.finally(() => core.loading.delete(id)).catch(() => {})
  }
  return await loading
}

function localEdit (core: CollectionCore, doc: string, update: Uint8Array): void {
  core.unsaved.push({ doc, update })
  const s = core.statusOf(doc)
  s.unsaved++
  s.pending++
  if (!core.flushScheduled) {
    core.flushScheduled = true
    queueMicrotask(() => {
      flushLocal(core).catch(() => {})
    })
  }
}

/** Writes the local edits made so far to the store (one transaction). */
function flushLocal (core: CollectionCore): Promise<void> {
  core.flushScheduled = false
  const batch = core.unsaved
  core.unsaved = []
  // Say "unsaved" before the write starts: an app that shows "saved on
  // this device" from these events must not show it while an edit is
  // only in memory (closing the tab then would lose it).
  for (const doc of new Set(batch.map(e => e.doc))) core.events.emit('status', core.status(doc))
  return core.queue.run(async () => {
    if (batch.length === 0) return
    let localIds: number[]
    try {
      localIds = (await core.commit({ local: batch })).localIds
    } catch (err) {
      // Not saved: keep them for the next flush.
      core.unsaved = [...batch, ...core.unsaved]
      core.events.emit('error', err as Error)
      throw err
    }
    const session = core.session
    if (session !== null && session.mode === 'sync' && session.limit.id === Infinity && localIds.length > 0) {
      // Edits made during a sync wait for the next one.
      session.limit.id = (localIds[0] as number) - 1
    }
    const docs = new Set<string>()
    for (const { doc } of batch) {
      core.statusOf(doc).unsaved--
      docs.add(doc)
    }
    if (session !== null) session.progress.toPush += batch.length
    core.events.emit('saved', { docs: [...docs], count: batch.length })
    for (const doc of docs) core.events.emit('status', core.status(doc))
    if (session !== null) {
      session.exhausted = false
      pump(core, session)
    }
  })
}

/** Resolves once every local edit made so far is in the local store. */
export async function whenSaved (core: CollectionCore): Promise<void> {
  await core.ready
  await flushLocal(core)
}
