// The notes app (index.html: @seqsync/client with its browser store) in
// Debian's Chromium, against the release server serving the built demo.
// What a local-first app must survive in a browser: a reload while
// offline, two tabs of one browser at once, the server killed right after
// it said "saved", and a tab closed with edits only it had. Each case
// prints what it checked.
//
//   npm run build && node --test test/notes.test.js   (from demo/, after
//   cargo build --release --example server and building clients/js)
//
// "Offline" here is the server unreachable (killed): the page is then
// served by its service worker, and the sync socket cannot connect.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { launchChromium } from './chromium.js'
import * as Y from 'yjs'
import { startServer } from './server.js'
import { rawPush } from '../../clients/js/bench/raw.js'

const here = dirname(fileURLToPath(import.meta.url))

let browser
let server
let workDir
let listen
const suiteStarted = Date.now()

before(async () => {
  assert.ok(existsSync(join(here, '..', 'dist', 'index.html')), 'the demo is built (npm run build)')
  workDir = mkdtempSync(join(tmpdir(), 'seqsync-notes-'))
  server = await startServer(join(workDir, 'data'))
  listen = server.listen
  browser = await launchChromium()
})

after(async () => {
  if (browser) await browser.close()
  if (server) await server.kill()
  if (workDir) rmSync(workDir, { recursive: true, force: true })
  console.log(`notes suite: ${((Date.now() - suiteStarted) / 1000).toFixed(1)} s`)
})

const unique = prefix => `${prefix}-${Math.random().toString(36).slice(2, 8)}`
const log = line => console.log(`  ✓ ${line}`)

async function serverDown () {
  await server.kill('SIGKILL')
  server = null
}
async function serverUp () {
  server = await startServer(join(workDir, 'data'), { listen })
}

function watch (page, name) {
  page.on('pageerror', err => console.log(`  [${name}] page error: ${err.message}`))
  page.on('console', msg => { if (msg.type() === 'error') console.log(`  [${name}] console: ${msg.text()}`) })
}

// Opens the notes app on collection/doc in `context` and waits until the
// note is open (connected unless `offline`).
async function openNote (context, collection, doc, { name = 'Alice', offline = false } = {}) {
  const page = await context.newPage()
  watch(page, name)
  await page.goto(`http://${listen}/?name=${name}#/${collection}/${doc}`)
  await ready(page, doc, offline)
  return page
}

async function ready (page, doc, offline) {
  await page.waitForFunction(doc => document.body.dataset.ready === 'true' && document.body.dataset.doc === doc, doc, { timeout: 20000 })
  const error = await page.evaluate(() => document.body.dataset.error)
  assert.equal(error, undefined, 'the page opened without an error')
  if (!offline) await page.waitForSelector('#conn[data-state="connected"]', { timeout: 20000 })
}

const text = page => page.evaluate(() => window.seqsyncNotes.text())

async function waitText (page, expected, what, timeout = 15000) {
  try {
    await page.waitForFunction(expected => window.seqsyncNotes?.text() === expected, expected, { timeout })
  } catch {
    assert.fail(`timed out waiting for ${what}; the page shows ${JSON.stringify(await text(page).catch(() => '?'))}`)
  }
}

// Waits until the page says everything is saved on this device and, when
// `server` is set, on the server with nothing pending; returns the seq.
async function waitSaved (page, { onServer }) {
  await page.waitForFunction(onServer => {
    const device = document.getElementById('device').dataset.unsaved === '0'
    if (!onServer) return device
    return device && document.getElementById('pending').dataset.pending === '0' &&
      Number(document.getElementById('server').dataset.savedThrough) > 0
  }, onServer, { timeout: 15000 })
  return Number(await page.locator('#server').getAttribute('data-saved-through'))
}

async function typeAtEnd (page, words) {
  await page.click('.cm-content')
  await page.keyboard.press('Control+End')
  await page.keyboard.type(words, { delay: 5 })
}

const storedText = async (collection, doc) => {
  const res = await fetch(`http://${listen}/v1/collections/${collection}/documents/${doc}`)
  if (res.status === 404) return null
  const ydoc = new Y.Doc()
  Y.applyUpdate(ydoc, new Uint8Array(await res.arrayBuffer()))
  return ydoc.getText('content').toString()
}

test('a note typed offline survives a reload while still offline, and converges with another browser once the server is back', async () => {
  const collection = unique('offline')
  const context = await browser.newContext()
  const page = await openNote(context, collection, 'trip')
  await page.waitForFunction(() => document.body.dataset.offlineReady === 'true', null, { timeout: 20000 })
  await typeAtEnd(page, 'Packing list:')
  const seq = await waitSaved(page, { onServer: true })
  log(`typed online; the page says "saved on the server through seq ${seq}"`)

  await serverDown()
  await page.waitForSelector('#conn:not([data-state="connected"])', { timeout: 15000 })
  await typeAtEnd(page, ' tent, stove')
  await waitSaved(page, { onServer: false })
  const pending = Number(await page.locator('#pending').getAttribute('data-pending'))
  assert.ok(pending > 0, 'offline edits are pending')
  log(`server killed; typed offline: "saved on this device", ${pending} edits pending`)

  await page.reload()
  await ready(page, 'trip', true)
  assert.equal(await text(page), 'Packing list: tent, stove')
  const pendingAfter = Number(await page.locator('#pending').getAttribute('data-pending'))
  assert.ok(pendingAfter > 0, `the reloaded page still shows the offline edits as pending (${pendingAfter})`)
  log(`reloaded while the server is still down: the page came from the service worker, the text and ${pendingAfter} pending edits from the local store`)

  await serverUp()
  await page.waitForSelector('#conn[data-state="connected"]', { timeout: 20000 })
  const after = await waitSaved(page, { onServer: true })
  assert.ok(after > seq, `saved through a later seq (${after} > ${seq})`)
  log(`server back: the page reconnected and pushed the outbox; saved on the server through seq ${after}`)

  const other = await browser.newContext()
  const otherPage = await openNote(other, collection, 'trip', { name: 'Bob' })
  await waitText(otherPage, 'Packing list: tent, stove', 'another browser to load the note')
  await typeAtEnd(otherPage, ', map')
  await waitText(page, 'Packing list: tent, stove, map', 'the first browser to receive the other\'s edit')
  assert.equal(await storedText(collection, 'trip'), 'Packing list: tent, stove, map')
  log('a second browser (its own store) loads the note, edits it, and the first sees the edit live')
  await other.close()
  await context.close()
})

test('the server SIGKILLed right after "saved on the server through seq N": restarted, a fresh browser shows the text', async () => {
  const collection = unique('kill')
  const context = await browser.newContext()
  const page = await openNote(context, collection, 'memo')
  await typeAtEnd(page, 'acked means on disk')
  const seq = await waitSaved(page, { onServer: true })
  await serverDown()
  log(`killed the server the moment the page showed seq ${seq}`)
  await serverUp()
  const fresh = await browser.newContext()
  const freshPage = await openNote(fresh, collection, 'memo', { name: 'Carol' })
  await waitText(freshPage, 'acked means on disk', 'a fresh browser to load the note')
  log('restarted: a fresh browser context (empty store) shows every character')
  await fresh.close()
  await context.close()
})

test('two tabs of one browser edit one note at once: each has its own slot, both converge, and both stores reopen intact', async () => {
  const collection = unique('tabs')
  const context = await browser.newContext()
  const one = await openNote(context, collection, 'shared')
  const two = await openNote(context, collection, 'shared', { name: 'Alice-2' })
  const slots = await Promise.all([one, two].map(p => p.evaluate(() => window.seqsyncNotes.slot)))
  assert.deepEqual(slots.sort(), [0, 1], 'the tabs hold different slots')
  log(`two tabs of one context hold slots ${slots.join(' and ')} of the origin's store`)
  await typeAtEnd(one, 'first.')
  await waitText(two, 'first.', 'the second tab to see the first tab\'s line')
  await Promise.all([typeAtEnd(one, ' one-a one-b one-c'), typeAtEnd(two, ' two-a two-b two-c')])
  await one.waitForFunction(() => { const t = window.seqsyncNotes.text(); return t.includes('one-c') && t.includes('two-c') }, null, { timeout: 15000 })
  const converged = await text(one)
  await waitText(two, converged, 'both tabs to show the same text')
  await Promise.all([one, two].map(p => waitSaved(p, { onServer: true })))
  log(`both tabs typed at once and show the same ${converged.length} characters`)
  await Promise.all([one.reload(), two.reload()])
  await Promise.all([ready(one, 'shared', false), ready(two, 'shared', false)])
  await waitText(one, converged, 'tab one to reopen with the text')
  await waitText(two, converged, 'tab two to reopen with the text')
  assert.equal(await storedText(collection, 'shared'), converged)
  log('both tabs reloaded: each store opened intact with the whole text, the same as the server\'s')
  await context.close()
})

test('a tab that saved edits offline and closed: the next tab to open takes them over and pushes them', async () => {
  const collection = unique('adopt')
  const context = await browser.newContext()
  const one = await openNote(context, collection, 'draft')
  const two = await openNote(context, collection, 'draft', { name: 'Alice-2' })
  const twoSlot = await two.evaluate(() => window.seqsyncNotes.slot)
  await typeAtEnd(one, 'base')
  await waitText(two, 'base', 'the second tab to see the text')
  await waitSaved(one, { onServer: true })
  await serverDown()
  await two.waitForSelector('#conn:not([data-state="connected"])', { timeout: 15000 })
  await typeAtEnd(two, ' only-in-tab-two')
  await waitText(two, 'base only-in-tab-two', 'the second tab to show its own typing')
  await waitSaved(two, { onServer: false })
  await two.close()
  await one.close()
  log(`the server down, the tab in slot ${twoSlot} saved an edit on this device only, then both tabs closed`)
  await serverUp()
  // A closed tab lets go of its slot's lock as its document is torn down,
  // a moment after page.close() returns: wait until the origin holds no
  // store lock, as it would by the time a person opens the app again.
  const probe = await context.newPage()
  await probe.goto(`http://${listen}/healthz`)
  await probe.waitForFunction(async () => {
    const { held } = await navigator.locks.query()
    return !held.some(lock => lock.name.startsWith('seqsync-store:'))
  }, null, { timeout: 10000, polling: 50 })
  await probe.close()
  const again = await openNote(context, collection, 'draft')
  const info = await again.evaluate(() => ({ slot: window.seqsyncNotes.slot, adopted: window.seqsyncNotes.adopted }))
  assert.equal(info.slot, 0, 'a lone tab takes slot 0 again')
  assert.ok(info.adopted > 0, 'it took over the closed tab\'s outbox')
  await waitText(again, 'base only-in-tab-two', 'the reopened tab to show the other tab\'s edit')
  await waitSaved(again, { onServer: true })
  assert.equal(await storedText(collection, 'draft'), 'base only-in-tab-two')
  log(`one tab reopened (slot 0): it took over ${info.adopted} outbox rows from slot ${twoSlot}, shows them, and the server has them`)
  await context.close()
})

test('two tabs of one browser show each other\'s edits at once while the server is down, and a tab reloaded beside them catches up', async () => {
  const collection = unique('relay')
  const context = await browser.newContext()
  const one = await openNote(context, collection, 'plan')
  const two = await openNote(context, collection, 'plan', { name: 'Alice-2' })
  await serverDown()
  await Promise.all([one, two].map(p => p.waitForSelector('#conn:not([data-state="connected"])', { timeout: 15000 })))
  const started = Date.now()
  await typeAtEnd(one, 'offline from one')
  await waitText(two, 'offline from one', 'tab two to show tab one\'s offline edit', 5000)
  log(`server down: tab two showed tab one's edit ${Date.now() - started} ms after the typing began`)
  await typeAtEnd(two, ', and two')
  await waitText(one, 'offline from one, and two', 'tab one to show tab two\'s offline edit', 5000)
  // What a tab had not yet saved on this device when it went away is gone
  // (as with any browser storage); the page says "saved on this device"
  // once it is not.
  await waitSaved(two, { onServer: false })
  const slotBefore = await two.evaluate(() => window.seqsyncNotes.slot)
  await two.reload()
  await ready(two, 'plan', true)
  assert.equal(await two.evaluate(() => window.seqsyncNotes.slot), slotBefore, 'a reloaded tab gets its own slot back')
  await waitText(two, 'offline from one, and two', 'the reloaded tab to show both tabs\' edits', 5000)
  log(`tab two reloaded (still offline) into its own slot ${slotBefore}: its edit from its store, tab one's from tab one`)
  await serverUp()
  await Promise.all([one, two].map(p => p.waitForSelector('#conn[data-state="connected"]', { timeout: 20000 })))
  await one.waitForFunction(() => document.getElementById('pending').dataset.pending === '0', null, { timeout: 15000 })
  await two.waitForFunction(() => document.getElementById('pending').dataset.pending === '0', null, { timeout: 15000 })
  const deadline = Date.now() + 10000
  while (await storedText(collection, 'plan') !== 'offline from one, and two') {
    if (Date.now() > deadline) assert.fail(`the server has ${JSON.stringify(await storedText(collection, 'plan'))}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  log('server back: each tab pushed its own edits, and the server holds the text both show')
  await context.close()
})

test('a browser that was away while the server compacted the note catches up when it comes back', async () => {
  const collection = unique('away')
  const away = await browser.newContext()
  const first = await openNote(away, collection, 'log')
  await typeAtEnd(first, 'before.')
  await waitSaved(first, { onServer: true })
  await first.close() // the context (and its store) stays; the app is closed
  const other = await browser.newContext()
  const writer = await openNote(other, collection, 'log', { name: 'Bob' })
  await waitText(writer, 'before.', 'the other browser to load the note')
  for (const word of [' one', ' two', ' three', ' four']) {
    await typeAtEnd(writer, word)
    await waitSaved(writer, { onServer: true })
  }
  const res = await fetch(`http://${listen}/v1/collections/${collection}/compact`, { method: 'POST' })
  assert.equal(res.status, 200)
  const summary = await res.json()
  assert.ok(summary.deltas_removed > 0, `compaction folded the changes the away browser lacks (${JSON.stringify(summary)})`)
  log(`while the first browser was away, the other typed and the server compacted: ${summary.deltas_removed} deltas folded`)
  const back = await openNote(away, collection, 'log')
  await waitText(back, 'before. one two three four', 'the returning browser to catch up')
  await typeAtEnd(back, ' five')
  await waitText(writer, 'before. one two three four five', 'the other browser to see the returning one\'s edit')
  log('the returning browser opened its store (which had "before."), caught up past the compacted changes, and its next edit reached the other')
  await other.close()
  await away.close()
})

test('a cold start of a 1,000-note collection in the app: every note listed and readable, with the time and the page\'s longest stall reported', async () => {
  // Why: a first visit on a new device loads the whole collection into the
  // browser store; it must arrive whole, and the page must stay usable
  // (the store's work runs in its worker). Sizes and ratios are in
  // bench/browser.js; here the numbers are reported, not asserted.
  const collection = unique('cold')
  const N = 1000
  const updates = []
  for (let i = 0; i < N; i++) {
    const ydoc = new Y.Doc()
    ydoc.on('update', update => updates.push({ doc: `note-${i}`, update }))
    const text = ydoc.getText('content')
    for (const word of [`note ${i}:`, ' a', ' few', ' words', ' typed', ' one', ' by', ' one']) text.insert(text.length, word)
  }
  const seeded = await rawPush(`ws://${listen}`, collection, updates)
  assert.equal(seeded.logged, updates.length)
  const context = await browser.newContext()
  const page = await context.newPage()
  watch(page, 'cold')
  // A 0 ms timer loop from the page's first script on: the longest gap
  // between two of its turns is how long the page could not respond.
  await page.addInitScript(() => {
    window.__stall = { longest: 0, last: performance.now() }
    const tick = () => {
      const now = performance.now()
      window.__stall.longest = Math.max(window.__stall.longest, now - window.__stall.last)
      window.__stall.last = now
      setTimeout(tick, 0)
    }
    setTimeout(tick, 0)
  })
  const started = Date.now()
  await page.goto(`http://${listen}/?name=Cold#/${collection}/note-7`)
  await page.waitForFunction(n => document.getElementById('note-count')?.textContent === String(n), N, { timeout: 120000 })
  const elapsedMs = Date.now() - started
  await waitText(page, 'note 7: a few words typed one by one', 'the open note to show its text')
  const stall = await page.evaluate(() => window.__stall.longest)
  log(`${N} notes (${updates.length} changes) listed ${elapsedMs} ms after navigation; the page's longest stall meanwhile: ${stall.toFixed(0)} ms`)
  await page.goto(`http://${listen}/?name=Cold#/${collection}/note-999`)
  await waitText(page, 'note 999: a few words typed one by one', 'a note opened after a reload, from the store')
  log('reloaded: another note opens from the browser store')
  await context.close()
})
