// Helpers: clients on the test server with the `ws` WebSocket.
import WebSocket from 'ws'
import * as Y from 'yjs'
import { SeqsyncClient, memoryStore } from '../../dist/index.js'

export function client (server, options = {}) {
  return new SeqsyncClient({
    url: server.http,
    store: options.store ?? memoryStore(),
    WebSocket,
    backoff: { minMs: 50, maxMs: 500 },
    ackDelayMs: 50,
    timeoutMs: 5000,
    ...options
  })
}

export const text = (doc) => doc.getText('t').toString()
export function type (doc, s) {
  const t = doc.getText('t')
  t.insert(t.length, s)
}

/** The server's state of a document (GET …/documents/{d}), as text. */
export async function serverText (server, collection, doc) {
  const res = await fetch(`${server.http}/v1/collections/${collection}/documents/${encodeURIComponent(doc)}`)
  if (res.status === 404) return null
  if (!res.ok) throw new Error(`GET document: ${res.status} ${await res.text()}`)
  const ydoc = new Y.Doc()
  Y.applyUpdate(ydoc, new Uint8Array(await res.arrayBuffer()))
  return text(ydoc)
}

/** The server's log (GET …/changes), every page. */
export async function serverLog (server, collection) {
  const out = []
  let after = 0
  for (;;) {
    const res = await fetch(`${server.http}/v1/collections/${collection}/changes?after=${after}&limit=1000`)
    if (!res.ok) throw new Error(`GET changes: ${res.status} ${await res.text()}`)
    const page = await res.json()
    out.push(...page.changes)
    after = page.cursor
    if (!page.has_more) return { changes: out, head: page.head, epoch: page.epoch, cursor: page.cursor }
  }
}

export async function post (server, path, body) {
  const res = await fetch(server.http + path, {
    method: 'POST',
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const t = await res.text()
  if (!res.ok) throw new Error(`POST ${path}: ${res.status} ${t}`)
  return t === '' ? null : JSON.parse(t)
}

/**
 * A WebSocket class (for the client's `WebSocket` option) that records
 * every frame the server sends, decoded, in `frames` (shared by every
 * socket it opens).
 */
export function sniffingWebSocket (decodeFrame) {
  const frames = []
  class Sniffing {
    constructor (url) {
      this.ws = new WebSocket(url)
      this.ws.binaryType = 'arraybuffer'
      this.onopen = null
      this.onmessage = null
      this.onclose = null
      this.onerror = null
      this.ws.onopen = (ev) => this.onopen?.(ev)
      this.ws.onclose = (ev) => this.onclose?.(ev)
      this.ws.onerror = (ev) => this.onerror?.(ev)
      this.ws.onmessage = (ev) => {
        try { frames.push(decodeFrame(new Uint8Array(ev.data))) } catch {}
        this.onmessage?.(ev)
      }
    }

    get binaryType () { return 'arraybuffer' }
    set binaryType (_) {}
    get readyState () { return this.ws.readyState }
    send (data) { this.ws.send(data) }
    close (code, reason) { this.ws.close(code, reason) }
  }
  return { WebSocket: Sniffing, frames }
}
