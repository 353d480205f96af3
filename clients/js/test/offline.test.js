// Offline work: a third client away while the server compacts, 10,000
// offline edits over 200 documents, and refused updates that must not
// block the rest of the outbox.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { startServer, sleep } from './support/server.js'
import { client, text, type, serverText, serverLog, post, sniffingWebSocket } from './support/clients.js'
import { decodeFrame } from '../dist/protocol.js'
import { memoryStore } from '../dist/index.js'

let server
before(async () => {
  // A peer unseen for 1 s is inactive: compaction does not wait for it.
  server = await startServer({ env: { SEQSYNC_COMPACTION_PEER_TIMEOUT_SECS: '1' } })
})
after(async () => { await server?.stop() })

test('3-way: one client offline while the server compacts, then everyone converges', async () => {
  const sniff = sniffingWebSocket(decodeFrame)
  const [a, b, c] = [client(server), client(server), client(server, { WebSocket: sniff.WebSocket })]
  const [ca, cb, cc] = [a.collection('three'), b.collection('three'), c.collection('three')]
  const da = await ca.doc('doc')
  type(da, 'start;')
  type(await ca.doc('other'), 'o;')
  await ca.sync()
  await cb.sync()
  await cc.sync()
  const dc = await cc.doc('doc')
  assert.equal(text(dc), 'start;')
  // C goes offline and edits; A and B keep writing, each sync a change.
  const db = await cb.doc('doc')
  for (let i = 0; i < 30; i++) {
    type(i % 2 === 0 ? da : db, i % 2 === 0 ? 'A' : 'B')
    await (i % 2 === 0 ? ca : cb).sync()
  }
  type(dc, 'offline-c;')
  type(await cc.doc('c-only'), 'made offline')
  await ca.sync()
  await cb.sync()
  await sleep(1500) // C is an inactive peer now
  const compaction = await post(server, '/v1/collections/three/compact')
  assert.ok(compaction.documents_compacted >= 1, JSON.stringify(compaction))
  assert.ok(compaction.changes_removed > 0)
  // C comes back: its cursor is inside the folded range; it gets the
  // snapshot and pushes its own edits.
  sniff.frames.length = 0
  const rc = await cc.sync()
  assert.equal(rc.kind, 'merged')
  const kinds = sniff.frames.filter(f => f.type === 'changes').flatMap(f => f.changes.map(ch => ch.kind))
  assert.ok(kinds.includes('snapshot'), `C received a snapshot (${kinds})`)
  assert.equal(rc.pushed, 2)
  await ca.sync()
  await cb.sync()
  for (const d of ['doc', 'other', 'c-only']) {
    const t = await serverText(server, 'three', d)
    assert.equal(text(await ca.doc(d)), t, `A ${d}`)
    assert.equal(text(await cb.doc(d)), t, `B ${d}`)
    assert.equal(text(await cc.doc(d)), t, `C ${d}`)
  }
  assert.ok(text(dc).includes('offline-c;'))
  assert.equal(text(dc).replace(/[^A]/g, '').length, 15)
  assert.equal(text(dc).replace(/[^B]/g, '').length, 15)
  // A fourth client starting from nothing after compaction gets the same.
  const d4 = client(server)
  const c4 = d4.collection('three')
  await c4.sync()
  assert.equal(text(await c4.doc('doc')), text(da))
  for (const x of [a, b, c, d4]) await x.close()
})

test('10,000 offline edits over 200 documents, then one sync', async () => {
  const a = client(server)
  const ca = a.collection('offline10k')
  const docs = []
  for (let i = 0; i < 200; i++) docs.push(await ca.doc(`doc-${i}`))
  const t0 = performance.now()
  for (let e = 0; e < 10000; e++) {
    type(docs[e % 200], String.fromCharCode(97 + (e % 26)))
  }
  await ca.whenSaved()
  const saved = performance.now() - t0
  assert.equal(await ca.outboxSize(), 10000)
  assert.equal(ca.status('doc-0').pending, 50)
  const t1 = performance.now()
  const report = await ca.sync()
  const synced = performance.now() - t1
  assert.equal(report.kind, 'pushed')
  assert.equal(report.pushed, 10000)
  assert.equal(report.outboxLeft, 0)
  assert.equal(await ca.outboxSize(), 0)
  for (let i = 0; i < 200; i++) assert.ok(ca.status(`doc-${i}`).savedThrough > 0)
  // The server logged one merged update per document, not 10,000.
  const log = await serverLog(server, 'offline10k')
  assert.equal(log.changes.length, 200)
  const b = client(server)
  const cb = b.collection('offline10k')
  const pulled = await cb.sync()
  assert.equal(pulled.pulled, 200)
  for (const i of [0, 57, 199]) assert.equal(text(await cb.doc(`doc-${i}`)), text(docs[i]))
  console.log(`# 10,000 offline edits: saved locally in ${saved.toFixed(0)} ms, one sync in ${synced.toFixed(0)} ms`)
  await a.close()
  await b.close()
})

test('refused updates leave the outbox for the rejected record without blocking the rest', async () => {
  const store = memoryStore()
  const a = client(server, { store })
  const ca = a.collection('refused')
  const errors = []
  ca.events.on('error', e => errors.push(e.code))
  const rejectedEvents = []
  ca.events.on('rejected', r => rejectedEvents.push(r))
  const good = await ca.doc('good')
  const mixed = await ca.doc('mixed')
  type(good, 'g1')
  type(mixed, 'm1')
  await ca.whenSaved()
  // Inside the same merged group of 'mixed': an update under a reserved
  // client id, then garbage bytes, then a normal edit.
  const reserved = new Y.Doc()
  reserved.clientID = 42
  reserved.getText('other').insert(0, 'reserved')
  await store.commit('refused', {
    local: [
      { doc: 'mixed', update: Y.encodeStateAsUpdate(reserved) },
      { doc: 'junk', update: new Uint8Array([9, 9, 9]) }
    ]
  })
  type(mixed, 'm2')
  type(good, 'g2')
  const report = await ca.sync()
  assert.equal(report.rejected, 2)
  assert.equal(report.outboxLeft, 0)
  assert.equal(report.followUpNeeded, false)
  const rejected = await ca.rejected()
  assert.deepEqual(rejected.map(r => [r.doc, r.code]).sort(), [['junk', 'invalid_update'], ['mixed', 'reserved_client_id']])
  assert.equal(rejectedEvents.length, 2)
  assert.ok(errors.includes('reserved_client_id') && errors.includes('invalid_update'))
  assert.equal(await serverText(server, 'refused', 'good'), 'g1g2')
  assert.equal(await serverText(server, 'refused', 'mixed'), 'm1m2')
  assert.equal(await serverText(server, 'refused', 'junk'), null)
  // Locally the document still shows what was refused.
  assert.equal(mixed.getText('other').toString(), '')
  assert.equal((await ca.sync()).kind, 'noop')
  await a.close()
})
