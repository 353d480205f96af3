// Two clients share a note through a seqsync server (SEQSYNC_URL, default
// http://127.0.0.1:8787): Alice edits offline-first and syncs once, Bob
// follows live. Run: node examples/quickstart.js
import WebSocket from 'ws' // Node 20 has no global WebSocket
import { SeqsyncClient, memoryStore } from '@seqsync/client'
import { sqliteStore } from '@seqsync/client/sqlite'

const url = process.env.SEQSYNC_URL ?? 'http://127.0.0.1:8787'
const alice = new SeqsyncClient({ url, store: sqliteStore(':memory:'), WebSocket })
const bob = new SeqsyncClient({ url, store: memoryStore(), WebSocket })

const aliceNotes = alice.collection('notes')
const note = await aliceNotes.doc('welcome') // a live Y.Doc, loaded from the local store
note.getText('body').insert(0, 'Hello from Alice')
const report = await aliceNotes.sync() // push the outbox, pull, ack, disconnect
console.log(report.kind, aliceNotes.status('welcome')) // pushed { pending: 0, savedThrough: N, ... }

const bobNotes = bob.collection('notes')
bobNotes.follow() // stay connected: edits go up and come down as they happen
await bobNotes.whenSynced()
console.log((await bobNotes.doc('welcome')).getText('body').toString()) // Hello from Alice

await alice.close()
await bob.close() // says goodbye first: everything in the outbox is pushed and confirmed
