// Benchmarks of @seqsync/client against the real server, each beside a
// baseline measured in the same run. Prints a table: workload, baseline,
// seqsync, ratio. Editing traces: benches/traces (Joseph Gentle, Martin
// Kleppmann; josephg/editing-traces, CC BY 4.0).
//
//   npm run build && node bench/bench.js [--quick] [--only cold,push,live]
import { mkdtempSync, rmSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { SeqsyncClient } from '../dist/index.js'
import { sqliteStore } from '../dist/sqlite.js'
import { startServer } from '../test/support/server.js'
import { collectionFromTraces, interleaved } from './traces.js'
import { rawPush } from './raw.js'

const here = dirname(fileURLToPath(import.meta.url))
const args = process.argv.slice(2)
const quick = args.includes('--quick')
const onlyArg = args.indexOf('--only')
const only = onlyArg >= 0 ? new Set(args[onlyArg + 1].split(',')) : new Set(['cold', 'push', 'live'])
const rows = []
const tmp = mkdtempSync(join(tmpdir(), 'seqsync-bench-'))
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }))

const ms = (t) => `${t.toFixed(0)} ms`
function row (workload, baseline, seqsync, ratio, note = '') {
  rows.push({ workload, baseline, seqsync, ratio: typeof ratio === 'number' ? `${ratio.toFixed(2)}×` : ratio, note })
  console.error(`# ${workload}: baseline ${baseline}, seqsync ${seqsync} (${typeof ratio === 'number' ? ratio.toFixed(2) + '×' : ratio}) ${note}`)
}

/** CPU seconds (user + system) of a process so far. */
function cpuSeconds (pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100 // utime, stime in clock ticks (USER_HZ = 100)
}

const server = await startServer({
  env: {
    // No background compaction during the measurements.
    SEQSYNC_COMPACTION_MAX_DELTAS: '100000000',
    SEQSYNC_COMPACTION_MAX_DELTA_BYTES: '100000000000'
  }
})

try {
  if (only.has('cold')) await cold()
  if (only.has('push')) await push()
  if (only.has('live')) await live()
} finally {
  await server.stop()
}

console.log('\n| workload | baseline | seqsync | ratio | notes |')
console.log('|---|---|---|---|---|')
for (const r of rows) console.log(`| ${r.workload} | ${r.baseline} | ${r.seqsync} | ${r.ratio} | ${r.note} |`)
console.log('\nTraces: benches/traces (Joseph Gentle: seph-blog1, sveltecomponent, friendsforever; Martin Kleppmann: automerge-paper), josephg/editing-traces, CC BY 4.0.')

async function cold () {
  const docsN = quick ? 200 : 1000
  const t0 = performance.now()
  const docs = collectionFromTraces(docsN, 260)
  const changes = docs.reduce((n, d) => n + d.updates.length, 0)
  const bytes = docs.reduce((n, d) => n + d.updates.reduce((a, u) => a + u.length, 0), 0)
  console.error(`# cold start: ${docs.length} documents, ${changes} changes, ${(bytes / 1e6).toFixed(1)} MB, built in ${ms(performance.now() - t0)}`)
  // Seed the server change by change (each update its own seq).
  const seedStart = performance.now()
  const order = interleaved(docs)
  const seeded = await rawPush(server.ws, 'cold', order)
  console.error(`# seeded ${seeded.logged} changes (head ${seeded.head}) in ${ms(performance.now() - seedStart)}`)

  // Baseline: the same updates applied to bare Y.Docs.
  let t = performance.now()
  const bare = new Map()
  for (const d of docs) {
    const ydoc = new Y.Doc()
    for (const u of d.updates) Y.applyUpdate(ydoc, u)
    bare.set(d.id, ydoc)
  }
  const baseline = performance.now() - t

  // seqsync: an empty client with the SQLite store syncs, then opens every
  // document as a live Y.Doc.
  const client = new SeqsyncClient({ url: server.http, store: sqliteStore(join(tmp, 'cold.sqlite3')), WebSocket })
  const col = client.collection('cold')
  t = performance.now()
  const report = await col.sync()
  const synced = performance.now() - t
  const live = []
  for (const d of docs) live.push(await col.doc(d.id))
  const total = performance.now() - t
  if (report.pulled !== seeded.logged) throw new Error(`pulled ${report.pulled} of ${seeded.logged}`)
  docs.forEach((d, i) => {
    const got = live[i].getText('content').toString()
    if (got !== d.text || got !== bare.get(d.id).getText('content').toString()) throw new Error(`document ${d.id} differs`)
  })
  row(`cold start: ${docs.length} docs, ${report.pulled.toLocaleString('en')} changes (${(bytes / 1e6).toFixed(0)} MB) into an empty client, SQLite store`,
    `${ms(baseline)} (apply to bare Y.Docs)`, `${ms(total)} (sync ${ms(synced)} + open ${ms(total - synced)})`, total / baseline, 'target ≤ 3×')
  await client.close()
}

async function push () {
  const N = 10000
  const D = 200
  // Baseline: bare Y.Docs make the edits; a bare socket pushes each update.
  let t = performance.now()
  const bareDocs = Array.from({ length: D }, () => new Y.Doc())
  const updates = []
  bareDocs.forEach((d, i) => d.on('update', u => updates.push({ doc: `d${i}`, update: u })))
  for (let e = 0; e < N; e++) {
    const text = bareDocs[e % D].getText('t')
    text.insert(text.length, String.fromCharCode(97 + e % 26))
  }
  const edits = performance.now() - t
  const raw = await rawPush(server.ws, 'push-bare', updates)
  const baseline = performance.now() - t
  // seqsync: the same edits on live docs (SQLite store), saved locally, then
  // one sync until the server confirmed them all.
  const client = new SeqsyncClient({ url: server.http, store: sqliteStore(join(tmp, 'push.sqlite3')), WebSocket })
  const col = client.collection('push-seqsync')
  const docs = []
  for (let i = 0; i < D; i++) docs.push(await col.doc(`d${i}`))
  t = performance.now()
  for (let e = 0; e < N; e++) {
    const text = docs[e % D].getText('t')
    text.insert(text.length, String.fromCharCode(97 + e % 26))
  }
  await col.whenSaved()
  const saved = performance.now() - t
  const report = await col.sync()
  const total = performance.now() - t
  if (report.pushed !== N) throw new Error(`pushed ${report.pushed}`)
  row(`push ${N.toLocaleString('en')} offline edits over ${D} docs until confirmed`,
    `${ms(baseline)} (bare Y.Docs ${ms(edits)} + ${raw.logged.toLocaleString('en')} raw pushes)`,
    `${ms(total)} (edit + save locally ${ms(saved)}, sync ${ms(total - saved)}; ${D} merged updates)`, total / baseline)
  await client.close()
}

/** Starts a live child (bench/live-child.js); resolves with its result
 * line (JSON) when it prints it. */
function child (argv) {
  const proc = spawn(process.execPath, [join(here, 'live-child.js'), ...argv], { stdio: ['ignore', 'pipe', 'inherit'] })
  const lines = createInterface({ input: proc.stdout })
  const ready = new Promise(resolve => lines.on('line', l => { if (l === 'ready') resolve() }))
  const result = new Promise((resolve, reject) => {
    lines.on('line', l => { if (l.startsWith('{')) resolve(JSON.parse(l)) })
    proc.once('exit', code => { if (code !== 0) reject(new Error(`live child exited ${code}`)) })
  })
  return { proc, ready, result }
}

async function live () {
  const DOCS = 300
  const RATE = 10 // edits per second per document
  const SECS = quick ? 5 : 15
  const out = {}
  for (const transport of ['yws', 'seqsync', 'seqsync-memory']) {
    const collection = `live-${transport}`
    const reader = child([transport, 'reader', server.http, collection, String(DOCS), String(RATE), String(SECS)])
    await reader.ready
    const writer = child([transport, 'writer', server.http, collection, String(DOCS), String(RATE), String(SECS)])
    await writer.ready
    const cpu0 = cpuSeconds(server.pid)
    writer.proc.stdin?.end()
    // Both start their clock when the writer says go.
    reader.proc.kill('SIGUSR1')
    writer.proc.kill('SIGUSR1')
    const [w, r] = await Promise.all([writer.result, reader.result])
    const cpu = cpuSeconds(server.pid) - cpu0
    out[transport] = { ...r, sent: w.sent, sentAll: w.sentAll, cpuPerEdit: cpu / Math.max(1, r.receivedAll), cpu }
    console.error(`# live ${transport}: ${JSON.stringify(out[transport])}`)
  }
  const b = out.yws
  for (const [name, s] of [['SQLite store', out.seqsync], ['memory store', out['seqsync-memory']]]) {
    row(`live: ${DOCS} docs × ${RATE} edits/s for ${SECS} s, keystroke → other client p99 (p50); clients with the ${name}`,
      `${b.p99.toFixed(1)} ms (${b.p50.toFixed(1)}) via y-websocket /yws (${DOCS} sockets per client), ${b.receivedAll}/${b.sentAll} delivered`,
      `${s.p99.toFixed(1)} ms (${s.p50.toFixed(1)}) via one sync socket per client, ${s.receivedAll}/${s.sentAll} delivered`, s.p99 / b.p99, 'after 2 s of warm-up')
    row(`live: server CPU per delivered edit (warm-up included); clients with the ${name}`,
      `${(b.cpuPerEdit * 1e6).toFixed(0)} µs (${b.cpu.toFixed(1)} s CPU)`,
      `${(s.cpuPerEdit * 1e6).toFixed(0)} µs (${s.cpu.toFixed(1)} s CPU)`, s.cpuPerEdit / b.cpuPerEdit)
  }
}
