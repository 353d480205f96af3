// Starts the real seqsync server binary on a free loopback port with its own
// data directory (the interop suite's approach), and stops / kills /
// restarts it. The binary is $CLIENT_JS_SERVER_BIN, or the release build of
// the example (`cargo build --release --example server`).
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'

const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, '..', '..')
export const SERVER_BIN = process.env.CLIENT_JS_SERVER_BIN ? resolve(process.env.CLIENT_JS_SERVER_BIN) : resolve(root, '../../target/release/examples/server')
export const CLI_BIN = process.env.CLIENT_JS_CLI_BIN ? resolve(process.env.CLIENT_JS_CLI_BIN) : resolve(root, '../../target/debug/seqsync')

export function tempDir (prefix = 'seqsync-js-') {
  return mkdtempSync(join(tmpdir(), prefix))
}

/**
 * Starts a server. `dir`: the data directory's parent (a new temporary one
 * by default; kept on stop when given). `listen`: host:port (a free port by
 * default). `env`: more SEQSYNC_* settings.
 */
export async function startServer ({ dir, listen = '127.0.0.1:0', env = {}, keep = false } = {}) {
  if (!existsSync(SERVER_BIN)) throw new Error(`the server binary ${SERVER_BIN} is missing: cargo build --release --example server, or set CLIENT_JS_SERVER_BIN`)
  const owned = dir === undefined
  dir ??= tempDir()
  const dataDir = join(dir, 'data')
  const child = spawn(SERVER_BIN, [], {
    env: {
      ...process.env,
      SEQSYNC_STORAGE_PATH: dataDir,
      SEQSYNC_SERVER_LISTEN: listen,
      SEQSYNC_SERVER_STATIC_DIR: '',
      RUST_LOG: process.env.RUST_LOG ?? 'warn',
      ...env
    },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const lines = createInterface({ input: child.stdout })
  const exited = new Promise(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start within 30 s')), 30000)
    exited.then(({ code, signal }) => reject(new Error(`server exited with ${code ?? signal}`)))
    lines.on('line', line => {
      const m = line.match(/listening on (http:\/\/\S+)/)
      if (m) {
        clearTimeout(timer)
        resolve(m[1])
      }
    })
  })
  const hostPort = base.replace('http://', '')
  return {
    http: base,
    ws: base.replace('http://', 'ws://'),
    listen: hostPort,
    dir,
    dataDir,
    pid: child.pid,
    child,
    /** SIGTERM, wait; removes its directory unless it was given or kept. */
    async stop ({ remove = owned && !keep } = {}) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM')
        await exited
      }
      if (remove) rmSync(dir, { recursive: true, force: true })
    },
    /** SIGKILL, wait; keeps the directory. */
    async kill () {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL')
        await exited
      }
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

export const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))
