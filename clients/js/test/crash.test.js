// Crashes: the client process SIGKILLed mid-sync and reopened (SQLite
// store: no edit it reported saved is lost, nothing is logged twice), and
// the server SIGKILLed mid-push and restarted on the same data directory
// and port (a following client reconnects and converges).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as Y from 'yjs'
import { startServer, tempDir, waitFor, sleep } from './support/server.js'
import { client, text, type, serverText, serverLog } from './support/clients.js'
import { sqliteStore } from '../dist/sqlite.js'

const here = dirname(fileURLToPath(import.meta.url))
const DOCS = 5

test('the client process SIGKILLed mid-sync: every edit it reported saved survives, none is logged twice', async () => {
  const server = await startServer()
  const dir = tempDir()
  const path = join(dir, 'client.sqlite3')
  const saved = [0, 0]
  for (let round = 0; round < 2; round++) {
    const child = spawn(process.execPath, [join(here, 'support', 'child-writer.js'), server.http, path, 'crash', String(DOCS), String(round)], { stdio: ['ignore', 'pipe', 'inherit'] })
    const exited = new Promise(resolve => child.once('exit', (code, signal) => resolve(signal ?? code)))
    const lines = createInterface({ input: child.stdout })
    lines.on('line', line => {
      const m = line.match(/^saved (\d+)$/)
      if (m) saved[round] = Math.max(saved[round], Number(m[1]))
    })
    // Let it push for a while (several hundred edits), then kill it.
    await waitFor(() => saved[round] >= 400 + round * 137, 'the child saves edits', 30000)
    child.kill('SIGKILL')
    assert.equal(await exited, 'SIGKILL')
    // It was mid-sync: the server has some of its edits already.
    assert.ok((await serverLog(server, 'crash')).changes.length > 0, 'the child had pushed before it was killed')
  }
  // Reopen the store in this process.
  const store = sqliteStore(path)
  const c = client(server, { store })
  const col = c.collection('crash')
  const local = []
  for (let i = 0; i < DOCS; i++) local.push(text(await col.doc(`k${i}`)))
  const tokens = local.join('').match(/<\d+:\d+>/g)
  const counts = new Map()
  for (const t of tokens) counts.set(t, (counts.get(t) ?? 0) + 1)
  for (const round of [0, 1]) {
    for (let n = 1; n <= saved[round]; n++) assert.equal(counts.get(`<${round}:${n}>`), 1, `edit ${round}:${n} (reported saved) is there once`)
  }
  for (const [t, k] of counts) assert.equal(k, 1, `${t} once`)
  const report = await col.sync()
  assert.equal(report.outboxLeft, 0)
  for (let i = 0; i < DOCS; i++) assert.equal(await serverText(server, 'crash', `k${i}`), local[i])
  // The server's log: no change logged twice, and none that adds nothing.
  const log = await serverLog(server, 'crash')
  const payloads = new Set(log.changes.map(ch => ch.update))
  assert.equal(payloads.size, log.changes.length, 'no payload logged twice')
  const replay = new Map()
  for (const ch of log.changes) {
    const doc = replay.get(ch.doc) ?? new Y.Doc()
    replay.set(ch.doc, doc)
    const before = Y.encodeStateVector(doc)
    let changed = false
    const on = () => { changed = true }
    doc.on('update', on)
    Y.applyUpdate(doc, Buffer.from(ch.update, 'base64'))
    doc.off('update', on)
    assert.ok(changed || before.length === 0, `change ${ch.seq} adds something`)
  }
  await c.close()
  await server.stop()
})

test('the server SIGKILLed mid-push and restarted on the same directory and port: clients reconnect and converge', async () => {
  const dir = tempDir()
  let server = await startServer({ dir })
  const listen = server.listen
  const a = client({ http: `http://${listen}` })
  const b = client({ http: `http://${listen}` })
  const ca = a.collection('srvkill')
  const cb = b.collection('srvkill')
  for (const col of [ca, cb]) col.events.on('error', () => {})
  const da = await ca.doc('d')
  const db = await cb.doc('d')
  ca.follow()
  cb.follow()
  await ca.whenSynced()
  let typing = true
  let typed = 0
  const typer = (async () => {
    while (typing) {
      type(da, `[${++typed}]`)
      if (typed % 3 === 0) type(db, 'b')
      await sleep(1)
    }
  })()
  await waitFor(() => ca.status('d').savedThrough > 50, 'pushes are flowing', 20000)
  await server.kill()
  await sleep(300)
  server = await startServer({ dir, listen })
  await waitFor(() => ca.connectionState === 'connected' && cb.connectionState === 'connected', 'both reconnect', 20000)
  await sleep(200)
  typing = false
  await typer
  await ca.stop()
  await cb.stop()
  const serverSide = await serverText(server, 'srvkill', 'd')
  // B catches up with a last sync (its session ended at its own goodbye).
  await cb.sync()
  assert.equal(text(db), text(da))
  assert.equal(await serverText(server, 'srvkill', 'd'), text(da))
  assert.ok(serverSide.length > 0)
  for (let n = 1; n <= typed; n++) assert.ok(text(da).includes(`[${n}]`), `edit ${n}`)
  await a.close()
  await b.close()
  await server.stop({ remove: true })
})
