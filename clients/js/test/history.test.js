// Histories replaced under the client: an older copy of the server's data
// directory put back (same epoch, seqs reused: history_replaced), and
// `seqsync restore` of an older backup (a new epoch: foreign_epoch). In
// both the client recovers by state vectors and loses nothing local.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { cpSync, rmSync, existsSync } from 'node:fs'
import { join } from 'node:path'
import { execFileSync } from 'node:child_process'
import { startServer, tempDir, CLI_BIN } from './support/server.js'
import { client, text, type, serverText } from './support/clients.js'
import { memoryStore } from '../dist/index.js'

/** A client whose URL stays valid across restarts on one port. */
function at (listen, options) {
  return client({ http: `http://${listen}` }, options)
}

test('history replaced without a new epoch: reset history_replaced, nothing local lost', async () => {
  const dir = tempDir()
  let server = await startServer({ dir })
  const listen = server.listen
  const writer = at(listen)
  const victim = at(listen, { store: memoryStore() })
  const cw = writer.collection('hist')
  const cv = victim.collection('hist')
  const dw = await cw.doc('d')
  type(dw, 'one;')
  await cw.sync()
  await cv.sync()
  await server.stop()
  cpSync(server.dataDir, join(dir, 'copy'), { recursive: true })
  server = await startServer({ dir, listen })
  // Commits the copy will not have; the victim pulls them (stored changes,
  // so its checksum is the server's).
  type(dw, 'lost-on-server;')
  type(await cw.doc('e'), 'only after the copy')
  await cw.sync()
  const pulled = await cv.sync()
  assert.equal(pulled.kind, 'pulled')
  const cursor = cv.syncState.cursor
  assert.ok(cv.syncState.checksum !== '', 'the victim holds the checksum of its cursor')
  // An offline edit of the victim's too.
  type(await cv.doc('d'), 'victim offline;')
  await server.stop()
  rmSync(server.dataDir, { recursive: true, force: true })
  cpSync(join(dir, 'copy'), server.dataDir, { recursive: true })
  server = await startServer({ dir, listen })
  // Another client reuses the seqs with different changes.
  const other = at(listen)
  const co = other.collection('hist')
  await co.sync()
  for (let i = 0; i < 4; i++) {
    type(await co.doc('d'), `other${i};`)
    await co.sync()
  }
  assert.ok((await co.sync()).head >= cursor, 'the seqs were reused')
  const resets = []
  cv.events.on('reset', r => resets.push(r.reason))
  const report = await cv.sync()
  assert.equal(report.kind, 'reset')
  assert.equal(report.reason, 'history_replaced')
  assert.deepEqual(resets, ['history_replaced'])
  assert.ok(report.pushed >= 2, 'd and e pushed back')
  const dv = await cv.doc('d')
  for (const part of ['one;', 'lost-on-server;', 'victim offline;', 'other0;', 'other3;']) {
    assert.ok(text(dv).includes(part), `${part} in ${text(dv)}`)
  }
  assert.equal(await serverText(server, 'hist', 'd'), text(dv))
  assert.equal(await serverText(server, 'hist', 'e'), 'only after the copy')
  await co.sync()
  assert.equal(text(await co.doc('d')), text(dv))
  assert.equal((await cv.sync()).kind, 'noop')
  for (const c of [writer, victim, other]) await c.close()
  await server.stop({ remove: true })
})

test('seqsync restore of an older backup under a new epoch: reset, nothing local lost', async (t) => {
  if (!existsSync(CLI_BIN)) {
    t.skip(`the seqsync CLI is missing at ${CLI_BIN} (cargo build -p seqsync-cli, or set CLIENT_JS_CLI_BIN)`)
    return
  }
  const dir = tempDir()
  let server = await startServer({ dir })
  const listen = server.listen
  const store = `sqlite:${server.dataDir}`
  const writer = at(listen)
  const victim = at(listen)
  const cw = writer.collection('restore')
  const cv = victim.collection('restore')
  type(await cw.doc('d'), 'backed up;')
  await cw.sync()
  await cv.sync()
  const oldEpoch = cv.syncState.epoch
  await server.stop()
  const backup = join(dir, 'backup')
  execFileSync(CLI_BIN, ['backup', '--store', store, '--out', backup], { stdio: 'pipe' })
  server = await startServer({ dir, listen })
  type(await cw.doc('d'), 'after the backup;')
  type(await cw.doc('new'), 'new doc')
  await cw.sync()
  await cv.sync()
  type(await cv.doc('d'), 'victim offline;')
  await server.stop()
  execFileSync(CLI_BIN, ['restore', '--backup', backup, '--store', store, '--replace'], { stdio: 'pipe' })
  server = await startServer({ dir, listen })
  const report = await cv.sync()
  assert.equal(report.kind, 'reset')
  assert.equal(report.reason, 'foreign_epoch')
  assert.notEqual(cv.syncState.epoch, oldEpoch)
  const dv = await cv.doc('d')
  for (const part of ['backed up;', 'after the backup;', 'victim offline;']) assert.ok(text(dv).includes(part), part)
  assert.equal(await serverText(server, 'restore', 'd'), text(dv))
  assert.equal(await serverText(server, 'restore', 'new'), 'new doc')
  // The writer resets too and converges.
  const rw = await cw.sync()
  assert.equal(rw.kind, 'reset')
  assert.equal(text(await cw.doc('d')), text(dv))
  for (const c of [writer, victim]) await c.close()
  await server.stop({ remove: true })
})
