// Presence over the sync socket (docs/PROTOCOL.md, "Presence"): the same
// rooms as /yws, so @seqsync/client users and WebsocketProvider users of
// one document see each other's cursors, and someone who leaves (or whose
// socket dies) disappears for everyone at once.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { startServer, waitFor } from './support/server.js'
import { client } from './support/clients.js'
import { encodeFrame, decodeFrame } from '../dist/protocol.js'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

const names = (presence) => [...presence.getStates().values()].map(s => s.user?.name).filter(n => n !== undefined).sort()

test('a sync-socket client and a WebsocketProvider see each other, and whoever leaves is gone at once', async () => {
  // Why: an app moving to @seqsync/client has both kinds of client open at
  // once; people on either must see each other's cursors.
  const c = client(server)
  const col = c.collection('presence-mixed')
  const presence = await col.presence('doc')
  presence.setLocalStateField('user', { name: 'ann' })
  col.follow()

  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(`${server.ws}/yws/presence-mixed`, 'doc', ydoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  provider.awareness.setLocalStateField('user', { name: 'bob' })
  const providerNames = () => [...provider.awareness.getStates().values()].map(s => s.user?.name).filter(n => n !== undefined).sort()
  try {
    await waitFor(() => names(presence).join() === 'ann,bob', 'the client sees bob')
    await waitFor(() => providerNames().join() === 'ann,bob', 'the provider sees ann')
    assert.equal(presence.getStates().get(ydoc.clientID)?.user?.name, 'bob', 'keyed by the provider\'s Yjs client id')

    // A change of state is relayed both ways.
    const changes = []
    presence.on('change', (change, origin) => changes.push({ change, origin }))
    provider.awareness.setLocalStateField('cursor', { anchor: 3 })
    await waitFor(() => presence.getStates().get(ydoc.clientID)?.cursor?.anchor === 3, 'the cursor arrives')
    assert.ok(changes.some(({ change, origin }) => change.updated.includes(ydoc.clientID) && origin === 'server'))

    // Leaving removes the client's state for the provider at once (not
    // after y-protocols' 30 s timeout).
    presence.destroy()
    await waitFor(() => providerNames().join() === 'bob', 'ann is gone for the provider', 5000)

    // And a provider that disconnects is gone for a client that is there.
    const again = await col.presence('doc')
    assert.notEqual(again, presence, 'a destroyed presence is not handed out again')
    again.setLocalStateField('user', { name: 'ann' })
    await waitFor(() => names(again).join() === 'ann,bob', 'the new presence sees bob (the room\'s snapshot)')
    provider.disconnect()
    await waitFor(() => names(again).join() === 'ann', 'bob is gone for the client', 5000)
  } finally {
    provider.destroy()
    provider.awareness.destroy()
    ydoc.destroy()
    await c.close()
  }
})

test('a newcomer gets every current state, a closed socket takes its states with it, a reconnect brings them back', async () => {
  // Why: presence must tell the truth about who is there, across
  // reconnects, without anyone waiting 30 s for a timeout.
  const a = client(server)
  const b = client(server)
  try {
    const colA = a.collection('presence-two')
    const pa = await colA.presence('doc')
    pa.setLocalStateField('user', { name: 'ann' })
    colA.follow()
    await colA.whenSynced()

    const colB = b.collection('presence-two')
    const pb = await colB.presence('doc')
    pb.setLocalStateField('user', { name: 'bea' })
    colB.follow()
    await waitFor(() => names(pb).join() === 'ann,bea', 'the newcomer sees ann')
    await waitFor(() => names(pa).join() === 'ann,bea', 'ann sees bea')

    // Ann's socket closes: bea sees her go; ann's own view keeps only her.
    await colA.stop()
    await waitFor(() => names(pb).join() === 'bea', 'ann is gone for bea', 5000)
    assert.equal(names(pa).join(), 'ann', 'remote states are dropped when the socket closes')

    // Ann comes back: her state is sent again, and she sees bea again.
    colA.follow()
    await waitFor(() => names(pb).join() === 'ann,bea', 'ann is back for bea')
    await waitFor(() => names(pa).join() === 'ann,bea', 'ann sees bea again')
    await colA.stop()
    await colB.stop()
  } finally {
    await a.close()
    await b.close()
  }
})

test('presence frames the server refuses close the socket with a typed error', async () => {
  // Why: a broken or hostile client must get a clear refusal, and the
  // room must not keep what it sent.
  const frames = []
  const ws = new WebSocket(`${server.ws}/v1/collections/presence-bad/sync`)
  ws.binaryType = 'arraybuffer'
  ws.on('message', (data) => frames.push(decodeFrame(new Uint8Array(data))))
  const closed = new Promise(resolve => ws.on('close', (code) => resolve(code)))
  await new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject) })
  ws.send(encodeFrame({ type: 'hello', peer: '', after: 0, epoch: '', checksum: '', schemaVersion: 0, docs: [] }))
  await waitFor(() => frames.some(f => f.type === 'welcome'), 'welcome')
  // A count of clients the bytes cannot hold.
  ws.send(encodeFrame({ type: 'awareness', doc: 'doc', update: new Uint8Array([0xff, 0xff, 0x03, 1]) }))
  assert.equal(await closed, 1008)
  const error = frames.find(f => f.type === 'error')
  assert.equal(error?.code, 'invalid_frame')
  assert.match(error.message, /awareness/)
})
