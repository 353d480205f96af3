// The real seqsync server binary for the browser suite: started on a data
// directory the test keeps (so it can be SIGKILLed and started again on the
// same data and port), serving the built demo from dist/.
import { spawn } from 'node:child_process'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'

const here = dirname(fileURLToPath(import.meta.url))
const defaultBin = join(here, '..', '..', 'target', 'release', 'examples', 'server')

export async function startServer (dataDir, { listen = '127.0.0.1:0', env = {} } = {}) {
  const child = spawn(process.env.DEMO_SERVER_BIN || defaultBin, [], {
    env: {
      ...process.env,
      SEQSYNC_STORAGE_PATH: dataDir,
      SEQSYNC_SERVER_LISTEN: listen,
      SEQSYNC_SERVER_STATIC_DIR: join(here, '..', 'dist'),
      RUST_LOG: process.env.RUST_LOG || 'warn',
      ...env
    },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const exited = new Promise(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
  const lines = createInterface({ input: child.stdout })
  const http = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start within 30 s')), 30000)
    exited.then(({ code }) => reject(new Error(`server exited with ${code}`)))
    lines.on('line', line => {
      const m = line.match(/listening on (http:\/\/\S+)/)
      if (m) { clearTimeout(timer); resolve(m[1]) }
    })
  })
  return {
    http,
    listen: http.replace('http://', ''),
    async kill (signal = 'SIGTERM') {
      child.kill(signal)
      return exited
    }
  }
}
