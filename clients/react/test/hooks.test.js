// The hooks against the real server binary, rendered with React's own test
// renderer: a component shows a document, its status and its presence,
// and must re-render with the truth as edits (local and remote) and
// people come and go.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createElement as h } from 'react'
import TestRenderer from 'react-test-renderer'
import WebSocket from 'ws'
import { SeqsyncClient, memoryStore } from '@seqsync/client'
import { SeqsyncProvider, useCollection, useDocument, useSyncStatus, usePresence } from '../dist/index.js'
import { startServer, waitFor } from '../../js/test/support/server.js'

// Updates arrive from sockets, outside any act(): let React schedule them
// as it does in an app, and read what it rendered.
globalThis.IS_REACT_ACT_ENVIRONMENT = false

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

function client () {
  return new SeqsyncClient({ url: server.http, store: memoryStore(), WebSocket, backoff: { minMs: 50, maxMs: 500 }, ackDelayMs: 50 })
}

/** The text a renderer shows. */
const shown = (renderer) => {
  const json = renderer.toJSON()
  const flat = (node) => node === null ? '' : typeof node === 'string' ? node : (node.children ?? []).map(flat).join('')
  return Array.isArray(json) ? json.map(flat).join('') : flat(json)
}

function Note ({ id, renders }) {
  const notes = useCollection('react-notes')
  const doc = useDocument(notes, id)
  const status = useSyncStatus(notes, id)
  renders.push(status)
  if (doc === null) return h('p', null, 'loading')
  const saved = status.doc.pending === 0 && status.doc.savedThrough > 0
    ? `saved on the server through seq ${status.doc.savedThrough}`
    : `${status.doc.pending} pending`
  return h('p', null, `${doc.getText('t').toString()}|${status.connection}|${saved}`)
}

test('useDocument re-renders on local and remote edits; useSyncStatus says pending, then saved on the server', async () => {
  // Why: a status line that says "saved" must only say it once the server
  // committed the edit, and the text must follow every edit.
  const a = client()
  const b = client()
  const renders = []
  const renderer = TestRenderer.create(h(SeqsyncProvider, { client: a }, h(Note, { id: 'n1', renders })))
  try {
    await waitFor(() => shown(renderer).includes('|connected|'), 'loaded and connected')
    const doc = await a.collection('react-notes').doc('n1')
    doc.getText('t').insert(0, 'hello')
    await waitFor(() => shown(renderer).startsWith('hello|'), 'the local edit is shown')
    await waitFor(() => /saved on the server through seq \d+/.test(shown(renderer)), 'saved on the server')
    assert.ok(renders.some(s => s.doc !== null && s.doc.pending > 0), 'the edit was shown as pending before it was saved')
    // Another client edits the same document: the component shows it.
    const other = b.collection('react-notes')
    other.follow()
    const theirs = await other.doc('n1')
    await waitFor(() => theirs.getText('t').toString() === 'hello', 'b has a\'s text')
    theirs.getText('t').insert(5, ' world')
    await waitFor(() => shown(renderer).startsWith('hello world|'), 'the remote edit is shown')
    // The status object keeps its identity while nothing changes.
    const count = renders.length
    await new Promise(resolve => setTimeout(resolve, 300))
    assert.ok(renders.length - count <= 1, `no renders for nothing (${renders.length - count})`)
  } finally {
    renderer.unmount()
    await a.close()
    await b.close()
  }
})

function People ({ id, name }) {
  const notes = useCollection('react-presence')
  const { presence, states } = usePresence(notes, id)
  if (presence !== null && presence.getLocalState()?.user?.name !== name) {
    presence.setLocalStateField('user', { name })
  }
  const names = [...states.values()].map(s => s.user?.name).filter(n => n !== undefined).sort()
  return h('p', null, names.join(','))
}

/** Keeps the collection followed while People comes and goes. */
function Keep () {
  useCollection('react-presence')
  return null
}

test('usePresence shows who is there and drops whoever unmounts', async () => {
  // Why: presence on screen must tell the truth as people come and go:
  // closing a document (the component unmounts, the app stays connected)
  // must remove its person for everyone at once.
  const a = client()
  const b = client()
  const ra = TestRenderer.create(h(SeqsyncProvider, { client: a }, h(People, { id: 'p', name: 'ann' })))
  const bTree = (open) => h(SeqsyncProvider, { client: b }, h(Keep), open ? h(People, { id: 'p', name: 'bea' }) : null)
  const rb = TestRenderer.create(bTree(true))
  try {
    await waitFor(() => shown(ra) === 'ann,bea', 'ann sees bea')
    await waitFor(() => shown(rb) === 'ann,bea', 'bea sees ann')
    rb.update(bTree(false))
    await waitFor(() => shown(ra) === 'ann', 'bea is gone for ann while b stays connected', 5000)
    assert.ok(b.collection('react-presence').isFollowing, 'b is still connected')
    rb.unmount()
  } finally {
    ra.unmount()
    await a.close()
    await b.close()
  }
})
