// One side of the live benchmark, in its own process:
//   node bench/live-child.js <seqsync|yws> <writer|reader> <url> <collection> <docs> <rate> <secs> [tmpdir]
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
import { SeqsyncClient } from '../dist/index.js'
import { sqliteStore } from '../dist/sqlite.js'

const [transport, role, url, collection, docsArg, rateArg, secsArg] = process.argv.slice(2)
const DOCS = Number(docsArg)
const RATE = Number(rateArg)
const SECS = Number(secsArg)
const now = () => performance.timeOrigin + performance.now()
const docs = []
let cleanup = async () => {}

if (transport === 'seqsync') {
  const dir = mkdtempSync(join(tmpdir(), 'seqsync-live-'))
  const client = new SeqsyncClient({ url, store: sqliteStore(join(dir, 'client.sqlite3')), WebSocket, ackDelayMs: 250 })
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
if (role === 'reader') {
  for (const d of docs) {
    d.getText('t').observe((event) => {
      const t = now()
      for (const op of event.delta) {
        if (typeof op.insert !== 'string') continue
        for (const part of op.insert.split(';')) if (part !== '') latencies.push(t - Number(part))
      }
    })
  }
}

await new Promise(resolve => {
  process.once('SIGUSR1', resolve)
  process.stdout.write('ready\n')
})

if (role === 'writer') {
  let sent = 0
  const start = now()
  const tickMs = 10
  const perTick = DOCS * RATE * tickMs / 1000
  let next = 0
  let due = 0
  while (now() - start < SECS * 1000) {
    due += perTick
    while (due >= 1) {
      const t = docs[next].getText('t')
      t.insert(t.length, `${now().toFixed(3)};`)
      next = (next + 1) % DOCS
      sent++
      due--
    }
    const elapsed = now() - start
    const target = Math.ceil((elapsed + 0.001) / tickMs) * tickMs
    await new Promise(resolve => setTimeout(resolve, Math.max(0, target - elapsed)))
  }
  await new Promise(resolve => setTimeout(resolve, 1500))
  await cleanup()
  process.stdout.write(JSON.stringify({ sent }) + '\n')
} else {
  await new Promise(resolve => setTimeout(resolve, SECS * 1000 + 3000))
  latencies.sort((a, b) => a - b)
  const q = (p) => latencies.length === 0 ? NaN : latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]
  await cleanup()
  process.stdout.write(JSON.stringify({ received: latencies.length, p50: q(0.5), p99: q(0.99), max: latencies.at(-1) }) + '\n')
}
process.exit(0)
