// Tabs of one browser that hold stores of the same name relay their local
// edits to each other over a BroadcastChannel (src/tabs.ts). Node has the
// same BroadcastChannel between its threads and within one process, so
// the relay's rules are checked here with no server at all (offline):
// the browser suite (demo/test/notes.test.js) checks it in Chromium tabs.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { SeqsyncClient, memoryStore } from '../dist/index.js'

// No server: nothing here connects (no sync(), no follow()).
const URL_NOWHERE = 'http://127.0.0.1:9'
const tab = (channel, extra = {}) => new SeqsyncClient({ url: URL_NOWHERE, store: memoryStore(), tabChannel: channel, ...extra })
const until = async (predicate, what, timeoutMs = 5000) => {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

test('an edit in one tab shows in the other at once, offline, and both tabs save it (the other\'s next edits may build on it)', async () => {
  const channel = `t-${Math.random().toString(36).slice(2)}`
  const [a, b] = [tab(channel), tab(channel)]
  const [da, db] = [await a.collection('notes').doc('n'), await b.collection('notes').doc('n')]
  da.getText('t').insert(0, 'from a')
  await until(() => db.getText('t').toString() === 'from a', 'tab b to show tab a\'s edit')
  await a.collection('notes').whenSaved()
  await b.collection('notes').whenSaved()
  assert.equal(await a.collection('notes').outboxSize(), 1, 'the author saved it in its outbox')
  assert.equal(await b.collection('notes').outboxSize(), 1, 'the other tab saved it too')
  db.getText('t').insert(6, ', then b')
  await until(() => da.getText('t').toString() === 'from a, then b', 'tab a to show tab b\'s edit')
  await a.collection('notes').whenSaved()
  await b.collection('notes').whenSaved()
  assert.equal(await a.collection('notes').outboxSize(), 2, 'relayed edits are saved, each once')
  assert.equal(await b.collection('notes').outboxSize(), 2, 'and not relayed back (no echo)')
  await a.close()
  await b.close()
})

test('a tab that opens a document late gets what the open tabs hold, and other stores or collections hear nothing', async () => {
  const channel = `t-${Math.random().toString(36).slice(2)}`
  const a = tab(channel)
  const da = await a.collection('notes').doc('n')
  da.getText('t').insert(0, 'typed before b opened it')
  const other = tab(`${channel}-other`)
  const dOther = await other.collection('notes').doc('n')
  const b = tab(channel)
  const dbOtherCollection = await b.collection('elsewhere').doc('n')
  const db = await b.collection('notes').doc('n')
  await until(() => db.getText('t').toString() === 'typed before b opened it', 'the late tab to catch up from the open one')
  await new Promise(resolve => setTimeout(resolve, 50))
  assert.equal(dOther.getText('t').toString(), '', 'a store of another name hears nothing')
  assert.equal(dbOtherCollection.getText('t').toString(), '', 'another collection hears nothing')
  const off = tab(null, { store: memoryStore() })
  assert.equal((await off.collection('notes').doc('n')).getText('t').toString(), '', 'tabChannel null: no relay')
  for (const c of [a, b, other, off]) await c.close()
})
