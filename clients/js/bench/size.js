// The client's size budget (issue: the browser client): the core as an app
// bundles it, minified and gzipped, without `yjs` and `lib0` (the app has
// those already for its Y.Docs). Target ≤ 30 KB. Also printed: the same
// with lib0 bundled in, and the entry points an app may add.
//
//   cd clients/js && npm run build && node bench/size.js
import { build } from 'esbuild'
import { gzipSync } from 'node:zlib'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')

async function size (entry, external) {
  const result = await build({
    entryPoints: [join(root, entry)],
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    write: false,
    external
  })
  const code = result.outputFiles[0].contents
  return { raw: code.length, gzip: gzipSync(code, { level: 9 }).length }
}

const kb = (n) => `${(n / 1024).toFixed(1)} KB`
const rows = [
  ['@seqsync/client (core), without yjs and lib0', 'dist/index.js', ['yjs', 'lib0', 'lib0/*']],
  ['@seqsync/client (core), with lib0, without yjs', 'dist/index.js', ['yjs']],
  ['@seqsync/client/op-sqlite, without yjs and lib0', 'dist/opsqlite.js', ['yjs', 'lib0', 'lib0/*', '@op-engineering/op-sqlite']],
  ['@seqsync/client/browser (page side), without yjs and lib0', 'dist/browser.js', ['yjs', 'lib0', 'lib0/*']],
  ['@seqsync/client/browser-worker with SQLite\'s JS glue and yjs (the worker)', 'dist/browser-worker.js', []]
]
console.log('| bundle | minified | gzipped | target |')
console.log('|---|---|---|---|')
for (const [name, entry, external] of rows) {
  const { raw, gzip } = await size(entry, external)
  console.log(`| ${name} | ${kb(raw)} | ${kb(gzip)} | ${entry === 'dist/index.js' && external.length === 3 ? '≤ 30 KB gzipped' : ''} |`)
}
// The WebAssembly the browser store's worker loads once when a store opens.
const wasm = readFileSync(createRequire(import.meta.url).resolve('@sqlite.org/sqlite-wasm/sqlite3.wasm'))
console.log(`| sqlite3.wasm (@sqlite.org/sqlite-wasm, loaded by the worker) | ${kb(wasm.length)} | ${kb(gzipSync(wasm, { level: 9 }).length)} | |`)
