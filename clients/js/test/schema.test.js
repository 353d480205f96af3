// Schema versions: the real server refuses a client at a newer schema
// (schema_too_new → SchemaError); a server at a newer schema than the app
// (welcome, a change, or schema_too_old) raises UpgradeRequiredError. The
// example server has no migrations, so it is at schema version 1 and has no
// configuration for another: the "server is newer" cases run against a
// scripted sync socket (a `ws` server speaking the protocol). In every case
// nothing local is touched.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { WebSocketServer } from 'ws'
import { startServer } from './support/server.js'
import { client, type } from './support/clients.js'
import { memoryStore, SchemaError, UpgradeRequiredError, FrameError } from '../dist/index.js'
import { encodeFrame, decodeFrame } from '../dist/protocol.js'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

async function withLocalEdits (store, collection) {
  const c = client(server, { store })
  const col = c.collection(collection)
  type(await col.doc('d'), 'local edit')
  await col.whenSaved()
  await store.commit(collection, { state: { cursor: 0 } })
  await c.close()
}

async function snapshot (store, collection) {
  return {
    state: await store.state(collection),
    outbox: (await store.outbox(collection, 0, 100)).map(e => e.id),
    docs: await store.documents(collection)
  }
}

test('a client at a newer schema than the real server: SchemaError schema_too_new, nothing touched', async () => {
  const store = memoryStore()
  await withLocalEdits(store, 'schema')
  const before = await snapshot(store, 'schema')
  const c = client(server, { store })
  const col = c.collection('schema', { schemaVersion: 2 })
  await assert.rejects(col.sync(), (err) => {
    assert.ok(err instanceof SchemaError)
    assert.ok(!(err instanceof UpgradeRequiredError))
    assert.equal(err.code, 'schema_too_new')
    assert.equal(err.clientVersion, 2)
    return true
  })
  assert.deepEqual(await snapshot(store, 'schema'), before)
  // At the server's version it syncs.
  const c1 = client(server, { store })
  assert.equal((await c1.collection('schema', { schemaVersion: 1 }).sync()).kind, 'pushed')
  await c1.close()
})

test('follow() with a schema mismatch stops and emits the error', async () => {
  const c = client(server)
  const col = c.collection('schema-follow', { schemaVersion: 5 })
  const error = new Promise(resolve => col.events.once('error', resolve))
  col.follow()
  const err = await error
  assert.ok(err instanceof SchemaError)
  await new Promise(resolve => setTimeout(resolve, 50))
  assert.equal(col.isFollowing, false)
  await c.close()
})

/** A scripted sync socket: `script(ws, frame)` answers each client frame. */
async function scripted (script) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise(resolve => wss.once('listening', resolve))
  const received = []
  wss.on('connection', (ws) => {
    ws.on('message', (data) => {
      const frame = decodeFrame(new Uint8Array(data))
      received.push(frame)
      script(ws, frame)
    })
  })
  return {
    url: `http://127.0.0.1:${wss.address().port}`,
    received,
    close: () => new Promise(resolve => wss.close(resolve))
  }
}

const send = (ws, frame) => ws.send(encodeFrame(frame))
const EPOCH = 'ab'.repeat(16)

for (const [name, answer, code, strict = true] of [
  ['welcome at a newer schema', (ws) => send(ws, { type: 'welcome', epoch: EPOCH, head: 3, schemaVersion: 3, maxPushesInFlight: 8 }), 'upgrade_required'],
  ['error schema_too_old', (ws) => { send(ws, { type: 'error', code: 'schema_too_old', message: 'client 2 is older than 3' }); ws.close(1008) }, 'schema_too_old'],
  ['a change at a newer schema', (ws) => {
    send(ws, { type: 'welcome', epoch: EPOCH, head: 1, schemaVersion: 2, maxPushesInFlight: 8 })
    send(ws, { type: 'changes', through: 1, checksum: '1'.repeat(16), changes: [{ seq: 1, doc: 'd', kind: 'update', schemaVersion: 3, origin: 'x', payload: new Uint8Array([0, 0]) }] })
  }, 'upgrade_required', false]
]) {
  test(`UpgradeRequiredError for ${name}; nothing local touched, nothing pushed`, async () => {
    const store = memoryStore()
    await withLocalEdits(store, 'up')
    const before = await snapshot(store, 'up')
    const mock = await scripted((ws, frame) => { if (frame.type === 'hello') answer(ws) })
    const c = client({ http: mock.url }, { store })
    const col = c.collection('up', { schemaVersion: 2 })
    await assert.rejects(col.sync(), (err) => {
      assert.ok(err instanceof UpgradeRequiredError, String(err))
      assert.equal(err.code, code)
      assert.equal(err.clientVersion, 2)
      return true
    })
    const now = await snapshot(store, 'up')
    if (strict) {
      assert.deepEqual(now, before)
      assert.deepEqual(mock.received.map(f => f.type), ['hello'])
    } else {
      // The welcome was fine (its epoch is kept, the outbox may be pushed),
      // but nothing of the newer change was stored and the cursor did not
      // move past it.
      assert.equal(now.state.cursor, 0)
      assert.deepEqual(now.docs.map(d => d.doc), ['d'])
      assert.equal((await store.loadDocument('up', 'd')).updates.length, 1)
    }
    assert.equal(mock.received[0].schemaVersion, 2)
    await c.close()
    await mock.close()
  })
}

test('a malformed frame from the server ends the sync with a FrameError', async () => {
  const mock = await scripted((ws, frame) => {
    if (frame.type === 'hello') ws.send(new Uint8Array([0x40, 0x05, 0x61]))
  })
  const c = client({ http: mock.url })
  await assert.rejects(c.collection('bad').sync(), (err) => {
    assert.ok(err instanceof FrameError)
    assert.equal(err.code, 'invalid_frame')
    return true
  })
  await c.close()
  await mock.close()
})
