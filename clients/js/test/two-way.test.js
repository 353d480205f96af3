// Two clients on the real server: every kind of sync report, statuses,
// progress, live following, deletes.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { startServer, waitFor } from './support/server.js'
import { client, text, type, serverText, serverLog } from './support/clients.js'
import { memoryStore } from '../dist/index.js'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test('noop, pushed, pulled, merged, followUpNeeded', async () => {
  const a = client(server)
  const b = client(server)
  const ca = a.collection('kinds')
  const cb = b.collection('kinds')
  assert.equal((await ca.sync()).kind, 'noop')

  const da = await ca.doc('n1')
  type(da, 'hello')
  const statuses = []
  ca.events.on('status', s => statuses.push(s))
  const pushed = await ca.sync()
  assert.equal(pushed.kind, 'pushed')
  assert.equal(pushed.pushed, 1)
  assert.equal(pushed.pulled, 0)
  assert.equal(pushed.followUpNeeded, false)
  assert.equal(pushed.cursor, 1)
  assert.match(pushed.epoch, /^[0-9a-f]{32}$/)
  assert.deepEqual(ca.status('n1'), { doc: 'n1', pending: 0, unsaved: 0, savedThrough: 1 })
  assert.ok(statuses.some(s => s.doc === 'n1' && s.savedThrough === 1 && s.pending === 0))
  assert.equal(await serverText(server, 'kinds', 'n1'), 'hello')

  const progress = []
  cb.events.on('progress', p => progress.push(p))
  const pulled = await cb.sync()
  assert.equal(pulled.kind, 'pulled')
  assert.equal(pulled.pulled, 1)
  assert.equal(text(await cb.doc('n1')), 'hello')
  assert.deepEqual(progress.at(-1), { received: 1, expected: 1, pushed: 0, toPush: 0 })
  assert.equal((await cb.sync()).kind, 'noop')

  const db = await cb.doc('n1')
  type(db, ' world')
  type(da, '!')
  assert.equal((await ca.sync()).kind, 'pushed')
  const merged = await cb.sync()
  assert.equal(merged.kind, 'merged')
  assert.equal(merged.pulled, 1)
  assert.equal(merged.pushed, 1)
  const back = await ca.sync()
  assert.equal(back.kind, 'pulled')
  assert.equal(text(da), text(db))
  assert.equal(text(da), await serverText(server, 'kinds', 'n1'))

  // An edit made while a sync runs waits for the next one.
  const off = ca.events.on('connection', ({ state }) => {
    if (state === 'connected') {
      off()
      type(da, '?')
    }
  })
  type(da, '.')
  const during = await ca.sync()
  assert.equal(during.kind, 'pushed')
  assert.equal(during.pushed, 1)
  assert.equal(during.followUpNeeded, true)
  assert.equal(during.outboxLeft, 1)
  const next = await ca.sync()
  assert.equal(next.kind, 'pushed')
  assert.equal(next.followUpNeeded, false)
  await cb.sync()
  assert.equal(text(db), text(da))
  assert.ok(text(da).endsWith('.?') || text(da).endsWith('?.'))
  await a.close()
  await b.close()
})

test('a reset for a foreign epoch and for a cursor beyond the head loses nothing local', async () => {
  const a = client(server)
  const ca = a.collection('resets')
  type(await ca.doc('r1'), 'server side')
  await ca.sync()

  for (const [state, reason] of [
    [{ epoch: 'f'.repeat(32), cursor: 1, checksum: '' }, 'foreign_epoch'],
    [{ cursor: 999, checksum: '' }, 'cursor_beyond_head']
  ]) {
    const store = memoryStore()
    const c = client(server, { store })
    const col = c.collection('resets')
    // A replica whose cursor does not fit the server, holding an edit of
    // r1 that only it has and a document the server never saw.
    const d = await col.doc('r1')
    type(d, 'mine ')
    type(await col.doc(`only-${reason}`), 'local only')
    await col.whenSaved()
    const epoch = state.epoch ?? (await ca.sync()).epoch
    await store.commit('resets', { state: { ...state, epoch } })
    await c.close()
    const c2 = client(server, { store })
    const col2 = c2.collection('resets')
    const resets = []
    col2.events.on('reset', r => resets.push(r))
    const report = await col2.sync()
    assert.equal(report.kind, 'reset', reason)
    assert.equal(report.reason, reason)
    assert.equal(resets[0].reason, reason)
    assert.ok(report.pulled >= 1, 'the server state of r1 was applied')
    assert.ok(report.pushed >= 2, 'r1 and the local-only document were pushed back')
    const d2 = await col2.doc('r1')
    assert.ok(text(d2).includes('mine '))
    assert.ok(text(d2).includes('server side'))
    assert.equal(await serverText(server, 'resets', 'r1'), text(d2))
    assert.equal(await serverText(server, 'resets', `only-${reason}`), 'local only')
    assert.equal((await col2.sync()).kind, 'noop')
    await c2.close()
  }
  await ca.sync()
  assert.ok(text(await ca.doc('r1')).includes('mine '))
  await a.close()
})

test('following: live edits both ways, statuses, and a goodbye that delivers everything', async () => {
  const a = client(server)
  const b = client(server)
  const ca = a.collection('live')
  const cb = b.collection('live')
  const states = []
  ca.events.on('connection', s => states.push(s.state))
  ca.follow()
  cb.follow()
  const da = await ca.doc('d')
  const db = await cb.doc('d')
  await ca.whenSynced()
  await cb.whenSynced()
  for (let i = 0; i < 20; i++) {
    type(da, 'a')
    type(db, 'b')
    await new Promise(resolve => setTimeout(resolve, 5))
  }
  await waitFor(() => text(da).length === 40 && text(db).length === 40, 'both sides converge')
  assert.equal(text(da), text(db))
  await waitFor(() => ca.status('d').pending === 0 && ca.status('d').savedThrough > 0, 'A confirmed')
  // edits right before stop() are delivered by the goodbye
  type(da, 'Z')
  const stopped = await ca.stop()
  assert.equal(stopped.complete, true)
  assert.ok(states.includes('connected'))
  assert.equal(states.at(-1), 'disconnected')
  await waitFor(() => text(db).includes('Z'), 'B receives the edit made before the goodbye')
  assert.equal(await serverText(server, 'live', 'd'), text(db))
  await cb.stop()
  // acks: both peers acknowledged the head
  const peers = await (await fetch(`${server.http}/v1/collections/live/peers`)).json()
  const head = (await serverLog(server, 'live')).head
  assert.equal(peers.length, 2)
  for (const p of peers) assert.equal(p.acked, head, JSON.stringify(peers))
  await a.close()
  await b.close()
})

test('deletes: delete(id) on one client reaches the other, later edits are rejected', async () => {
  const a = client(server)
  const b = client(server)
  const ca = a.collection('deletes')
  const cb = b.collection('deletes')
  type(await ca.doc('gone'), 'x')
  type(await ca.doc('stays'), 'y')
  await ca.sync()
  await cb.sync()
  assert.deepEqual((await cb.documents()).sort(), ['gone', 'stays'])
  const deleted = []
  cb.events.on('deleted', e => deleted.push(e.doc))
  const answer = await ca.delete('gone')
  assert.ok(answer.seq > 0)
  assert.deepEqual(await ca.documents(), ['stays'])
  await cb.sync()
  assert.deepEqual(deleted, ['gone'])
  assert.deepEqual(await cb.documents(), ['stays'])
  // An edit of the deleted document is refused, and does not block others.
  const rejected = []
  ca.events.on('rejected', r => rejected.push(r))
  ca.events.on('error', () => {})
  type(await ca.doc('gone'), 'late')
  type(await ca.doc('stays'), 'z')
  const report = await ca.sync()
  assert.equal(report.rejected, 1)
  assert.equal(report.pushed, 1)
  assert.equal(rejected[0].code, 'document_deleted')
  assert.equal(await ca.outboxSize(), 0)
  assert.equal((await ca.rejected()).length, 1)
  assert.equal(await serverText(server, 'deletes', 'stays'), 'yz')
  await a.close()
  await b.close()
})

test('many documents in one sync: one push_batch, statuses per document', async () => {
  const a = client(server)
  const b = client(server)
  const ca = a.collection('many')
  for (let i = 0; i < 50; i++) type(await ca.doc(`d${i}`), `doc ${i}`)
  const r = await ca.sync()
  assert.equal(r.kind, 'pushed')
  assert.equal(r.pushed, 50)
  for (let i = 0; i < 50; i++) assert.ok(ca.status(`d${i}`).savedThrough > 0)
  const cb = b.collection('many')
  const pulled = await cb.sync()
  assert.equal(pulled.pulled, 50)
  assert.equal((await cb.documents()).length, 50)
  assert.equal(text(await cb.doc('d7')), 'doc 7')
  await a.close()
  await b.close()
})

test('a Y.Doc keeps its updates: the doc loads from the store on a fresh client', async () => {
  const store = memoryStore()
  const a = client(server, { store })
  const ca = a.collection('reload')
  const d = await ca.doc('x')
  type(d, 'persisted')
  d.getMap('m').set('k', 1)
  await ca.whenSaved()
  await a.close()
  const a2 = client(server, { store })
  const d2 = await a2.collection('reload').doc('x')
  assert.equal(text(d2), 'persisted')
  assert.equal(d2.getMap('m').get('k'), 1)
  assert.ok(d2.clientID >= 65536)
  assert.equal((await a2.collection('reload').sync()).kind, 'pushed')
  await a2.close()
  void Y
})

test('an edit is reported unsaved the moment it is made, before the store has it', async () => {
  // Why: apps show "saved on this device" from status events. Once the
  // count only went down after a write, so between two keystrokes the page
  // said "saved" while the last edit was only in memory, and closing the
  // tab then lost it (the browser adoption suite caught it).
  const a = client(server)
  const ca = a.collection('unsaved-now')
  const da = await ca.doc('n')
  const seen = []
  ca.events.on('status', s => { if (s.doc === 'n') seen.push(`status unsaved=${s.unsaved}`) })
  ca.events.on('saved', ({ docs }) => { if (docs.includes('n')) seen.push('saved') })
  type(da, 'x')
  assert.equal(ca.status('n').unsaved, 1)
  await ca.whenSaved()
  assert.deepEqual(seen, ['status unsaved=1', 'saved', 'status unsaved=0'])
  await a.close()
})
