// Real editors for the failover test (`cli/tests/scale_out.rs`,
// `real_editors_survive_a_killed_and_a_paused_owner`): y-websocket
// providers from npm typing into seqsync nodes, each behind a small TCP
// load balancer, as an app sees a cluster.
//
//   node support/editors.js --nodes http://a,http://b,http://c \
//        --collection hot --writers 6 --interval-ms 40
//
// Why a load balancer: a provider reconnects to the URL it was given. A
// provider given a node's own address could never leave a killed node. Each
// node here has a balancer in front of it that forwards a new connection to
// that node while it accepts connections, else to the next node that does;
// provider i connects through balancer i % nodes, so writers and observers
// start spread over every node and move when theirs dies, as behind a real
// balancer with health checks.
//
// Writer w types `<w>.<n>|` tokens (n = 0, 1, 2, ...) at the end of its
// own document `w<w>`, one keystroke per transaction; observer w follows
// document `w<w>` through the next node's balancer. Protocol on stdio:
// prints `typing` once every provider has synced; on `finish` (stdin) stops
// typing, waits until every observer and a fresh provider per document
// hold what its writer typed (or 60 s pass), prints one line of JSON
// `{ "docs": [{ "doc", "typed", "observed", "fresh" }] }` and exits.
import net from 'node:net'
import { createInterface } from 'node:readline'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith('--')) pairs.push([arg.slice(2), all[i + 1]])
    return pairs
  }, [])
)
const nodes = args.nodes.split(',').map(url => new URL(url))
const collection = args.collection
const writers = Number(args.writers || 6)
const intervalMs = Number(args['interval-ms'] || 40)

// One balancer per node: forward to `home` while it accepts, else onwards.
function balancer (home) {
  const server = net.createServer(client => {
    client.pause()
    const tryNode = attempt => {
      if (attempt >= nodes.length) {
        client.destroy()
        return
      }
      const target = nodes[(home + attempt) % nodes.length]
      const upstream = net.connect(Number(target.port), target.hostname)
      upstream.once('connect', () => {
        upstream.removeAllListeners('error')
        upstream.on('error', () => client.destroy())
        client.on('error', () => upstream.destroy())
        upstream.on('close', () => client.destroy())
        client.on('close', () => upstream.destroy())
        client.pipe(upstream)
        upstream.pipe(client)
        client.resume()
      })
      upstream.once('error', () => tryNode(attempt + 1))
    }
    tryNode(0)
  })
  return new Promise(resolve => server.listen(0, '127.0.0.1', () => resolve(server)))
}

// Every provider adds an exit listener to the process.
process.setMaxListeners(0)

const balancers = await Promise.all(nodes.map((_, i) => balancer(i)))
const wsBase = i => `ws://127.0.0.1:${balancers[i % balancers.length].address().port}/yws/${collection}`

function provider (via, doc) {
  const ydoc = new Y.Doc()
  const p = new WebsocketProvider(wsBase(via), doc, ydoc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    // Reconnect soon after a node dies (the default backs off to 2.5 s).
    maxBackoffTime: 200
  })
  return { ydoc, p, text: ydoc.getText('t') }
}

const synced = ({ p }) => new Promise(resolve => p.synced ? resolve() : p.once('sync', ok => ok && resolve()))

const docs = Array.from({ length: writers }, (_, w) => `w${w}`)
const writing = docs.map((doc, w) => ({ ...provider(w, doc), doc, typed: '', n: 0 }))
const observing = docs.map((doc, w) => provider(w + 1, doc))
await Promise.all([...writing, ...observing].map(synced))
process.stdout.write('typing\n')

let typing = true
const loops = writing.map(async writer => {
  while (typing) {
    const token = `${writer.doc.slice(1)}.${writer.n++}|`
    writer.text.insert(writer.text.length, token)
    writer.typed += token
    await new Promise(resolve => setTimeout(resolve, intervalMs))
  }
})

const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (line.trim() !== 'finish') continue
  typing = false
  await Promise.all(loops)
  const deadline = Date.now() + 60000
  const fresh = docs.map((doc, w) => provider(w + 2, doc))
  const agreed = () => writing.every((writer, i) =>
    writer.text.toString() === writer.typed &&
    observing[i].text.toString() === writer.typed &&
    fresh[i].p.synced && fresh[i].text.toString() === writer.typed)
  while (!agreed() && Date.now() < deadline) {
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  const report = {
    docs: writing.map((writer, i) => ({
      doc: writer.doc,
      typed: writer.typed,
      observed: observing[i].text.toString(),
      fresh: fresh[i].text.toString()
    }))
  }
  process.stdout.write(JSON.stringify(report) + '\n')
  for (const { p, ydoc } of [...writing, ...observing, ...fresh]) {
    p.destroy()
    ydoc.destroy()
  }
  for (const b of balancers) b.close()
  process.exit(0)
}
