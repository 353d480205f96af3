// The demo in a real browser: Debian's Chromium driven by playwright-core,
// against the release server binary serving the built demo (dist/). Each
// case types with the keyboard like a person and checks what the pages
// show; each prints what it checked.
//
//   npm run build && npm test            (from demo/, after
//   cargo build --release --example server)
//   npm run screenshot                   refreshes docs/demo-two-windows.png
//
// CHROMIUM_BIN overrides /usr/bin/chromium; DEMO_SERVER_BIN the server.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { launchChromium } from './chromium.js'
import * as Y from 'yjs'
import { startServer } from './server.js'

const here = dirname(fileURLToPath(import.meta.url))
const VIEWPORT = { width: 1180, height: 720 }
const SHOT_VIEWPORT = { width: 1040, height: 640 }

let browser
let server
let workDir
const contexts = []
const foreignRequests = [] // anything a page asked of another origin
const suiteStarted = Date.now()

before(async () => {
  assert.ok(existsSync(join(here, '..', 'dist', 'index.html')), 'the demo is built (npm run build)')
  workDir = mkdtempSync(join(tmpdir(), 'seqsync-demo-'))
  server = await startServer(join(workDir, 'data'))
  browser = await launchChromium()
})

after(async () => {
  for (const context of contexts) await context.close().catch(() => {})
  if (browser) await browser.close()
  if (server) await server.kill()
  if (workDir) rmSync(workDir, { recursive: true, force: true })
  console.log(`browser suite: ${((Date.now() - suiteStarted) / 1000).toFixed(1)} s`)
})

const unique = prefix => `${prefix}-${Math.random().toString(36).slice(2, 8)}`
const log = line => console.log(`  ✓ ${line}`)
const COLORS = { Alice: '#e8590c', Bob: '#1971c2', Carol: '#2f9e44', Dave: '#9c36b5' }

// A window of its own (a fresh browser context: no shared storage) with
// the demo open on collection/doc, connected and caught up.
async function open (name, collection, doc, viewport = VIEWPORT) {
  const context = await browser.newContext({ viewport })
  contexts.push(context)
  const page = await context.newPage()
  page.on('pageerror', err => console.log(`  [${name}] page error: ${err.message}`))
  page.on('request', request => {
    const url = request.url()
    if (!url.startsWith(server.http + '/') && !url.startsWith('data:')) foreignRequests.push(url)
  })
  page.on('websocket', socket => {
    if (!socket.url().startsWith(server.http.replace('http:', 'ws:') + '/')) foreignRequests.push(socket.url())
  })
  const color = encodeURIComponent(COLORS[name] || '#555')
  await page.goto(`${server.http}/editor.html?name=${name}&color=${color}#/${collection}/${doc}`)
  await page.waitForSelector('#conn[data-state="connected"]')
  await page.waitForSelector('#saved[data-up-to-date="true"]')
  return { context, page, name }
}

// The document's text as the page's Yjs document holds it and as its
// editor shows it (they must agree).
async function shown (page) {
  const [text, editor] = await page.evaluate(() => [
    window.seqsync.text(),
    window.seqsync.view.state.doc.toString()
  ])
  assert.equal(editor, text, 'the editor shows the Yjs text')
  return text
}

async function waitText (page, predicate, what, timeout = 10000) {
  const deadline = Date.now() + timeout
  for (;;) {
    const text = await shown(page)
    if (typeof predicate === 'string' ? text === predicate : predicate(text)) return text
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; the page shows ${JSON.stringify(text)}`)
    await page.waitForTimeout(25)
  }
}

// Waits, in one evaluation in the page, until the page's text satisfies
// `tail` (ends with it) and the page says it is saved; returns that text
// and the seq the page showed. One evaluation: the text and the claim are
// read together.
async function waitSaved (page, tail, timeout = 10000) {
  const handle = await page.waitForFunction(tail => {
    const el = document.getElementById('saved')
    const text = window.seqsync.text()
    if (el.dataset.state !== 'saved' || !text.endsWith(tail)) return null
    return { text, seq: Number(el.dataset.seq), label: el.innerText.replace(/\n+/g, ' · ') }
  }, tail, { timeout, polling: 'raf' })
  return handle.jsonValue()
}

const storedText = async (collection, doc) => {
  const res = await fetch(`${server.http}/v1/collections/${collection}/documents/${doc}`)
  if (res.status === 404) return null
  const ydoc = new Y.Doc()
  Y.applyUpdate(ydoc, new Uint8Array(await res.arrayBuffer()))
  return ydoc.getText('content').toString()
}

async function typeWords (page, prefix, count) {
  const words = []
  for (let i = 0; i < count; i++) {
    const word = ` ${prefix}${i}`
    words.push(word)
    await page.keyboard.type(word, { delay: 12 })
  }
  return words.join('')
}

test('two windows type interleaved text with the keyboard and show identical text; a third window opened later loads it', async () => {
  const collection = unique('typing')
  const a = await open('Alice', collection, 'notes')
  const b = await open('Bob', collection, 'notes')
  await a.page.click('.cm-content')
  await a.page.keyboard.type('Alice:')
  await a.page.keyboard.press('Enter')
  await a.page.keyboard.type('Bob:')
  await waitText(b.page, 'Alice:\nBob:', 'Bob to receive the two lines')
  await b.page.click('.cm-content')
  await b.page.keyboard.press('Control+End')
  await a.page.keyboard.press('Control+Home')
  await a.page.keyboard.press('End')
  // Both type at once, keystroke by keystroke, each on their own line.
  const [aWords, bWords] = await Promise.all([typeWords(a.page, 'a', 10), typeWords(b.page, 'b', 10)])
  const expected = `Alice:${aWords}\nBob:${bWords}`
  await waitText(a.page, expected, 'Alice\'s window to show both lines')
  await waitText(b.page, expected, 'Bob\'s window to show both lines')
  log(`Alice and Bob typed ${aWords.length + bWords.length} keys at once; both windows show the same ${expected.length} characters`)
  const c = await open('Carol', collection, 'notes')
  await waitText(c.page, expected, 'Carol\'s window to load the document')
  log('a third window opened afterwards loads the identical text')
  assert.equal(await storedText(collection, 'notes'), expected)
  log('the server\'s stored document is the same text')
  for (const w of [a, b, c]) await w.context.close()
})

test('a remote cursor with its name, and who is here, are visible in the other window', async () => {
  const collection = unique('cursor')
  const a = await open('Alice', collection, 'doc')
  const b = await open('Bob', collection, 'doc')
  await a.page.click('.cm-content')
  await a.page.keyboard.type('Where is my cursor?')
  await waitText(b.page, 'Where is my cursor?', 'Bob to receive the text')
  const caret = b.page.locator('.cm-ySelectionCaret', { has: b.page.locator('.cm-ySelectionInfo', { hasText: 'Alice' }) })
  await caret.waitFor({ state: 'visible', timeout: 10000 })
  const [caretBox, lineBox] = await Promise.all([caret.boundingBox(), b.page.locator('.cm-line').first().boundingBox()])
  assert.ok(caretBox.x > lineBox.x + 100, 'Alice\'s caret sits after her text, not at the line start')
  log('Bob\'s window shows Alice\'s caret, labelled "Alice", at the end of her text')
  await b.page.click('.cm-content')
  await b.page.keyboard.press('Control+Home')
  await a.page.locator('.cm-ySelectionInfo', { hasText: 'Bob' }).waitFor({ state: 'visible', timeout: 10000 })
  log('Alice\'s window shows Bob\'s caret')
  for (const [w, other] of [[a, 'Bob'], [b, 'Alice']]) {
    await w.page.waitForFunction(other => [...document.querySelectorAll('#people li')].some(li => li.textContent === other), other)
    const people = await w.page.locator('#people li').allTextContents()
    assert.deepEqual(people.sort(), [`${w.name} (you)`, other].sort())
  }
  log('"Here now" lists both people in both windows')
  await a.context.close()
  await b.page.waitForFunction(() => document.querySelectorAll('#people li').length === 1, null, { timeout: 5000 })
  assert.equal(await b.page.locator('.cm-ySelectionInfo', { hasText: 'Alice' }).count(), 0)
  log('when Alice\'s window closes, she leaves Bob\'s list and her caret goes at once')
  await b.context.close()
})

// Goes offline by `goOffline`, types there while the other window types
// too, comes back by `goOnline`; both must end with every keystroke.
async function offlineRound (how, goOffline, goOnline) {
  const collection = unique('offline')
  const a = await open('Alice', collection, 'doc')
  const b = await open('Bob', collection, 'doc')
  await a.page.click('.cm-content')
  await a.page.keyboard.type('shared line')
  await waitSaved(a.page, 'shared line')
  await waitText(b.page, 'shared line', 'Bob to receive the first line')
  await goOffline(a)
  await a.page.waitForSelector('#conn[data-state="offline"]')
  // Nothing typed yet: what the page holds is still saved.
  await a.page.waitForFunction(() => document.getElementById('saved').innerText.endsWith('offline'))
  assert.equal(await a.page.locator('#saved').getAttribute('data-state'), 'saved')
  await a.page.click('.cm-content') // the switch took the focus
  await a.page.keyboard.press('Control+End')
  await a.page.keyboard.press('Enter')
  await a.page.keyboard.type('written offline by Alice')
  await b.page.click('.cm-content')
  await b.page.keyboard.press('Control+Home')
  await b.page.keyboard.type('Bob online: ')
  const pending = await a.page.locator('#saved').getAttribute('data-pending')
  assert.equal(await a.page.locator('#saved').getAttribute('data-state'), 'pending')
  assert.ok(Number(pending) > 0)
  log(`${how}: offline, Alice's page shows "${(await a.page.locator('#saved').innerText()).replace(/\n+/g, ' · ')}"`)
  await b.page.waitForTimeout(400)
  assert.ok(!(await shown(b.page)).includes('offline'), 'the offline edit stayed in Alice\'s page')
  assert.ok(!(await shown(a.page)).includes('Bob online'), 'Alice, offline, did not receive Bob\'s edit')
  assert.ok(!((await storedText(collection, 'doc')) || '').includes('offline'), 'the server does not have it')
  log(`${how}: the offline edit stays local (not on the server, not in Bob's window)`)
  await goOnline(a)
  const expected = 'Bob online: shared line\nwritten offline by Alice'
  await waitText(a.page, expected, 'Alice to converge')
  await waitText(b.page, expected, 'Bob to converge')
  const saved = await waitSaved(a.page, 'written offline by Alice')
  assert.equal(await storedText(collection, 'doc'), expected)
  log(`${how}: back online, both windows converge with nothing lost; Alice's page says "${saved.label}"`)
  for (const w of [a, b]) await w.context.close()
}

test('offline with the page\'s switch: edits stay local and pending, then sync when back online', async () => {
  await offlineRound('the page\'s switch',
    w => w.page.locator('.switch').click(),
    w => w.page.locator('.switch').click())
})

test('offline by the browser\'s network emulation: edits stay local and pending, then sync when the network is back', async () => {
  await offlineRound('network emulation',
    w => w.context.setOffline(true),
    w => w.context.setOffline(false))
})

test('the server is SIGKILLed right after the page shows its last edit as saved; after a restart on the same data a fresh window shows every edit shown as saved', async () => {
  const collection = unique('crash')
  const a = await open('Alice', collection, 'doc')
  await a.page.click('.cm-content')
  let last
  for (let i = 1; i <= 4; i++) {
    const line = `line ${i} typed before the crash`
    await a.page.keyboard.type(line, { delay: 5 })
    if (i < 4) await a.page.keyboard.press('Enter')
    if (i === 4) last = await waitSaved(a.page, line)
  }
  const { listen } = server
  await server.kill('SIGKILL')
  log(`the server was SIGKILLed as soon as the page showed "${last.label}" with its last keystroke`)
  server = await startServer(join(workDir, 'data'), { listen })
  const fresh = await open('Carol', collection, 'doc')
  assert.equal(await shown(fresh.page), last.text)
  const head = Number(await fresh.page.locator('#head').getAttribute('data-seq'))
  assert.ok(head >= last.seq, `head ${head} after the restart is at least the seq shown as saved (${last.seq})`)
  log(`after the restart a fresh window shows all ${last.text.length} characters the page had shown as saved (head ${head} ≥ seq ${last.seq})`)
  // The first window reconnects by itself and goes on.
  await a.page.waitForSelector('#conn[data-state="connected"]', { timeout: 15000 })
  await a.page.keyboard.type(' and after')
  await waitText(fresh.page, last.text + ' and after', 'the fresh window to receive an edit made after the restart')
  log('the first window reconnected to the restarted server and its next edit reached the fresh window')
  for (const w of [a, fresh]) await w.context.close()
})

test('the history panel lists the document\'s changes with consecutive seqs; compaction from the button keeps the text identical', async () => {
  const collection = unique('history')
  const a = await open('Alice', collection, 'doc')
  await a.page.click('.cm-content')
  await a.page.keyboard.type('Every keystroke is a change in the log.', { delay: 5 })
  const saved = await waitSaved(a.page, 'in the log.')
  const rows = async () => (await a.page.locator('#history tbody tr').evaluateAll(trs =>
    trs.map(tr => [...tr.children].map(td => td.textContent))))
  await a.page.waitForFunction(seq => document.querySelector('#history tbody td')?.textContent === String(seq), saved.seq)
  const before = await rows()
  const seqs = before.map(r => Number(r[0]))
  assert.ok(seqs.length >= 10, `${seqs.length} rows`)
  seqs.forEach((seq, i) => assert.equal(seq, saved.seq - i, 'consecutive seqs, newest first'))
  assert.ok(before.every(r => r[1] === 'update' && r[3] === 'this page'), JSON.stringify(before.slice(0, 3)))
  log(`the history panel lists seqs ${seqs[seqs.length - 1]}…${seqs[0]} consecutively, each an update from this page`)

  await a.page.click('#compact')
  const summary = JSON.parse(await (await a.page.waitForSelector('#compact-summary[data-summary]')).getAttribute('data-summary'))
  assert.ok(summary.documents_compacted >= 1 && summary.changes_removed > 0, JSON.stringify(summary))
  assert.ok(summary.bytes_after < summary.bytes_before, JSON.stringify(summary))
  log(`the compaction button shows "${await a.page.locator('#compact-summary').textContent()}"`)
  await a.page.waitForFunction(() => [...document.querySelectorAll('#history td')].some(td => td.textContent === 'snapshot'))
  assert.equal(await shown(a.page), saved.text)
  assert.equal(await storedText(collection, 'doc'), saved.text)
  const fresh = await open('Bob', collection, 'doc')
  assert.equal(await shown(fresh.page), saved.text)
  log('after compaction the history shows the snapshot; the page, the server and a fresh window hold the identical text')
  for (const w of [a, fresh]) await w.context.close()
})

test('the history panel opens an earlier version and restores it; every window shows it', async () => {
  const collection = unique('restore')
  const a = await open('Alice', collection, 'doc')
  const b = await open('Bob', collection, 'doc')
  await a.page.click('.cm-content')
  await a.page.keyboard.type('Monday: milk', { delay: 5 })
  const monday = await waitSaved(a.page, 'milk')
  await a.page.keyboard.type(', eggs', { delay: 5 })
  await waitSaved(a.page, 'eggs')
  await a.page.waitForFunction(seq => [...document.querySelectorAll('#history tbody td.seq')].some(td => td.textContent === String(seq)), monday.seq)
  await a.page.evaluate(seq => [...document.querySelectorAll('#history tbody tr')]
    .find(tr => tr.children[0].textContent === String(seq)).querySelector('.open-version').click(), monday.seq)
  await a.page.waitForFunction(text => document.getElementById('version-text').textContent === text, monday.text, { timeout: 5000 })
    .catch(async e => {
      const [text, status] = await a.page.evaluate(() => [document.getElementById('version-text').textContent, document.getElementById('version-status').textContent])
      assert.fail(`the version shows ${JSON.stringify(text)} (${status}), not ${JSON.stringify(monday.text)}: ${e.message}`)
    })
  log(`the history panel opens seq ${monday.seq} and shows "${monday.text}"`)
  await a.page.click('#version-restore')
  const restored = await (await a.page.waitForSelector('#version-status[data-restored]:not([data-restored=""])')).getAttribute('data-restored')
  assert.ok(Number(restored) > monday.seq, restored)
  await waitText(a.page, text => text === monday.text, 'the restore in the window that asked for it')
  await waitText(b.page, text => text === monday.text, 'the restore in the other window')
  assert.equal(await storedText(collection, 'doc'), monday.text)
  log(`restore answered "${await a.page.locator('#version-status').textContent()}"; both windows and the server show "${monday.text}"`)
  for (const w of [a, b]) await w.context.close()
})

test('the document picker opens a new document and then an existing one by its id', async () => {
  const collection = unique('picker')
  const a = await open('Alice', collection, 'first')
  await a.page.click('.cm-content')
  await a.page.keyboard.type('the first document')
  await waitSaved(a.page, 'the first document')
  // Both open the document by changing the address's hash: the page loads again.
  await Promise.all([a.page.waitForEvent('load'), a.page.click('#new-doc')])
  assert.match(await a.page.evaluate(() => location.hash), /^#\/[^/]+\/doc-[a-z0-9]+$/)
  await a.page.waitForSelector('#conn[data-state="connected"]')
  await a.page.waitForSelector('#saved[data-up-to-date="true"]')
  assert.equal(await shown(a.page), '')
  const newId = await a.page.inputValue('#doc-id')
  assert.match(newId, /^doc-[a-z0-9]+$/)
  await a.page.click('.cm-content')
  await a.page.keyboard.type('a new one')
  await waitSaved(a.page, 'a new one')
  log(`"New document" opened an empty document ${newId} and its edit was saved`)
  await a.page.fill('#doc-id', 'first')
  await Promise.all([a.page.waitForEvent('load'), a.page.press('#doc-id', 'Enter')])
  assert.ok((await a.page.evaluate(() => location.hash)).endsWith('/first'))
  await a.page.waitForSelector('#saved[data-up-to-date="true"]')
  await waitText(a.page, 'the first document', 'the first document to load again')
  assert.equal(await storedText(collection, newId), 'a new one')
  log('opening "first" by its id shows its text again; both documents are stored apart')
  await a.context.close()
})

test('with auth on, the page works with a token in its address and stays disconnected without one', async () => {
  const guarded = await startServer(join(workDir, 'guarded'), { env: { SEQSYNC_SERVER_WRITE_TOKEN: 'demo-secret' } })
  const context = await browser.newContext({ viewport: VIEWPORT })
  contexts.push(context)
  try {
    const page = await context.newPage()
    await page.goto(`${guarded.http}/editor.html?token=demo-secret&name=Alice#/private/doc`)
    await page.waitForSelector('#saved[data-up-to-date="true"]')
    await page.click('.cm-content')
    await page.keyboard.type('behind a token')
    const saved = await waitSaved(page, 'behind a token')
    const res = await fetch(`${guarded.http}/v1/collections/private/documents/doc`, { headers: { authorization: 'Bearer demo-secret' } })
    const ydoc = new Y.Doc()
    Y.applyUpdate(ydoc, new Uint8Array(await res.arrayBuffer()))
    assert.equal(ydoc.getText('content').toString(), 'behind a token')
    log(`with ?token= the page syncs through every route and says "${saved.label}"`)
    const stranger = await context.newPage()
    await stranger.goto(`${guarded.http}/editor.html?name=Eve#/private/doc`)
    await stranger.waitForTimeout(1500)
    assert.notEqual(await stranger.locator('#conn').getAttribute('data-state'), 'connected')
    assert.equal(await shown(stranger), '')
    log('without a token the page loads but gets no document')
  } finally {
    await context.close()
    await guarded.kill()
  }
})

test('screenshot of a two-window session', async () => {
  const collection = unique('screenshot')
  const a = await open('Alice', collection, 'meeting-notes', SHOT_VIEWPORT)
  const b = await open('Bob', collection, 'meeting-notes', SHOT_VIEWPORT)
  await a.page.click('.cm-content')
  const lines = ['# Launch checklist', '', 'Every keystroke is stored before it is shown as saved.',
    'Open this page in two windows and type in both.']
  for (const [i, line] of lines.entries()) {
    if (i > 0) await a.page.keyboard.press('Enter')
    await a.page.keyboard.type(line)
  }
  await waitText(b.page, lines.join('\n'), 'Bob to receive Alice\'s notes')
  await b.page.click('.cm-content')
  await b.page.keyboard.press('Control+End')
  await b.page.keyboard.press('Enter')
  await b.page.keyboard.press('Enter')
  await b.page.keyboard.type('Bob: offline edits come back when the network does.')
  await a.page.keyboard.press('ArrowUp')
  await a.page.keyboard.press('End')
  await waitSaved(b.page, 'the network does.')
  await waitSaved(a.page, 'the network does.')
  await a.page.locator('.cm-ySelectionInfo', { hasText: 'Bob' }).waitFor()
  await b.page.locator('.cm-ySelectionInfo', { hasText: 'Alice' }).waitFor()
  await a.page.waitForTimeout(1300) // the history's highlight fades
  const shots = await Promise.all([a.page.screenshot(), b.page.screenshot()])
  // The two windows side by side, composed by the browser itself.
  const composer = await browser.newPage({ viewport: { width: SHOT_VIEWPORT.width * 2 + 24, height: SHOT_VIEWPORT.height + 16 } })
  await composer.setContent(`<body style="margin:0;background:#d5d9e0;display:flex;gap:8px;padding:8px">
    ${shots.map(png => `<img style="border-radius:6px;box-shadow:0 1px 4px #0004" src="data:image/png;base64,${png.toString('base64')}">`).join('')}</body>`)
  await composer.waitForFunction(() => [...document.images].every(img => img.complete))
  const outDir = join(here, '..', 'test-output')
  mkdirSync(outDir, { recursive: true })
  const picture = await composer.screenshot()
  writeFileSync(join(outDir, 'two-windows.png'), picture)
  log(`saved test-output/two-windows.png (${picture.length} bytes)`)
  if (process.env.UPDATE_DOCS_SCREENSHOT) {
    writeFileSync(join(here, '..', '..', 'docs', 'demo-two-windows.png'), picture)
    log('refreshed docs/demo-two-windows.png')
  }
  await composer.close()
  for (const w of [a, b]) await w.context.close()
  assert.deepEqual(foreignRequests, [], 'every request of every window went to the seqsync server')
  log('no window loaded anything from anywhere but the seqsync server')
})
