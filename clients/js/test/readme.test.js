// The README's example (examples/quickstart.js) runs as written.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { readFileSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startServer } from './support/server.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test('examples/quickstart.js runs against the server and prints the synced note', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, [join(root, 'examples', 'quickstart.js')], {
    env: { ...process.env, SEQSYNC_URL: server.http },
    timeout: 30000
  })
  const lines = stdout.trim().split('\n')
  assert.match(lines[0], /^pushed \{ doc: 'welcome', pending: 0, unsaved: 0, savedThrough: 1 \}$/)
  assert.equal(lines.at(-1), 'Hello from Alice')
})

test('the README shows the example as it is in examples/quickstart.js', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  const example = readFileSync(join(root, 'examples', 'quickstart.js'), 'utf8')
  const body = example.split('\n').filter(l => !l.startsWith('//')).join('\n').trim()
  assert.ok(readme.includes(body), 'README.md contains examples/quickstart.js (less its leading comment)')
})
