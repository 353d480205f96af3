// The seqsync demo: a CodeMirror 6 editor bound to a Yjs document that an
// unmodified y-websocket WebsocketProvider syncs through the host server's
// /yws route, with what seqsync adds in view: the durable sync position
// (from the change stream), offline edits kept as pending, the document's
// change log, and compaction.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { EditorView, basicSetup } from 'codemirror'
import { EditorState } from '@codemirror/state'
import { placeholder } from '@codemirror/view'
import { markdown } from '@codemirror/lang-markdown'
import { yCollab } from 'y-codemirror.next'
import { contains } from './position.js'

const $ = id => document.getElementById(id)
const NAME = /^[A-Za-z0-9._-]{1,128}$/
const HISTORY_ROWS = 14
const HISTORY_BACKFILL = 400 // seqs read back for the history panel

// #/collection/doc; defaults to demo/welcome.
function route () {
  const [collection, doc] = location.hash.replace(/^#\/?/, '').split('/')
  return {
    collection: NAME.test(collection || '') ? collection : 'demo',
    doc: NAME.test(doc || '') ? doc : 'welcome'
  }
}
const { collection, doc: docId } = route()
if (location.hash !== `#/${collection}/${docId}`) history.replaceState(null, '', `#/${collection}/${docId}`)
window.addEventListener('hashchange', () => location.reload())

// A server with auth on: the page's address carries a token (?token=),
// sent as a bearer header, and as ?access_token= on WebSockets.
const token = new URLSearchParams(location.search).get('token')
const api = (url, init = {}) => fetch(url, token ? { ...init, headers: { ...init.headers, authorization: `Bearer ${token}` } } : init)
const socketToken = token ? `&access_token=${encodeURIComponent(token)}` : ''

const http = `${location.protocol}//${location.host}`
const ws = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`
const base = `${http}/v1/collections/${encodeURIComponent(collection)}`

// ---- who am I
const COLORS = ['#e8590c', '#2f9e44', '#1971c2', '#9c36b5', '#c2255c', '#0c8599', '#f08c00', '#5f3dc4']
const NAMES = ['Ada', 'Grace', 'Alan', 'Barbara', 'Edsger', 'Frances', 'Donald', 'Margaret', 'Ken', 'Radia']
const params = new URLSearchParams(location.search)
const pick = list => list[Math.floor(Math.random() * list.length)]
const me = {
  name: (params.get('name') || sessionStorage.getItem('seqsync-name') || pick(NAMES)).slice(0, 32),
  color: params.get('color') || sessionStorage.getItem('seqsync-color') || pick(COLORS)
}
sessionStorage.setItem('seqsync-name', me.name)
sessionStorage.setItem('seqsync-color', me.color)

// ---- the document, the provider, the editor
const ydoc = new Y.Doc()
const ytext = ydoc.getText('content')
const provider = new WebsocketProvider(`${ws}/yws/${encodeURIComponent(collection)}`, docId, ydoc, {
  // Windows of one browser would otherwise sync through a BroadcastChannel
  // too, and an offline window would still see the other's edits.
  disableBc: true,
  params: token ? { access_token: token } : {}
})
const setUser = () => provider.awareness.setLocalStateField('user', {
  name: me.name, color: me.color, colorLight: me.color + '33'
})
setUser()

const view = new EditorView({
  parent: $('editor'),
  state: EditorState.create({
    doc: ytext.toString(),
    extensions: [
      basicSetup,
      markdown(),
      EditorView.lineWrapping,
      placeholder('Type here, then open this address in a second window: both edit the same document. Every keystroke is stored (see "Saved through seq" on the right).'),
      yCollab(ytext, provider.awareness)
    ]
  })
})

// ---- the durable sync position
const mirror = new Y.Doc() // the document as the server's log holds it
const position = {
  head: 0, // the last seq the stream delivered (the collection head as seen)
  savedThrough: 0, // the page's state is in the log at or before this seq
  pending: 0, // local edits since the page was last fully saved
  streamOpen: false
}
const myUpdates = new Set() // base64 of this page's own updates (history's origin)
const MAX_MY_UPDATES = 2000

const b64 = bytes => { let s = ''; for (const b of bytes) s += String.fromCharCode(b); return btoa(s) }
const unb64 = text => Uint8Array.from(atob(text), c => c.charCodeAt(0))

ydoc.on('update', (update, origin) => {
  if (origin === provider) return // from the server
  position.pending++
  if (myUpdates.size >= MAX_MY_UPDATES) myUpdates.clear()
  myUpdates.add(b64(update))
  // Pending at once: a "saved" left on screen from before this edit would
  // claim more than the log holds until the check runs.
  renderPosition(false, false)
  scheduleCheck()
})

let checkQueued = false
function scheduleCheck () {
  if (checkQueued) return
  checkQueued = true
  setTimeout(() => { checkQueued = false; check() }, 0)
}

// The mirror only ever holds committed changes, so "saved" stays true
// offline; "up to date" also needs the live stream and the provider synced.
function check () {
  const saved = contains(mirror, ydoc)
  if (saved) {
    position.pending = 0
    position.savedThrough = position.head
  }
  const live = position.streamOpen && provider.synced
  const upToDate = saved && live && contains(ydoc, mirror)
  renderPosition(saved, upToDate, live)
}

function renderPosition (saved, upToDate, live = false) {
  $('head').textContent = position.head ? `seq ${position.head}` : 'seq 0 (empty)'
  $('head').dataset.seq = position.head
  const el = $('saved')
  el.dataset.seq = position.savedThrough
  el.dataset.pending = saved ? 0 : Math.max(position.pending, 1)
  el.dataset.upToDate = upToDate
  const sub = document.createElement('span')
  sub.className = 'sub'
  if (saved) {
    el.dataset.state = 'saved'
    sub.textContent = upToDate ? 'up to date' : isOnline() ? (live ? 'receiving…' : 'connecting…') : 'offline'
    el.replaceChildren(`✓ Saved through seq ${position.savedThrough}`, sub)
  } else {
    el.dataset.state = 'pending'
    const n = Math.max(position.pending, 1)
    sub.textContent = position.savedThrough ? `saved through seq ${position.savedThrough}` : 'not saved yet'
    el.replaceChildren(`${n} edit${n === 1 ? '' : 's'} pending`, sub)
  }
}

// ---- the change stream (collection-wide: it also carries the head)
let stream = null
let streamRetry = null
function openStream () {
  if (stream || !isOnline()) return
  const socket = new WebSocket(`${ws}/v1/collections/${encodeURIComponent(collection)}/subscribe?after=${position.head}${socketToken}`)
  stream = socket
  socket.onopen = () => { position.streamOpen = true; scheduleCheck() }
  socket.onmessage = event => {
    const message = JSON.parse(event.data)
    if ('up_to_date' in message) {
      position.head = Math.max(position.head, message.up_to_date)
    } else if (typeof message.seq === 'number') {
      position.head = Math.max(position.head, message.seq)
      if (message.doc === docId) onChange(message, true)
    } else if (message.error) {
      // A reset (the log was replaced): read the document again.
      position.head = 0
      loadMirror()
    }
    scheduleCheck()
  }
  socket.onclose = () => {
    if (stream !== socket) return
    stream = null
    position.streamOpen = false
    scheduleCheck()
    clearTimeout(streamRetry)
    if (isOnline()) streamRetry = setTimeout(openStream, 1000)
  }
}
function closeStream () {
  clearTimeout(streamRetry)
  const socket = stream
  stream = null
  position.streamOpen = false
  if (socket) socket.close()
  scheduleCheck()
}

function onChange (change, live) {
  if (change.kind !== 'delete' && change.update) Y.applyUpdate(mirror, unb64(change.update), 'log')
  addHistory(change, live)
}

// The stored state, then the stream from its cursor: nothing between them
// is missed (changes applied twice are no-ops in Yjs).
async function loadMirror () {
  closeStream()
  try {
    const res = await api(`${base}/documents/${encodeURIComponent(docId)}`)
    if (res.ok) {
      Y.applyUpdate(mirror, new Uint8Array(await res.arrayBuffer()), 'log')
      position.head = Number(res.headers.get('x-seqsync-cursor')) || 0
    } else {
      const page = await (await api(`${base}/changes?after=0&limit=0`)).json()
      position.head = page.head || 0
    }
    await loadHistory(position.head)
  } catch (err) {
    console.warn('reading the document failed', err)
  }
  openStream()
}

// ---- history
const historyRows = [] // newest first
function addHistory (change, live) {
  if (historyRows.some(r => r.seq === change.seq)) return
  const bytes = change.update ? Math.floor(change.update.length * 3 / 4) - (change.update.endsWith('==') ? 2 : change.update.endsWith('=') ? 1 : 0) : 0
  const origin = change.origin || (myUpdates.has(change.update) ? 'this page' : 'another client')
  historyRows.push({ seq: change.seq, kind: change.kind, bytes, origin, fresh: live })
  historyRows.sort((a, b) => b.seq - a.seq)
  historyRows.length = Math.min(historyRows.length, HISTORY_ROWS)
  renderHistory()
}
function renderHistory () {
  const body = $('history').tBodies[0]
  body.replaceChildren(...historyRows.map(row => {
    const tr = document.createElement('tr')
    if (row.fresh) { tr.className = 'fresh'; row.fresh = false }
    for (const [text, cls] of [[row.seq, 'seq'], [row.kind, `kind-${row.kind}`], [formatBytes(row.bytes), ''], [row.origin, '']]) {
      const td = document.createElement('td')
      td.textContent = text
      if (cls) td.className = cls
      tr.append(td)
    }
    const actions = document.createElement('td')
    if (row.kind !== 'delete') {
      const open = document.createElement('button')
      open.type = 'button'
      open.className = 'open-version'
      open.textContent = 'open'
      open.addEventListener('click', () => openVersion(row.seq))
      actions.append(open)
    }
    tr.append(actions)
    return tr
  }))
}
// A version: the document as of a seq (GET …?at=SEQ&format=json), and
// restoring it (POST …/restore), which reaches this page like any edit.
let versionSeq = null
async function openVersion (seq) {
  versionSeq = seq
  $('version').hidden = false
  $('version-seq').textContent = seq
  $('version-status').textContent = ''
  $('version-text').textContent = 'loading…'
  const res = await api(`${base}/documents/${encodeURIComponent(docId)}?at=${seq}&format=json`)
  const body = await res.json()
  if (!res.ok) {
    $('version-text').textContent = ''
    $('version-status').textContent = body.error.code === 'history_compacted'
      ? `compacted: readable from seq ${body.earliest_seq}`
      : `${body.error.code}: ${body.error.message}`
    return
  }
  $('version-text').textContent = body.content.content ?? ''
}
$('version-close').addEventListener('click', () => { $('version').hidden = true; versionSeq = null })
$('version-restore').addEventListener('click', async () => {
  if (versionSeq === null) return
  $('version-status').textContent = 'restoring…'
  const res = await api(`${base}/documents/${encodeURIComponent(docId)}/restore`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ seq: versionSeq })
  })
  const body = await res.json()
  $('version-status').textContent = res.ok
    ? (body.seq === null ? 'already this version' : `restored as seq ${body.seq}`)
    : `${body.error.code}: ${body.error.message}`
  $('version-status').dataset.restored = res.ok ? String(body.seq) : ''
})
const formatBytes = n => n < 1024 ? `${n} B` : `${(n / 1024).toFixed(1)} KB`

async function loadHistory (through) {
  historyRows.length = 0
  let after = Math.max(0, through - HISTORY_BACKFILL)
  for (;;) {
    const res = await api(`${base}/changes?after=${after}&limit=500`)
    if (!res.ok) break
    const page = await res.json()
    for (const change of page.changes) {
      if (change.doc === docId) onChange(change, false)
    }
    after = page.cursor
    if (!page.has_more || after >= through) break
  }
  renderHistory()
}

$('compact').addEventListener('click', async () => {
  const button = $('compact')
  button.disabled = true
  $('compact-summary').textContent = 'compacting…'
  try {
    const res = await api(`${base}/compact`, { method: 'POST' })
    const summary = await res.json()
    if (!res.ok) throw new Error(summary.message || res.statusText)
    $('compact-summary').textContent =
      `${summary.documents_compacted} document${summary.documents_compacted === 1 ? '' : 's'} compacted: ` +
      `${summary.changes_removed} changes folded into snapshots, ${formatBytes(summary.bytes_before)} → ${formatBytes(summary.bytes_after)}`
    $('compact-summary').dataset.summary = JSON.stringify(summary)
    await loadHistory(position.head)
  } catch (err) {
    $('compact-summary').textContent = `compaction failed: ${err.message}`
  } finally {
    button.disabled = false
  }
})

// ---- connection, the offline switch and the browser's network
let networkUp = navigator.onLine
const isOnline = () => $('online').checked && networkUp

function applyConnectivity () {
  if (isOnline()) {
    provider.connect()
    openStream()
  } else {
    provider.disconnect()
    closeStream()
  }
  renderConnection()
}
$('online').addEventListener('change', applyConnectivity)
window.addEventListener('offline', () => { networkUp = false; applyConnectivity() })
window.addEventListener('online', () => { networkUp = true; applyConnectivity() })

function renderConnection () {
  const el = $('conn')
  let state, text
  if (!$('online').checked) [state, text] = ['offline', 'offline (switch)']
  else if (!networkUp) [state, text] = ['offline', 'offline (no network)']
  else if (provider.wsconnected && provider.synced) [state, text] = ['connected', 'connected']
  else [state, text] = ['connecting', 'connecting…']
  el.dataset.state = state
  el.textContent = text
  $('online-label').textContent = $('online').checked ? 'Online' : 'Offline'
}
provider.on('status', () => { renderConnection(); scheduleCheck() })
provider.on('sync', () => { renderConnection(); scheduleCheck() })

// ---- who is here
function renderPeople () {
  const states = [...provider.awareness.getStates().entries()]
    .filter(([, state]) => state && state.user)
    .sort(([a], [b]) => (a === ydoc.clientID ? -1 : b === ydoc.clientID ? 1 : a - b))
  $('people').replaceChildren(...states.map(([id, state]) => {
    const li = document.createElement('li')
    const dot = document.createElement('span')
    dot.className = 'dot'
    dot.style.background = state.user.color || '#888'
    const name = document.createElement('span')
    name.textContent = String(state.user.name || 'anonymous') + (id === ydoc.clientID ? ' (you)' : '')
    li.append(dot, name)
    li.dataset.client = id
    return li
  }))
  $('people-count').textContent = states.length
}
provider.awareness.on('change', renderPeople)

$('my-name').value = me.name
$('rename').addEventListener('submit', event => {
  event.preventDefault()
  const name = $('my-name').value.trim().slice(0, 32)
  if (!name) return
  me.name = name
  sessionStorage.setItem('seqsync-name', name)
  setUser()
})

// ---- document picker
$('collection-name').textContent = collection
$('doc-id').value = docId
$('picker').addEventListener('submit', event => {
  event.preventDefault()
  const id = $('doc-id').value.trim()
  if (NAME.test(id)) location.hash = `#/${collection}/${id}`
})
$('new-doc').addEventListener('click', () => {
  const id = 'doc-' + Math.random().toString(36).slice(2, 8)
  location.hash = `#/${collection}/${id}`
})

// For the browser tests and the curious: the live objects.
window.seqsync = { ydoc, provider, view, mirror, position, text: () => ytext.toString() }

renderConnection()
renderPeople()
renderPosition(false, false)
loadMirror()
view.focus()
