// The exclusive cursor at page boundaries: the server pages stored changes
// (stream_page_limit, set small here) and then streams live ones; a client
// must see every seq exactly once across many changes frames.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startServer } from './support/server.js'
import { client, text, type, sniffingWebSocket } from './support/clients.js'
import { decodeFrame } from '../dist/protocol.js'

let server
before(async () => { server = await startServer({ env: { SEQSYNC_LIMITS_STREAM_PAGE_LIMIT: '7' } }) })
after(async () => { await server?.stop() })

function seqsOf (frames) {
  const seqs = []
  let through = 0
  for (const f of frames) {
    if (f.type !== 'changes') continue
    assert.ok(f.through >= through, `through goes forward (${through} → ${f.through})`)
    for (const c of f.changes) {
      assert.ok(c.seq > through, `seq ${c.seq} after the previous frame's through ${through}`)
      assert.ok(c.seq <= f.through, `seq ${c.seq} within its frame's through ${f.through}`)
      seqs.push(c.seq)
    }
    through = f.through
  }
  return seqs
}

test('every seq exactly once across pages of 7, stored then live, with a writer racing the catch-up', async () => {
  const writer = client(server)
  const cw = writer.collection('pages')
  const docs = []
  for (let i = 0; i < 10; i++) docs.push(await cw.doc(`p${i}`))
  // 300 stored changes: one edit per document per sync (a sync merges a
  // document's edits into one update).
  for (let round = 0; round < 30; round++) {
    for (let i = 0; i < 10; i++) type(docs[i], String.fromCharCode(97 + (round + i) % 26))
    await cw.sync()
  }
  const { WebSocket, frames } = sniffingWebSocket(decodeFrame)
  const reader = client(server, { WebSocket })
  const cr = reader.collection('pages')
  cr.follow()
  // Keep writing while the reader catches up: the seam between stored and
  // live changes is crossed.
  cw.follow()
  for (let i = 0; i < 60; i++) {
    type(docs[i % 10], 'L')
    if (i % 6 === 0) await new Promise(resolve => setTimeout(resolve, 2))
  }
  await cw.stop()
  await cr.whenSynced()
  const head = (await cw.sync()).head
  await new Promise(resolve => setTimeout(resolve, 100))
  await cr.whenSynced()
  await cr.stop()
  const seqs = seqsOf(frames)
  assert.equal(new Set(seqs).size, seqs.length, 'no seq twice')
  assert.deepEqual(seqs, Array.from({ length: head }, (_, i) => i + 1), 'no seq skipped')
  // The server read the 300 stored changes from storage in pages of 7 (43
  // pages and their seams); how it cuts them into frames is its own
  // business (whatever is ready at once goes in one frame), so the frames
  // are not counted: only the seqs they carry.
  assert.ok(frames.some(f => f.type === 'changes'), 'changes arrived in frames')
  assert.equal(cr.syncState.cursor, head)
  for (let i = 0; i < 10; i++) assert.equal(text(await cr.doc(`p${i}`)), text(docs[i]))
  await writer.close()
  await reader.close()
})

test('a sync resuming from a cursor in the middle of a page gets exactly the rest', async () => {
  const writer = client(server)
  const cw = writer.collection('resume')
  const d = await cw.doc('r')
  for (let i = 0; i < 40; i++) {
    type(d, 'x')
    await cw.sync()
  }
  const { WebSocket, frames } = sniffingWebSocket(decodeFrame)
  const reader = client(server, { WebSocket })
  const cr = reader.collection('resume')
  assert.equal((await cr.sync()).pulled, 40)
  for (let i = 0; i < 13; i++) {
    type(d, 'y')
    await cw.sync()
  }
  frames.length = 0
  const r = await cr.sync()
  assert.equal(r.pulled, 13)
  assert.deepEqual(seqsOf(frames), Array.from({ length: 13 }, (_, i) => 41 + i))
  assert.equal(text(await cr.doc('r')), text(d))
  await writer.close()
  await reader.close()
})
