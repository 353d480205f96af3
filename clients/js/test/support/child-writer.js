// A client process for the crash test: follows a collection with the SQLite
// store and types a unique token per edit into DOCS documents; after every
// local save it prints "saved <last token number>". Killed with SIGKILL by
// the test at some point. Tokens are <round:n>.
import WebSocket from 'ws'
import { SeqsyncClient } from '../../dist/index.js'
import { sqliteStore } from '../../dist/sqlite.js'

const [url, path, collection, docsArg, round] = process.argv.slice(2)
const DOCS = Number(docsArg)
const client = new SeqsyncClient({ url, store: sqliteStore(path), WebSocket, ackDelayMs: 20, backoff: { minMs: 20, maxMs: 200 } })
const col = client.collection(collection)
col.events.on('error', () => {})
const docs = []
for (let i = 0; i < DOCS; i++) docs.push(await col.doc(`k${i}`))
col.follow()
let n = 0
for (;;) {
  for (let j = 0; j < 20; j++) {
    n++
    const t = docs[n % DOCS].getText('t')
    t.insert(t.length, `<${round}:${n}>`)
  }
  await col.whenSaved()
  process.stdout.write(`saved ${n}\n`)
  await new Promise(resolve => setTimeout(resolve, 2))
}
