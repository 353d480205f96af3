// Builds the demo into dist/: the notes app on @seqsync/client (index.html,
// notes.js), the y-websocket editor (editor.html, app.js), the browser
// store's worker with SQLite's WebAssembly next to it (store-worker.js,
// sqlite3.wasm) and the notes app's service worker (sw.js). Nothing is
// loaded from elsewhere at run time. Imported (by the tests), it only
// exports its esbuild plugin.
import { build } from 'esbuild'
import { copyFileSync, mkdirSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = join(here, 'dist')
const require = createRequire(import.meta.url)

// @seqsync/client is a file: dependency (a link to clients/js), whose own
// imports of yjs and lib0 would otherwise resolve to clients/js's copies:
// two Yjs in one page break its instanceof checks. Both resolve here.
export const oneYjs = {
  name: 'one-yjs',
  setup (b) {
    b.onResolve({ filter: /^(yjs|lib0)(\/.*)?$/ }, async args => {
      if (args.pluginData === 'one-yjs') return undefined
      return b.resolve(args.path, { resolveDir: here, kind: args.kind, pluginData: 'one-yjs' })
    })
  }
}

async function buildDemo () {
  rmSync(out, { recursive: true, force: true })
  mkdirSync(out, { recursive: true })
  const common = {
    bundle: true,
    target: ['chrome110', 'firefox110', 'safari16'],
    minify: true,
    sourcemap: true,
    logLevel: 'info',
    plugins: [oneYjs]
  }
  await build({ ...common, entryPoints: [join(here, 'src', 'main.js')], format: 'iife', outfile: join(out, 'app.js') })
  await build({ ...common, entryPoints: [join(here, 'src', 'notes.js')], format: 'iife', outfile: join(out, 'notes.js') })
  // A module worker: sqlite-wasm finds sqlite3.wasm next to it (import.meta.url).
  await build({ ...common, entryPoints: ['@seqsync/client/browser-worker'], format: 'esm', outfile: join(out, 'store-worker.js') })
  copyFileSync(require.resolve('@sqlite.org/sqlite-wasm/sqlite3.wasm'), join(out, 'sqlite3.wasm'))
  for (const file of ['index.html', 'editor.html', 'style.css', 'notes.css', 'sw.js']) copyFileSync(join(here, 'src', file), join(out, file))
  console.log(`demo built in ${out}`)
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) await buildDemo()
