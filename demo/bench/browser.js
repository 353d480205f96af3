// The browser store's budgets, in Debian's Chromium against the release
// server: a cold start of a 1,000-document collection (editing-trace
// windows, change by change) into an empty browser store, against the same
// updates applied to bare Y.Docs in the same page (target ≤ 3×), how long
// the page's main thread stalled meanwhile, and the time from an edit to
// "saved on this device" in the browser store (p50, p99). Sizes are in
// clients/js's `npm run size`.
//
//   (cd clients/js && npm ci && npm run build) && cargo build --release --example server
//   cd demo && npm ci && npm run build && node bench/browser.js [--quick]
//
// Traces: benches/traces (Joseph Gentle, Martin Kleppmann;
// josephg/editing-traces, CC BY 4.0).
import { mkdtempSync, rmSync, mkdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { launchChromium } from '../test/chromium.js'
import { startServer } from '../test/server.js'
import { oneYjs } from '../build.mjs'
import { collectionFromTraces, interleaved } from '../../clients/js/bench/traces.js'
import { rawPush } from '../../clients/js/bench/raw.js'

const here = dirname(fileURLToPath(import.meta.url))
const quick = process.argv.includes('--quick')
const DOCS = quick ? 200 : 1000
const EDITS = quick ? 100 : 400
const ms = t => `${t.toFixed(0)} ms`

const out = join(here, '..', 'dist', 'bench')
mkdirSync(out, { recursive: true })
await build({ entryPoints: [join(here, 'page.js')], bundle: true, minify: true, format: 'iife', outfile: join(out, 'page.js'), plugins: [oneYjs], logLevel: 'warning' })
writeFileSync(join(out, 'index.html'), '<!doctype html><meta charset="utf-8"><title>browser store bench</title><script src="page.js"></script>\n')

const work = mkdtempSync(join(tmpdir(), 'seqsync-browser-bench-'))
const server = await startServer(join(work, 'data'), {
  env: { SEQSYNC_COMPACTION_MAX_DELTAS: '100000000', SEQSYNC_COMPACTION_MAX_DELTA_BYTES: '100000000000' }
})
const browser = await launchChromium()
try {
  const docs = collectionFromTraces(DOCS, 260)
  const order = interleaved(docs)
  const seeded = await rawPush(server.http.replace('http', 'ws'), 'cold', order)
  const bytes = order.reduce((n, u) => n + u.update.length, 0)
  console.error(`# seeded ${seeded.logged} changes of ${docs.length} documents (${(bytes / 1e6).toFixed(1)} MB)`)

  const page = await (await browser.newContext()).newPage()
  page.on('pageerror', err => console.error(`page error: ${err.message}`))
  await page.goto(`${server.http}/bench/index.html`)
  await page.waitForFunction(() => typeof window.coldStart === 'function')
  const cold = await page.evaluate(([c, ids]) => window.coldStart(c, ids), ['cold', docs.map(d => d.id)])
  if (cold.pulled !== seeded.logged) throw new Error(`pulled ${cold.pulled} of ${seeded.logged}`)
  const edits = await page.evaluate(n => window.editLatency(n), EDITS)

  console.log('| workload | baseline (same page) | browser store | ratio | note |')
  console.log('|---|---|---|---|---|')
  console.log(`| cold start: ${docs.length} docs, ${cold.pulled.toLocaleString('en')} changes (${(bytes / 1e6).toFixed(1)} MB) into an empty browser store | ${ms(cold.baselineMs)} (apply to bare Y.Docs) | ${ms(cold.total)} (store open ${ms(cold.opened)}, sync ${ms(cold.synced - cold.opened)}, open docs ${ms(cold.total - cold.synced)}) | ${(cold.total / cold.baselineMs).toFixed(2)}× | target ≤ 3×; longest main-thread stall ${ms(cold.longestStallMs)} |`)
  console.log(`| an edit to "saved on this device" (${EDITS} edits, one per task) | | p50 ${edits.p50.toFixed(2)} ms, p99 ${edits.p99.toFixed(2)} ms, max ${edits.max.toFixed(1)} ms | | |`)
  console.log('\nTraces: benches/traces (Joseph Gentle, Martin Kleppmann), josephg/editing-traces, CC BY 4.0.')
} finally {
  await browser.close()
  await server.kill()
  rmSync(work, { recursive: true, force: true })
}
