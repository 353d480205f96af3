// One side of the live benchmark, in its own process:
//   node bench/live-child.js <seqsync|seqsync-memory|yws> <writer|reader> <url> <collection> <docs> <rate> <secs> [tmpdir]
// Prints "ready" once connected and synced, starts on SIGUSR1, prints one
// JSON line at the end. The writer types `<timestamp>;` into each
// document `rate` times a second; the reader parses the timestamps of what
// arrives and measures keystroke → other client latency (both processes
// read the same clock: performance.timeOrigin + performance.now()).
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { SeqsyncClient, memoryStore } from '../dist/index.js'
import { sqliteStore } from '../dist/sqlite.js'

const [transport, role, url, collection, docsArg, rateArg, secsArg] = process.argv.slice(2)
const DOCS = Number(docsArg)
const RATE = Number(rateArg)
const SECS = Number(secsArg)
/** The first seconds warm the processes up (JIT, buffers); edits sent
 * then are not measured. */
const WARMUP = 2
const now = () => performance.timeOrigin + performance.now()
process.setMaxListeners(0) // y-websocket adds an exit listener per provider
const docs = []
let cleanup = async () => {}

if (transport.startsWith('seqsync')) {
  const dir = mkdtempSync(join(tmpdir(), 'seqsync-live-'))
  const store = transport === 'seqsync-memory' ? memoryStore() : sqliteStore(join(dir, 'client.sqlite3'))
  const client = new SeqsyncClient({ url, store, WebSocket, ackDelayMs: Number(process.env.BENCH_ACK_MS ?? 250) })
  const col = client.collection(collection)
  for (let i = 0; i < DOCS; i++) docs.push(await col.doc(`d${i}`))
  col.follow()
  await col.whenSynced()
  cleanup = async () => {
    await client.close()
    rmSync(dir, { recursive: true, force: true })
  }
} else {
  const providers = []
  const base = url.replace('http://', 'ws://') + `/yws/${collection}`
  for (let i = 0; i < DOCS; i++) {
    const ydoc = new Y.Doc()
    const p = new WebsocketProvider(base, `d${i}`, ydoc, { WebSocketPolyfill: WebSocket, disableBc: true })
    providers.push(p)
    docs.push(ydoc)
  }
  await Promise.all(providers.map(p => new Promise(resolve => p.synced ? resolve() : p.once('sync', ok => ok && resolve()))))
  cleanup = async () => {
    for (const p of providers) {
      p.destroy()
      p.awareness.destroy()
    }
  }
}

const latencies = []
let receivedAll = 0
const trace = []
if (role === 'reader') {
  for (const d of docs) {
    d.getText('t').observe((event) => {
      const t = now()
      for (const op of event.delta) {
        if (typeof op.insert !== 'string') continue
        for (const part of op.insert.split(';')) {
          if (part === '') continue
          receivedAll++
          if (Number(part) >= measureFrom) latencies.push(t - Number(part))
          if (process.env.BENCH_TRACE) trace.push([Number(part), t - Number(part)])
        }
      }
    })
  }
}

let measureFrom = Infinity
await new Promise(resolve => {
  process.once('SIGUSR1', resolve)
  process.stdout.write('ready\n')
})
measureFrom = now() + WARMUP * 1000

if (role === 'writer') {
  let sent = 0
  let sentMeasured = 0
  const start = now()
  const tickMs = 10
  const perMs = DOCS * RATE / 1000
  let next = 0
  // Paced by the clock: after t ms, t × rate edits have been made.
  while (now() - start < (SECS + WARMUP) * 1000) {
    const due = Math.floor((now() - start) * perMs)
    while (sent < due) {
      const t = docs[next].getText('t')
      t.insert(t.length, `${now().toFixed(3)};`)
      next = (next + 1) % DOCS
      sent++
      if (now() >= start + WARMUP * 1000) sentMeasured++
    }
    await new Promise(resolve => setTimeout(resolve, tickMs))
  }
  await new Promise(resolve => setTimeout(resolve, 1500))
  await cleanup()
  process.stdout.write(JSON.stringify({ sent: sentMeasured, sentAll: sent }) + '\n')
} else {
  await new Promise(resolve => setTimeout(resolve, (SECS + WARMUP) * 1000 + 3000))
  if (process.env.BENCH_TRACE) {
    trace.sort((a, b) => a[0] - b[0])
    const t0 = trace[0][0]
    const slow = trace.filter(x => x[1] > 50)
    console.error(`# slow: ${slow.length} of ${trace.length}; first ${slow.slice(0, 3).map(x => `${(x[0] - t0).toFixed(0)}ms:${x[1].toFixed(0)}`)} last ${slow.slice(-3).map(x => `${(x[0] - t0).toFixed(0)}ms:${x[1].toFixed(0)}`)}`)
    const buckets = new Map()
    for (const [at, l] of slow) { const b = Math.floor((at - t0) / 500) * 500; buckets.set(b, Math.max(buckets.get(b) ?? 0, l)) }
    console.error('# slow buckets (start ms: max latency)', [...buckets].map(([b, l]) => `${b}:${l.toFixed(0)}`).join(' '))
  }
  latencies.sort((a, b) => a - b)
  const q = (p) => latencies.length === 0 ? NaN : latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]
  await cleanup()
  process.stdout.write(JSON.stringify({ receivedAll, received: latencies.length, p50: q(0.5), p99: q(0.99), max: latencies.at(-1) }) + '\n')
}
process.exit(0)
