// Starts the real seqsync server binary on a free loopback port with its own
// data directory, and stops it. The binary is $INTEROP_SERVER_BIN, or the
// release build of the example (`cargo build --release --example server`).
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'

const here = dirname(fileURLToPath(import.meta.url))
const defaultBin = join(here, '..', '..', 'target', 'release', 'examples', 'server')

export async function startServer (env = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'seqsync-interop-'))
  const child = spawn(process.env.INTEROP_SERVER_BIN || defaultBin, [], {
    env: {
      ...process.env,
      SEQSYNC_STORAGE_PATH: join(dir, 'data'),
      SEQSYNC_SERVER_LISTEN: '127.0.0.1:0',
      RUST_LOG: 'warn',
      ...env
    },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const lines = createInterface({ input: child.stdout })
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start within 30 s')), 30000)
    child.once('exit', code => reject(new Error(`server exited with ${code}`)))
    lines.on('line', line => {
      const m = line.match(/listening on (http:\/\/\S+)/)
      if (m) {
        clearTimeout(timer)
        resolve(m[1])
      }
    })
  })
  return {
    http: base,
    ws: base.replace('http://', 'ws://'),
    async stop () {
      const exited = new Promise(resolve => child.once('exit', resolve))
      child.kill('SIGTERM')
      await exited
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

export async function waitFor (predicate, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}
