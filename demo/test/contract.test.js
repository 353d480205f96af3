// The store contract that every @seqsync/client store passes, run against
// the browser store in Debian's Chromium: the contract file is bundled
// into a page (contract/page.js) served by the release server, and each of
// its cases is reported here as a test.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { launchChromium } from './chromium.js'
import { startServer } from './server.js'
import { oneYjs } from '../build.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const dist = join(here, '..', 'dist')

let browser
let server
let workDir

before(async () => {
  assert.ok(existsSync(join(dist, 'store-worker.js')), 'the demo is built (npm run build)')
  // The page goes into dist/ (what the server serves), under its own folder.
  const out = join(dist, 'test-contract')
  mkdirSync(out, { recursive: true })
  await build({ entryPoints: [join(here, 'contract', 'page.js')], bundle: true, format: 'iife', outfile: join(out, 'page.js'), plugins: [oneYjs], logLevel: 'warning' })
  writeFileSync(join(out, 'index.html'), '<!doctype html><meta charset="utf-8"><title>store contract</title><script src="page.js"></script>\n')
  workDir = mkdtempSync(join(tmpdir(), 'seqsync-contract-'))
  server = await startServer(join(workDir, 'data'))
  browser = await launchChromium()
})

after(async () => {
  if (browser) await browser.close()
  if (server) await server.kill()
  if (workDir) rmSync(workDir, { recursive: true, force: true })
})

test('the store contract, against the browser store in Chromium', async (t) => {
  const context = await browser.newContext()
  const page = await context.newPage()
  page.on('pageerror', err => console.log(`  page error: ${err.message}`))
  await page.goto(`${server.http}/test-contract/index.html`)
  await page.waitForFunction(() => typeof window.runContract === 'function')
  const results = await page.evaluate(() => window.runContract())
  assert.ok(results.length >= 10, `the contract has its cases (${results.length})`)
  for (const r of results) {
    await t.test(r.name, () => {
      assert.ok(r.ok, r.error)
      console.log(`  ✓ ${r.name} (${r.ms.toFixed(0)} ms)`)
    })
  }
  await context.close()
})
