import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
// Keystroke → other client latency over the sync socket with bare or
// client-library writers and readers:
//   node bench/probe-latency.js <raw|seqsync> <raw|seqsync> [memory|sqlite]
import { startServer } from '../test/support/server.js'
const [wk, rk, storeKind = 'memory'] = process.argv.slice(2)
const server = await startServer()
const kids = [['reader', rk], ['writer', wk]].map(([role, kind]) => { const p = spawn(process.execPath, [new URL('./probe-latency-child.js', import.meta.url).pathname, role, kind, server.ws, '5', storeKind], { stdio: ['ignore', 'pipe', 'inherit'] }); const l = createInterface({ input: p.stdout }); const ready = new Promise(r => l.on('line', x => x === 'ready' && r())); const res = new Promise(r => l.on('line', x => x.startsWith('{') && r(x))); return { p, ready, res } })
await Promise.all(kids.map(k => k.ready))
kids.forEach(k => k.p.kill('SIGUSR1'))
console.log(`writer ${wk} reader ${rk} ${storeKind}:`, await kids[0].res)
await kids[1].res
await server.stop()
