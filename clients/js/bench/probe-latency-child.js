// One side of bench/probe-latency.js (see there).
import WebSocket from 'ws'
import * as Y from 'yjs'
import { encodeFrame, decodeFrame } from '../dist/protocol.js'
import { SeqsyncClient, memoryStore } from '../dist/index.js'
import { sqliteStore } from '../dist/sqlite.js'
const [role, kind, wsBase, secs, storeKind] = process.argv.slice(2)
const now = () => performance.timeOrigin + performance.now()
const DOCS = 300
const lat = []
let docs, ws
if (kind === 'raw') {
  ws = new WebSocket(`${wsBase}/v1/collections/mix/sync`); ws.binaryType = 'arraybuffer'
  await new Promise(r => ws.once('open', r))
  docs = Array.from({ length: DOCS }, () => new Y.Doc())
  ws.on('message', d => {
    const f = decodeFrame(new Uint8Array(d))
    if (role === 'reader' && f.type === 'changes') { const t = now(); for (const c of f.changes) { const doc = docs[Number(c.doc.slice(1))]; Y.applyUpdate(doc, c.payload); lat.push(t - doc.getMap('m').get('ts')) } }
  })
  ws.send(encodeFrame({ type: 'hello', peer: role, after: 0, epoch: '', checksum: '', schemaVersion: 0, docs: role === 'writer' ? ['-'] : [] }))
} else {
  const c = new SeqsyncClient({ url: wsBase.replace('ws:', 'http:'), store: storeKind === 'sqlite' ? sqliteStore(`/tmp/mix-${role}-${Date.now()}.sqlite3`) : memoryStore(), WebSocket })
  const col = c.collection('mix')
  docs = []
  for (let i = 0; i < DOCS; i++) docs.push(await col.doc(`d${i}`))
  col.follow(); await col.whenSynced()
  if (role === 'reader') for (const d of docs) d.getMap('m').observe(() => lat.push(now() - d.getMap('m').get('ts')))
}
await new Promise(r => setTimeout(r, 500))
process.stdout.write('ready\n')
await new Promise(r => process.once('SIGUSR1', r))
if (role === 'writer') {
  const start = now(); let next = 0; let id = 1; let due = 0
  while (now() - start < Number(secs) * 1000) {
    due += 30
    const ups = []
    while (due >= 1) { const d = docs[next]; let u; d.once('update', x => { u = x }); d.getMap('m').set('ts', now()); ups.push({ doc: `d${next}`, update: u }); next = (next + 1) % DOCS; due-- }
    if (kind === 'raw') ws.send(encodeFrame({ type: 'push_batch', id: id++, updates: ups }))
    const el = now() - start; await new Promise(r => setTimeout(r, Math.max(0, Math.ceil((el + 0.001) / 10) * 10 - el)))
  }
  await new Promise(r => setTimeout(r, 1000)); console.log('{}'); process.exit(0)
} else {
  await new Promise(r => setTimeout(r, Number(secs) * 1000 + 2000))
  lat.sort((a, b) => a - b); const q = p => lat[Math.floor(p * lat.length)]
  console.log(JSON.stringify({ n: lat.length, p50: q(0.5), p90: q(0.9), p99: q(0.99) })); process.exit(0)
}
