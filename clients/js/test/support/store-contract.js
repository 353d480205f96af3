// The store contract: what every SeqsyncStore must do, written once and
// run against each store — memory, SQLite on better-sqlite3 and op-sqlite
// through its Node adapter in Node (store.test.js), the browser store in
// Chromium (demo/test/contract.test.js). The caller hands in its test
// runner and assert (node:test and node:assert/strict, or the browser
// page's small equivalents) so the same file runs in both.
import * as Y from 'yjs'
import { documentUpdate } from '../../dist/store.js'

/** n edits of one Y.Doc, each as its own update. */
export function edits (n, text = 'x') {
  const doc = new Y.Doc()
  const out = []
  doc.on('update', u => out.push(u))
  for (let i = 0; i < n; i++) doc.getText('t').insert(doc.getText('t').length, text)
  return { doc, updates: out }
}

export function textOf (stored) {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, documentUpdate(stored))
  return doc.getText('t').toString()
}

/** The contract of one store kind: `open(options)` returns (or resolves
 * to) a new, empty store. */
export function storeContract ({ describe, test, assert }, kind, open) {
  describe(`store contract: ${kind}`, () => {
    test('a new collection is empty; kv keeps values per collection', async () => {
      const s = await open()
      assert.deepEqual(await s.state('c'), { cursor: 0, checksum: '', epoch: '' })
      assert.deepEqual(await s.documents('c'), [])
      assert.equal(await s.loadDocument('c', 'd'), undefined)
      assert.equal(await s.outboxSize('c'), 0)
      assert.equal(await s.getKv('', 'peer'), undefined)
      await s.setKv('', 'peer', 'p1')
      await s.setKv('c', 'x', '1')
      assert.equal(await s.getKv('', 'peer'), 'p1')
      assert.equal(await s.getKv('c', 'x'), '1')
      assert.equal(await s.getKv('other', 'x'), undefined)
      await s.close()
    })

    test('local edits go into the outbox in order; confirmation takes them out', async () => {
      const s = await open()
      const { updates } = edits(5)
      const r1 = await s.commit('c', { local: updates.slice(0, 3).map(update => ({ doc: 'a', update })) })
      const r2 = await s.commit('c', { local: updates.slice(3).map(update => ({ doc: 'b', update })) })
      const ids = [...r1.localIds, ...r2.localIds]
      assert.equal(ids.length, 5)
      for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1])
      assert.equal(await s.outboxSize('c'), 5)
      const all = await s.outbox('c', 0, 100)
      assert.deepEqual(all.map(e => e.id), ids)
      assert.deepEqual(all.map(e => e.doc), ['a', 'a', 'a', 'b', 'b'])
      assert.deepEqual([...all[0].update], [...updates[0]])
      // paging by id
      assert.deepEqual((await s.outbox('c', ids[1], 2)).map(e => e.id), [ids[2], ids[3]])
      const docs = await s.documents('c')
      assert.deepEqual(docs.map(d => [d.doc, d.pending, d.deleted, d.savedThrough]), [['a', 3, false, 0], ['b', 2, false, 0]])
      await s.commit('c', { pushed: [ids[0], ids[1]], saved: [{ doc: 'a', seq: 7 }] })
      await s.commit('c', { saved: [{ doc: 'a', seq: 5 }] }) // the highest is kept
      assert.deepEqual((await s.outbox('c', 0, 100)).map(e => e.id), ids.slice(2))
      const a = (await s.documents('c'))[0]
      assert.equal(a.pending, 1)
      assert.equal(a.savedThrough, 7)
      // The document still holds every edit.
      const stored = await s.loadDocument('c', 'a')
      assert.equal(stored.updates.length, 3)
      assert.equal(stored.deleted, false)
      await s.close()
    })

    test('remote changes and the cursor land in one commit', async () => {
      const s = await open()
      const { doc, updates } = edits(3, 'ab')
      await s.commit('c', {
        remote: updates.map(update => ({ doc: 'r', update })),
        state: { cursor: 3, checksum: '00000000000000ff', epoch: 'e'.repeat(32) }
      })
      assert.deepEqual(await s.state('c'), { cursor: 3, checksum: '00000000000000ff', epoch: 'e'.repeat(32) })
      assert.equal(await s.outboxSize('c'), 0)
      assert.equal(textOf(await s.loadDocument('c', 'r')), doc.getText('t').toString())
      await s.commit('c', { state: { cursor: 9 } })
      assert.deepEqual(await s.state('c'), { cursor: 9, checksum: '00000000000000ff', epoch: 'e'.repeat(32) })
      assert.deepEqual(await s.state('other'), { cursor: 0, checksum: '', epoch: '' })
      await s.close()
    })

    test('a delete drops the document and rejects its outbox rows; a remote update revives it', async () => {
      const s = await open()
      const { updates } = edits(4)
      const { localIds } = await s.commit('c', { local: updates.slice(0, 2).map(update => ({ doc: 'd', update })) })
      await s.commit('c', { local: [{ doc: 'keep', update: updates[2] }] })
      const res = await s.commit('c', { remote: [{ doc: 'd', update: null }], state: { cursor: 4 } })
      assert.deepEqual(res.rejected.map(r => [r.id, r.doc, r.code]), [[localIds[0], 'd', 'document_deleted'], [localIds[1], 'd', 'document_deleted']])
      assert.equal(await s.outboxSize('c'), 1)
      const stored = await s.loadDocument('c', 'd')
      assert.equal(stored.deleted, true)
      assert.equal(stored.updates.length, 0)
      assert.deepEqual((await s.documents('c')).map(d => [d.doc, d.deleted]), [['d', true], ['keep', false]])
      assert.deepEqual((await s.rejected('c')).map(r => r.id), localIds)
      await s.commit('c', { remote: [{ doc: 'd', update: updates[3] }] })
      assert.equal((await s.loadDocument('c', 'd')).deleted, false)
      await s.close()
    })

    test('a refused update leaves the outbox for the rejected record, the document keeps it', async () => {
      const s = await open()
      const { doc, updates } = edits(3)
      const { localIds } = await s.commit('c', { local: updates.map(update => ({ doc: 'a', update })) })
      const rejected = await s.reject('c', [localIds[1], 12345], 'invalid_update', 'bad')
      assert.deepEqual(rejected.map(r => [r.id, r.doc, r.code, r.message]), [[localIds[1], 'a', 'invalid_update', 'bad']])
      assert.deepEqual([...rejected[0].update], [...updates[1]])
      assert.deepEqual((await s.outbox('c', 0, 10)).map(e => e.id), [localIds[0], localIds[2]])
      assert.equal((await s.rejected('c')).length, 1)
      assert.equal(textOf(await s.loadDocument('c', 'a')), doc.getText('t').toString())
      // rejecting again is a no-op
      assert.deepEqual(await s.reject('c', [localIds[1]], 'x', 'y'), [])
      await s.close()
    })

    test('a document past the threshold is folded into a snapshot; outbox rows stay rows', async () => {
      const s = await open({ compactAfterUpdates: 10 })
      const { doc, updates } = edits(30)
      const { localIds } = await s.commit('c', { local: updates.slice(0, 4).map(update => ({ doc: 'a', update })) })
      for (const update of updates.slice(4)) await s.commit('c', { remote: [{ doc: 'a', update }] })
      const stored = await s.loadDocument('c', 'a')
      assert.ok(stored.snapshot !== null, 'a snapshot was written')
      assert.ok(stored.stateVector !== null)
      assert.ok(stored.updates.length < 14, `log folded (${stored.updates.length} rows left)`)
      assert.deepEqual([...stored.stateVector], [...Y.encodeStateVectorFromUpdate(stored.snapshot)])
      assert.equal(textOf(stored), doc.getText('t').toString())
      assert.deepEqual((await s.outbox('c', 0, 10)).map(e => e.id), localIds)
      // confirm and compact explicitly: only the snapshot is left
      await s.commit('c', { pushed: localIds })
      await s.compact('c')
      const after = await s.loadDocument('c', 'a')
      assert.equal(after.updates.length, 0)
      assert.equal(textOf(after), doc.getText('t').toString())
      await s.close()
    })

    test('the byte threshold folds too', async () => {
      const s = await open({ compactAfterBytes: 1000 })
      const { doc, updates } = edits(20, 'y'.repeat(100))
      for (const update of updates) await s.commit('c', { remote: [{ doc: 'a', update }] })
      const stored = await s.loadDocument('c', 'a')
      assert.ok(stored.snapshot !== null)
      assert.ok(stored.updates.length < 10)
      assert.equal(textOf(stored), doc.getText('t').toString())
      await s.close()
    })

    test('supersedeOutbox empties the outbox and forgets savedThrough', async () => {
      const s = await open()
      const { updates } = edits(3)
      const { localIds } = await s.commit('c', { local: updates.slice(0, 2).map(update => ({ doc: 'a', update })) })
      await s.commit('c', { pushed: [localIds[0]], saved: [{ doc: 'a', seq: 3 }] })
      const r = await s.commit('c', { supersedeOutbox: true, local: [{ doc: 'a', update: updates[2] }], state: { cursor: 1, epoch: 'f'.repeat(32), checksum: '' } })
      assert.deepEqual((await s.outbox('c', 0, 10)).map(e => e.id), r.localIds)
      assert.equal((await s.documents('c'))[0].savedThrough, 0)
      await s.close()
    })

    test('stored bytes are copies', async () => {
      const s = await open()
      const { doc, updates } = edits(1)
      const buf = new Uint8Array(updates[0].length + 4)
      buf.set(updates[0], 2)
      const view = buf.subarray(2, 2 + updates[0].length)
      await s.commit('c', { remote: [{ doc: 'a', update: view }] })
      buf.fill(0)
      assert.equal(textOf(await s.loadDocument('c', 'a')), doc.getText('t').toString())
      await s.close()
    })
  })
}

/** What a persistent store keeps across a close and an open:
 * `openAt(place)` opens the store at `place`, `newPlace()` names a new one. */
export function reopenContract ({ test, assert }, kind, openAt, newPlace) {
  test(`store contract: ${kind} keeps everything across a reopen`, async () => {
    // Why: "saved locally" means the next start of the app finds it.
    const file = newPlace()
    let s = await openAt(file)
    const { doc, updates } = edits(3)
    const { localIds } = await s.commit('c', { local: updates.map(update => ({ doc: 'a', update })), state: { cursor: 5, epoch: 'a'.repeat(32), checksum: '1'.repeat(16) } })
    await s.setKv('', 'peer', 'me')
    await s.close()
    s = await openAt(file)
    assert.equal(await s.getKv('', 'peer'), 'me')
    assert.deepEqual(await s.state('c'), { cursor: 5, epoch: 'a'.repeat(32), checksum: '1'.repeat(16) })
    assert.deepEqual((await s.outbox('c', 0, 10)).map(e => e.id), localIds)
    assert.equal(textOf(await s.loadDocument('c', 'a')), doc.getText('t').toString())
    const more = await s.commit('c', { local: [{ doc: 'a', update: updates[0] }] })
    assert.ok(more.localIds[0] > localIds[2], 'ids keep increasing after a reopen')
    await s.close()
  })
}
