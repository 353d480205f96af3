// A bare sync-socket pusher (no store, no merging): hello, then push_batch
// frames of at most 1000 updates / 4 MiB, 16 in flight, until every one is
// answered. Used to seed the cold-start collection change by change, and as
// the baseline of the push benchmark.
import WebSocket from 'ws'
import { encodeFrame, decodeFrame } from '../dist/protocol.js'

export async function rawPush (wsBase, collection, updates, { peer = 'raw', inFlight = 16 } = {}) {
  const ws = new WebSocket(`${wsBase}/v1/collections/${collection}/sync`)
  ws.binaryType = 'arraybuffer'
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const batches = []
  let cur = []
  let bytes = 0
  for (const u of updates) {
    if (cur.length > 0 && (cur.length >= 1000 || bytes + u.update.length > 4 << 20)) {
      batches.push(cur)
      cur = []
      bytes = 0
    }
    cur.push(u)
    bytes += u.update.length
  }
  if (cur.length > 0) batches.push(cur)
  let next = 0
  let pending = 0
  let logged = 0
  let head = 0
  await new Promise((resolve, reject) => {
    const sendMore = () => {
      while (pending < inFlight && next < batches.length) {
        const id = next + 1
        ws.send(encodeFrame({ type: 'push_batch', id, updates: batches[next++] }))
        pending++
      }
      if (pending === 0 && next >= batches.length) resolve()
    }
    ws.on('message', (data) => {
      const f = decodeFrame(new Uint8Array(data))
      if (f.type === 'welcome') sendMore()
      else if (f.type === 'pushed') {
        pending--
        logged += f.seqs.filter(s => s > 0).length
        head = Math.max(head, f.head)
        sendMore()
      } else if (f.type === 'push_error' || f.type === 'error' || f.type === 'reset') reject(new Error(JSON.stringify(f)))
    })
    ws.on('close', () => reject(new Error('closed')))
    ws.send(encodeFrame({ type: 'hello', peer, after: 0, epoch: '', checksum: '', schemaVersion: 0, docs: ['-'] }))
  }).finally(() => ws.close(1000))
  return { logged, head }
}
