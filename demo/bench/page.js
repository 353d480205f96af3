// The browser benchmark's page (bench/browser.js bundles and drives it):
// a cold start of a collection into an empty browser store, beside the
// same updates applied to bare Y.Docs in this page, and the time from an
// edit to "saved on this device".
import * as Y from 'yjs'
import { SeqsyncClient } from '@seqsync/client'
import { browserStore } from '@seqsync/client/browser'

const worker = new URL('/store-worker.js', location.href)
const unb64 = text => Uint8Array.from(atob(text), c => c.charCodeAt(0))

/** The longest the page's main thread went without running a 0 ms timer
 * while `task` ran: how unresponsive the page was. */
async function withStallMeter (task) {
  let running = true
  let last = performance.now()
  let longest = 0
  const tick = () => {
    const now = performance.now()
    longest = Math.max(longest, now - last)
    last = now
    if (running) setTimeout(tick, 0)
  }
  setTimeout(tick, 0)
  try {
    return { result: await task(), longestStallMs: () => longest }
  } finally {
    running = false
  }
}

/** Every change of the collection from the server's log (HTTP, paged). */
async function allChanges (collection) {
  const out = []
  let after = 0
  for (;;) {
    const page = await (await fetch(`/v1/collections/${collection}/changes?after=${after}&limit=10000`)).json()
    for (const c of page.changes) if (c.kind === 'update') out.push({ doc: c.doc, update: unb64(c.update) })
    after = page.cursor
    if (!page.has_more) return out
  }
}

window.coldStart = async (collection, ids) => {
  // Baseline: the same updates, already in memory, applied to bare Y.Docs.
  const changes = await allChanges(collection)
  let t = performance.now()
  const bare = new Map()
  for (const { doc, update } of changes) {
    let ydoc = bare.get(doc)
    if (ydoc === undefined) { ydoc = new Y.Doc(); bare.set(doc, ydoc) }
    Y.applyUpdate(ydoc, update)
  }
  const baselineMs = performance.now() - t

  // seqsync: an empty browser store; sync, then open every document.
  const name = `bench-${Math.random().toString(36).slice(2, 8)}`
  t = performance.now()
  const measured = await withStallMeter(async () => {
    const store = await browserStore({ name, worker })
    const opened = performance.now() - t
    const client = new SeqsyncClient({ url: location.origin, store })
    const col = client.collection(collection)
    const report = await col.sync()
    const synced = performance.now() - t
    const live = []
    for (const id of ids) live.push(await col.doc(id))
    const total = performance.now() - t
    for (const [i, id] of ids.entries()) {
      if (live[i].getText('content').toString() !== bare.get(id).getText('content').toString()) throw new Error(`document ${id} differs`)
    }
    await client.close()
    return { opened, synced, total, pulled: report.pulled }
  })
  return { baselineMs, changes: changes.length, ...measured.result, longestStallMs: measured.longestStallMs() }
}

window.editLatency = async (edits) => {
  const store = await browserStore({ name: `edits-${Math.random().toString(36).slice(2, 8)}`, worker })
  const client = new SeqsyncClient({ url: location.origin, store })
  const col = client.collection('edits')
  const ydoc = await col.doc('d')
  const text = ydoc.getText('content')
  const samples = []
  for (let i = 0; i < edits; i++) {
    const saved = new Promise(resolve => { col.events.once('saved', resolve) })
    const t = performance.now()
    text.insert(text.length, 'x')
    await saved
    samples.push(performance.now() - t)
    await new Promise(resolve => setTimeout(resolve, 0)) // one keystroke per task, as typing is
  }
  await client.close()
  samples.sort((a, b) => a - b)
  const at = q => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))]
  return { p50: at(0.5), p99: at(0.99), max: samples[samples.length - 1] }
}
