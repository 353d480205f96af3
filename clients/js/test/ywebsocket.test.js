// A y-websocket WebsocketProvider on /yws/{c}/{d} and a seqsync client on
// the sync socket edit one document and converge.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { startServer, waitFor, sleep } from './support/server.js'
import { client, text, type, serverText } from './support/clients.js'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test('a WebsocketProvider and a sync-socket client converge on one document', async () => {
  const c = client(server)
  const col = c.collection('yws')
  const mine = await col.doc('shared')
  type(mine, 'from the client;')
  col.follow()
  await col.whenSynced()

  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(`${server.ws}/yws/yws`, 'shared', ydoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  try {
    await new Promise(resolve => provider.synced ? resolve() : provider.once('sync', ok => ok && resolve()))
    await waitFor(() => text(ydoc) === 'from the client;', 'the provider gets the client\'s text')
    // Both edit, interleaved.
    for (let i = 0; i < 20; i++) {
      type(ydoc, 'p')
      type(mine, 'c')
      if (i % 5 === 0) await sleep(5)
    }
    ydoc.getText('t').delete(0, 5) // "from " removed by the provider
    await waitFor(() => text(ydoc) === text(mine) && text(mine).length === 16 - 5 + 40, 'both converge', 20000)
    await col.stop()
    assert.equal(await serverText(server, 'yws', 'shared'), text(mine))
    assert.ok(text(mine).startsWith('the client;'))
  } finally {
    provider.destroy()
    provider.awareness.destroy()
    ydoc.destroy()
    await c.close()
  }
})
