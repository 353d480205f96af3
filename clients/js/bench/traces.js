// Loads the editing traces of benches/traces (Joseph Gentle's and Martin
// Kleppmann's, from josephg/editing-traces, CC BY 4.0: see
// benches/traces/README.md) and turns them into Yjs updates.
import { readFileSync } from 'node:fs'
import { gunzipSync } from 'node:zlib'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as Y from 'yjs'

const dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'benches', 'traces')
export const SEQUENTIAL = ['automerge-paper', 'seph-blog1', 'sveltecomponent', 'friendsforever_flat']

export function loadTrace (name) {
  return JSON.parse(gunzipSync(readFileSync(join(dir, `${name}.json.gz`))).toString('utf8'))
}

/**
 * Cuts windows out of a sequential trace: for each start, the text at that
 * point and the patches of the `length` transactions after it.
 */
export function windows (trace, starts, length) {
  const doc = new Y.Doc()
  const text = doc.getText('content')
  const wanted = new Set(starts)
  const out = new Map()
  const txns = trace.txns
  const last = Math.max(...starts)
  for (let i = 0; i <= last; i++) {
    if (wanted.has(i)) out.set(i, { text: text.toString(), txns: txns.slice(i, i + length) })
    doc.transact(() => {
      for (const [pos, del, ins] of txns[i].patches) {
        if (del > 0) text.delete(pos, del)
        if (ins !== '') text.insert(pos, ins)
      }
    })
  }
  return starts.map(s => out.get(s))
}

/** A document's updates: its starting text pasted in one change, then one
 * update per transaction of the window, made on its own Y.Doc. */
export function replay (window) {
  const doc = new Y.Doc()
  const text = doc.getText('content')
  const updates = []
  doc.on('update', u => updates.push(u))
  text.insert(0, window.text)
  for (const txn of window.txns) {
    const before = updates.length
    doc.transact(() => {
      for (const [pos, del, ins] of txn.patches) {
        if (del > 0) text.delete(pos, del)
        if (ins !== '') text.insert(pos, ins)
      }
    })
    if (updates.length > before + 1) updates.splice(before, updates.length - before, Y.mergeUpdates(updates.slice(before)))
  }
  return { updates, text: text.toString() }
}

/** The cold-start collection: `docs` documents spread over the four
 * sequential traces, each the trace's text at some point (one change) then
 * `length` of its transactions (one change each). */
export function collectionFromTraces (docs = 1000, length = 260) {
  const perTrace = Math.ceil(docs / SEQUENTIAL.length)
  const documents = []
  for (const name of SEQUENTIAL) {
    const trace = loadTrace(name)
    const span = trace.txns.length - length - 1
    const starts = []
    for (let j = 0; j < perTrace && documents.length + starts.length < docs; j++) {
      starts.push(1 + Math.floor(j * span / perTrace))
    }
    windows(trace, starts, length).forEach((w, j) => {
      const { updates, text } = replay(w)
      documents.push({ id: `${name}-${j}`, updates, text })
    })
  }
  return documents
}

/** The documents' updates interleaved change by change across documents
 * (the k-th change of every document, then the k+1-th): how the cold-start
 * collection is seeded, the worst case for a local store, where every
 * change of a page is for another document. */
export function interleaved (documents) {
  const order = []
  for (let k = 0; ; k++) {
    let any = false
    for (const d of documents) {
      if (k < d.updates.length) {
        order.push({ doc: d.id, update: d.updates[k] })
        any = true
      }
    }
    if (!any) return order
  }
}
