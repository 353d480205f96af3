// Builds the demo into dist/: one bundle (esbuild) plus the page and its
// stylesheet. Nothing is loaded from elsewhere at run time.
import { build } from 'esbuild'
import { copyFileSync, mkdirSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = join(here, 'dist')
rmSync(out, { recursive: true, force: true })
mkdirSync(out, { recursive: true })
await build({
  entryPoints: [join(here, 'src', 'main.js')],
  bundle: true,
  format: 'iife',
  target: ['chrome110', 'firefox110', 'safari16'],
  minify: true,
  sourcemap: true,
  outfile: join(out, 'app.js'),
  logLevel: 'info'
})
for (const file of ['index.html', 'style.css']) copyFileSync(join(here, 'src', file), join(out, file))
console.log(`demo built in ${out}`)
