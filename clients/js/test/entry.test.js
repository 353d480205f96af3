// The package's entry points: the core loads no native module; the SQLite
// store is its own entry point. The peer id is generated once per store.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { SeqsyncClient, memoryStore } from '@seqsync/client'

const probe = `
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const loaded = () => Object.keys(require.cache).some(k => k.includes('better-sqlite3'))
await import('@seqsync/client')
const core = loaded()
await import('@seqsync/client/sqlite')
console.log(JSON.stringify({ core, sqlite: loaded() }))
`

test('@seqsync/client loads no native module; @seqsync/client/sqlite does', () => {
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', probe], { cwd: new URL('..', import.meta.url), encoding: 'utf8' })
  assert.deepEqual(JSON.parse(out), { core: false, sqlite: true })
})

test('a peer id is generated once and kept in the store', async () => {
  const store = memoryStore()
  const a = new SeqsyncClient({ url: 'http://127.0.0.1:1', store })
  const id = await a.peer()
  assert.match(id, /^js-[0-9a-f]{16}$/)
  assert.equal(await store.getKv('', 'peer'), id)
  const b = new SeqsyncClient({ url: 'http://127.0.0.1:1', store })
  assert.equal(await b.peer(), id)
  const c = new SeqsyncClient({ url: 'http://127.0.0.1:1', store, peer: 'given' })
  assert.equal(await c.peer(), 'given')
})

test('a missing WebSocket is a clear error on Node 20', async () => {
  if (globalThis.WebSocket !== undefined) return
  const c = new SeqsyncClient({ url: 'http://127.0.0.1:1', store: memoryStore() })
  await assert.rejects(c.collection('x').sync(), /no WebSocket/)
})
