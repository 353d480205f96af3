// Real Yjs clients from npm (yjs, y-websocket's WebsocketProvider, ws)
// against the real seqsync server binary: HTTP push + changes, y-websocket
// collaboration, offline recovery, and a real editing trace typed keystroke by
// keystroke. Trace data: CC BY 4.0, Joseph Gentle (sveltecomponent).
import { test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { gunzipSync } from 'node:zlib'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import { startServer, waitFor } from '../support/server.js'

let server
// Providers are destroyed even when a test fails, or their sockets would
// keep the process alive.
const cleanups = []
before(async () => { server = await startServer() })
afterEach(() => { while (cleanups.length) cleanups.pop()() })
after(async () => { if (server) await server.stop() })

const b64 = bytes => Buffer.from(bytes).toString('base64')
const unb64 = text => new Uint8Array(Buffer.from(text, 'base64'))

async function push (collection, doc, update, peer) {
  const res = await fetch(`${server.http}/v1/collections/${collection}/documents/${doc}/updates`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', ...(peer ? { 'x-peer-id': peer } : {}) },
    body: update
  })
  assert.equal(res.status, 200, await res.clone().text())
  return res.json()
}

// Applies every change after `cursor` to `ydoc` and returns the new cursor.
async function pull (collection, docId, ydoc, cursor) {
  for (;;) {
    const res = await fetch(`${server.http}/v1/collections/${collection}/changes?after=${cursor}&limit=500`)
    assert.equal(res.status, 200)
    const page = await res.json()
    for (const change of page.changes) {
      if (change.doc === docId && change.kind !== 'delete') Y.applyUpdate(ydoc, unb64(change.update), 'server')
    }
    cursor = page.cursor
    if (!page.has_more) return cursor
  }
}

// The document as the server holds it; text null while it does not exist.
async function serverText (collection, docId) {
  const res = await fetch(`${server.http}/v1/collections/${collection}/documents/${docId}`)
  if (res.status === 404) return { text: null, cursor: 0 }
  assert.equal(res.status, 200)
  const doc = new Y.Doc()
  Y.applyUpdate(doc, new Uint8Array(await res.arrayBuffer()))
  return { text: doc.getText('content').toString(), cursor: Number(res.headers.get('x-seqsync-cursor')) }
}

// A provider that is torn down after the test, pass or fail: its socket and
// the awareness timer would otherwise keep the process alive.
function provider (collection, docId, ydoc) {
  const p = new WebsocketProvider(`${server.ws}/yws/${collection}`, docId, ydoc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true // sync through the server only, not between providers in this process
  })
  cleanups.push(() => { p.destroy(); p.awareness.destroy(); ydoc.destroy() })
  return p
}

const synced = p => new Promise(resolve => p.synced ? resolve() : p.once('sync', ok => ok && resolve()))

test('(a) two yjs docs converge through HTTP push and changes', async () => {
  const a = new Y.Doc()
  const b = new Y.Doc()
  const pushes = []
  a.on('update', (update, origin) => { if (origin !== 'server') pushes.push(push('http-a', 'doc', update, 'client-a')) })
  b.on('update', (update, origin) => { if (origin !== 'server') pushes.push(push('http-a', 'doc', update, 'client-b')) })
  a.getText('content').insert(0, 'Hello from A. ')
  b.getText('content').insert(0, 'Hello from B. ')
  a.getText('content').insert(3, '!!')
  await Promise.all(pushes)
  let ca = await pull('http-a', 'doc', a, 0)
  let cb = await pull('http-a', 'doc', b, 0)
  b.getText('content').delete(0, 2)
  await Promise.all(pushes)
  ca = await pull('http-a', 'doc', a, ca)
  cb = await pull('http-a', 'doc', b, cb)
  assert.equal(a.getText('content').toString(), b.getText('content').toString())
  assert.equal((await serverText('http-a', 'doc')).text, a.getText('content').toString())
  assert.equal(ca, cb)
})

test('(b) two WebsocketProviders converge, and HTTP reads the same document', async () => {
  const a = new Y.Doc()
  const b = new Y.Doc()
  const pa = provider('yws-b', 'room', a)
  const pb = provider('yws-b', 'room', b)
  await Promise.all([synced(pa), synced(pb)])
  a.getText('content').insert(0, 'alpha ')
  b.getText('content').insert(0, 'beta ')
  a.getText('content').insert(0, '[A]')
  await waitFor(() => a.getText('content').toString() === b.getText('content').toString() &&
    a.getText('content').length === 'alpha beta [A]'.length, 'providers to converge')
  const expected = a.getText('content').toString()
  await waitFor(async () => (await serverText('yws-b', 'room')).text === expected, 'the server to hold the same text')
})

test('(c) an offline client catches up with /recover and its offline edits reach the other client', async () => {
  const online = new Y.Doc()
  const po = provider('offline-c', 'doc', online)
  await synced(po)
  online.getText('content').insert(0, 'shared start. ')
  await waitFor(async () => (await serverText('offline-c', 'doc')).text === 'shared start. ', 'first edit stored')

  // The offline client got the document once, then lost its connection.
  const offline = new Y.Doc()
  const first = await fetch(`${server.http}/v1/collections/offline-c/documents/doc`)
  Y.applyUpdate(offline, new Uint8Array(await first.arrayBuffer()))
  online.getText('content').insert(online.getText('content').length, 'online edit. ')
  offline.getText('content').insert(0, 'offline edit. ')
  await waitFor(async () => ((await serverText('offline-c', 'doc')).text || '').includes('online edit.'), 'the online edit stored')

  // Back online: recover what it lacks...
  const sv = Y.encodeStateVector(offline)
  const rec = await fetch(`${server.http}/v1/collections/offline-c/documents/doc/recover`, { method: 'POST', body: sv })
  assert.equal(rec.status, 200)
  assert.ok(Number(rec.headers.get('x-seqsync-cursor')) >= 1)
  Y.applyUpdate(offline, new Uint8Array(await rec.arrayBuffer()))
  assert.ok(offline.getText('content').toString().includes('online edit.'))
  // ...and push what the server lacks.
  const serverSv = Y.encodeStateVector(online) // what the server has, as seen by a synced client
  await push('offline-c', 'doc', Y.encodeStateAsUpdate(offline, serverSv), 'offline')
  await waitFor(() => online.getText('content').toString() === offline.getText('content').toString(), 'the online client to see the offline edit')
  assert.ok(online.getText('content').toString().includes('offline edit.'))
})

test('(d) sveltecomponent typed keystroke by keystroke through a WebsocketProvider', async () => {
  const here = dirname(fileURLToPath(import.meta.url))
  const path = join(here, '..', '..', 'benches', 'traces', 'sveltecomponent.json.gz')
  const trace = JSON.parse(gunzipSync(readFileSync(path)).toString('utf8'))
  const doc = new Y.Doc()
  const p = provider('trace-d', 'svelte', doc)
  await synced(p)
  const text = doc.getText('content')
  if (trace.startContent) text.insert(0, trace.startContent)
  for (const txn of trace.txns) {
    doc.transact(() => {
      for (const [pos, del, ins] of txn.patches) {
        if (del > 0) text.delete(pos, del)
        if (ins) text.insert(pos, ins)
      }
    })
  }
  assert.equal(text.toString(), trace.endContent)
  await waitFor(async () => (await serverText('trace-d', 'svelte')).text === trace.endContent,
    `the server to hold the trace's endContent (${trace.txns.length} keystrokes)`, 120000)
  const page = await (await fetch(`${server.http}/v1/collections/trace-d/changes?after=0&limit=1`)).json()
  assert.ok(page.head >= trace.txns.length * 0.9, `each keystroke was logged (head ${page.head})`)
})

test('(e) a read-only WebsocketProvider syncs and receives, and its edits are not stored or relayed', async () => {
  // A server of its own with tokens: a read token (read and subscribe)
  // and a write token. The provider passes its token as ?access_token=.
  const guarded = await startServer({
    SEQSYNC_SERVER_READ_TOKEN: 'reader-secret',
    SEQSYNC_SERVER_WRITE_TOKEN: 'writer-secret'
  })
  cleanups.push(() => { guarded.stop() })
  const open = (ydoc, token) => {
    const p = new WebsocketProvider(`${guarded.ws}/yws/ro`, 'room', ydoc, {
      WebSocketPolyfill: WebSocket,
      disableBc: true,
      params: { access_token: token }
    })
    cleanups.push(() => { p.destroy(); p.awareness.destroy(); ydoc.destroy() })
    return p
  }
  const writer = new Y.Doc()
  const reader = new Y.Doc()
  const pw = open(writer, 'writer-secret')
  const pr = open(reader, 'reader-secret')
  await Promise.all([synced(pw), synced(pr)])
  writer.getText('content').insert(0, 'written ')
  await waitFor(() => reader.getText('content').toString() === 'written ', 'the reader to receive the edit')
  reader.getText('content').insert(0, 'READER ')
  writer.getText('content').insert(8, 'more ')
  await waitFor(() => reader.getText('content').toString().includes('more '), 'the reader to keep receiving')
  // Give a relayed edit time to arrive, then check it never did.
  await new Promise(resolve => setTimeout(resolve, 300))
  assert.equal(writer.getText('content').toString(), 'written more ')
  const res = await fetch(`${guarded.http}/v1/collections/ro/documents/room`, {
    headers: { authorization: 'Bearer writer-secret' }
  })
  assert.equal(res.status, 200)
  const stored = new Y.Doc()
  Y.applyUpdate(stored, new Uint8Array(await res.arrayBuffer()))
  assert.equal(stored.getText('content').toString(), 'written more ', 'the reader\'s edit was not stored')
  assert.equal(pr.wsconnected, true, 'the read-only connection stays open')
})

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

// A bare WebSocket to /yws that records every awareness message it
// receives, decoded into { clientId: { clock, state } } maps.
function rawAwarenessClient (collection, docId) {
  const ws = new WebSocket(`${server.ws}/yws/${collection}/${docId}`)
  ws.binaryType = 'arraybuffer'
  const received = []
  ws.on('message', data => {
    const decoder = decoding.createDecoder(new Uint8Array(data))
    if (decoding.readVarUint(decoder) !== 1) return // not awareness
    const update = decoding.readVarUint8Array(decoder)
    const inner = decoding.createDecoder(update)
    const entries = {}
    for (let n = decoding.readVarUint(inner); n > 0; n--) {
      const id = decoding.readVarUint(inner)
      const clock = decoding.readVarUint(inner)
      entries[id] = { clock, state: JSON.parse(decoding.readVarString(inner)) }
    }
    received.push(entries)
  })
  cleanups.push(() => ws.terminate())
  return { ws, received, opened: new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) }) }
}

const sees = (p, other, pred = s => s != null) => pred(p.awareness.getStates().get(other.doc.clientID))

test('(f) a newcomer receives every current awareness state in one message, though providers re-broadcast each other', async () => {
  // A provider re-broadcasts the states it receives: with awareness kept as
  // each connection's last frame, both frames could hold B's state and a
  // newcomer would never learn A's.
  const pa = provider('aware-f', 'room', new Y.Doc())
  const pb = provider('aware-f', 'room', new Y.Doc())
  pa.awareness.setLocalStateField('user', { name: 'A' })
  pb.awareness.setLocalStateField('user', { name: 'B' })
  await Promise.all([synced(pa), synced(pb)])
  await waitFor(() => sees(pa, pb) && sees(pb, pa), 'A and B to see each other')
  pb.awareness.setLocalStateField('cursor', 7)
  await waitFor(() => sees(pa, pb, s => s?.cursor === 7), 'A to see B\'s cursor')
  await sleep(200) // A's re-broadcast of B's state reaches the server

  const newcomer = rawAwarenessClient('aware-f', 'room')
  await newcomer.opened
  await waitFor(() => newcomer.received.length > 0, 'the newcomer\'s first awareness message', 5000)
  const first = newcomer.received[0]
  assert.deepEqual(first[pa.doc.clientID]?.state, { user: { name: 'A' } }, 'A\'s state in the first message')
  assert.deepEqual(first[pb.doc.clientID]?.state, { user: { name: 'B' }, cursor: 7 }, 'B\'s current state in the first message')
  assert.equal(first[pb.doc.clientID].clock, pb.awareness.meta.get(pb.doc.clientID).clock, 'with B\'s current clock')

  // And a real provider joining later shows both at once (not after the
  // 15-second renewal).
  const pc = provider('aware-f', 'room', new Y.Doc())
  await synced(pc)
  await waitFor(() => sees(pc, pa) && sees(pc, pb, s => s?.cursor === 7), 'the newcomer provider to show A and B', 2000)
})

test('(g) the awareness states of a closed connection are removed for everyone at once', async () => {
  const pa = provider('aware-g', 'room', new Y.Doc())
  const pb = provider('aware-g', 'room', new Y.Doc())
  pa.awareness.setLocalStateField('user', { name: 'A' })
  pb.awareness.setLocalStateField('user', { name: 'B' })
  await Promise.all([synced(pa), synced(pb)])
  await waitFor(() => sees(pb, pa), 'B to see A')

  // Not cleanly: A's socket dies without a close frame or its own null
  // state (a closed laptop, a lost network).
  pa.shouldConnect = false
  pa.ws.terminate()
  const started = Date.now()
  await waitFor(() => !pb.awareness.getStates().has(pa.doc.clientID), 'A\'s state removed on B', 5000)
  console.log(`  A's state left B's screen ${Date.now() - started} ms after A's socket died (a client's own timeout: 30 s)`)

  // Cleanly, by a client that never sends its own null: a raw socket
  // announcing a state for client 4242.
  const raw = rawAwarenessClient('aware-g', 'room')
  await raw.opened
  const update = encoding.createEncoder()
  encoding.writeVarUint(update, 1) // one entry
  encoding.writeVarUint(update, 4242) // client id
  encoding.writeVarUint(update, 1) // clock
  encoding.writeVarString(update, JSON.stringify({ user: { name: 'raw' } }))
  const message = encoding.createEncoder()
  encoding.writeVarUint(message, 1) // awareness
  encoding.writeVarUint8Array(message, encoding.toUint8Array(update))
  raw.ws.send(encoding.toUint8Array(message))
  await waitFor(() => pb.awareness.getStates().get(4242)?.user?.name === 'raw', 'B to see the raw client')
  raw.ws.close()
  await waitFor(() => !pb.awareness.getStates().has(4242), 'the raw client\'s state removed on B', 5000)
  assert.equal(pb.awareness.meta.get(4242).clock, 2, 'removed with the next clock')
  assert.ok(sees(pb, pb), 'B keeps its own state')
})

test('(h) a provider syncing with a document that does not exist does not create it', async () => {
  const metric = async () => {
    const text = await (await fetch(`${server.http}/metrics`)).text()
    const line = text.split('\n').find(l => l.startsWith('seqsync_noop_pushes_total'))
    return line ? Number(line.split(' ').pop()) : 0
  }
  // Another document makes the collection exist.
  const pw = provider('noop-h', 'other', new Y.Doc())
  await synced(pw)
  pw.doc.getText('content').insert(0, 'x')
  await waitFor(async () => (await serverText('noop-h', 'other')).text === 'x', 'the other document stored')

  const before = await metric()
  const p = provider('noop-h', 'ghost', new Y.Doc())
  await synced(p)
  // The provider's empty sync step 2 was pushed and answered as a no-op.
  await waitFor(async () => (await metric()) > before, 'the empty sync step 2 to be pushed')
  for (const path of ['documents/ghost', 'documents/ghost/state-vector']) {
    const res = await fetch(`${server.http}/v1/collections/noop-h/${path}`)
    assert.equal(res.status, 404, `GET ${path} after a no-op push: ${await res.text()}`)
  }
  const page = await (await fetch(`${server.http}/v1/collections/noop-h/changes?after=0&limit=10`)).json()
  assert.deepEqual(page.changes.map(c => c.doc), ['other'], 'nothing logged for it')

  p.doc.getText('content').insert(0, 'now it exists')
  await waitFor(async () => (await serverText('noop-h', 'ghost')).text === 'now it exists', 'the first edit to create it')
})

test('(i) a restored version reaches WebsocketProviders as an ordinary edit', async () => {
  // Why: restoring Monday's version must not need any client to reload:
  // every open provider (the writer's and an observer's) receives the
  // restore like a keystroke, and the history keeps what it replaced.
  const writer = new Y.Doc()
  const observer = new Y.Doc()
  const pw = provider('history-i', 'notes', writer)
  const po = provider('history-i', 'notes', observer)
  await Promise.all([synced(pw), synced(po)])
  const text = writer.getText('content')
  text.insert(0, 'Monday: milk')
  await waitFor(async () => (await serverText('history-i', 'notes')).text === 'Monday: milk', 'Monday stored')
  const monday = (await serverText('history-i', 'notes')).cursor
  text.delete(0, 6)
  text.insert(0, 'Tuesday')
  text.insert(text.length, ', bread')
  await waitFor(async () => (await serverText('history-i', 'notes')).text === 'Tuesday: milk, bread', 'Tuesday stored')
  await waitFor(() => observer.getText('content').toString() === 'Tuesday: milk, bread', 'the observer at Tuesday')

  const then = await fetch(`${server.http}/v1/collections/history-i/documents/notes?at=${monday}&format=json`)
  assert.equal(then.status, 200)
  assert.deepEqual((await then.json()).content, { content: 'Monday: milk' })

  const res = await fetch(`${server.http}/v1/collections/history-i/documents/notes/restore`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ seq: monday })
  })
  assert.equal(res.status, 200, await res.clone().text())
  const restored = await res.json()
  assert.equal(restored.restored_from, monday)
  assert.ok(restored.seq > monday)
  await waitFor(() => observer.getText('content').toString() === 'Monday: milk', 'the observer to see the restore')
  await waitFor(() => writer.getText('content').toString() === 'Monday: milk', 'the writer to see the restore')
  // The writer types on: its edit lands after the restore.
  text.insert(text.length, ', eggs')
  await waitFor(() => observer.getText('content').toString() === 'Monday: milk, eggs', 'an edit after the restore')
  const history = await (await fetch(`${server.http}/v1/collections/history-i/documents/notes/history`)).json()
  assert.ok(history.changes.some(c => c.seq === restored.seq), 'the restore is in the history')
})
