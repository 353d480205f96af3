// The store contract (test/support/store-contract.js) for the Node stores:
// memory, SQLite on better-sqlite3, op-sqlite through its Node adapter; and
// op-sqlite's all-or-nothing commit under an injected statement failure.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { memoryStore } from '../dist/memory.js'
import { sqliteStore } from '../dist/sqlite.js'
import { opSqliteStore } from '../dist/opsqlite.js'
import { openOpSqliteOnNode } from './support/opsqlite-node.js'
import { storeContract, reopenContract, edits } from './support/store-contract.js'

const dirs = []
process.on('exit', () => { for (const d of dirs) rmSync(d, { recursive: true, force: true }) })
function tempFile () {
  const dir = mkdtempSync(join(tmpdir(), 'seqsync-store-'))
  dirs.push(dir)
  return join(dir, 'local.sqlite3')
}

const kinds = {
  memory: (options) => memoryStore(options),
  sqlite: (options) => sqliteStore(tempFile(), options),
  'op-sqlite': (options) => opSqliteStore(openOpSqliteOnNode(tempFile()), options)
}

const runner = { describe, test, assert }
for (const [kind, open] of Object.entries(kinds)) storeContract(runner, kind, open)
for (const [kind, openAt] of Object.entries({
  sqlite: (file) => sqliteStore(file),
  'op-sqlite': (file) => opSqliteStore(openOpSqliteOnNode(file))
})) reopenContract(runner, kind, openAt, tempFile)

test('store contract: op-sqlite commits all or nothing when a statement fails', async () => {
  // Why: op-sqlite's statements are asynchronous, so the store runs its own
  // BEGIN … COMMIT; a failure half-way must leave nothing of the commit,
  // and the store must go on working.
  const db = openOpSqliteOnNode(tempFile())
  const s = opSqliteStore(db)
  const { updates } = edits(4)
  await s.commit('c', { local: [{ doc: 'a', update: updates[0] }], state: { cursor: 1 } })
  let inserts = 0
  db.failOn((sql) => sql.startsWith('INSERT INTO updates') && ++inserts === 2)
  await assert.rejects(s.commit('c', {
    local: updates.slice(1).map(update => ({ doc: 'a', update })),
    state: { cursor: 9 }
  }), /injected failure/)
  db.failOn(null)
  assert.equal(await s.outboxSize('c'), 1, 'no row of the failed commit')
  assert.equal((await s.state('c')).cursor, 1, 'nor its cursor')
  const again = await s.commit('c', { local: updates.slice(1).map(update => ({ doc: 'a', update })), state: { cursor: 9 } })
  assert.equal(again.localIds.length, 3)
  assert.equal(await s.outboxSize('c'), 4)
  await s.close()
})
