// The notes app: a collection's documents on @seqsync/client, kept in this
// browser's SQLite store (OPFS, @seqsync/client/browser) and synced over the
// sync socket. Every note is a CodeMirror editor on a Y.Text, with the other
// editors' cursors (presence, shared with y-websocket clients of the same
// document). What the status panel says comes from the client itself:
// "saved on this device" once the local transaction committed, "saved on
// the server through seq N" once the server confirmed its commit, and the
// edits still in the outbox. A service worker (sw.js) keeps the page's own
// files, so the app opens and edits offline, across reloads.
import { SeqsyncClient } from '@seqsync/client'
import { browserStore } from '@seqsync/client/browser'
import { EditorView, basicSetup } from 'codemirror'
import { EditorState } from '@codemirror/state'
import { placeholder } from '@codemirror/view'
import { markdown } from '@codemirror/lang-markdown'
import { yCollab } from 'y-codemirror.next'

const $ = id => document.getElementById(id)
const NAME = /^[A-Za-z0-9._-]{1,128}$/
const COLORS = ['#e8590c', '#2f9e44', '#1971c2', '#9c36b5', '#c2255c', '#0c8599']
const params = new URLSearchParams(location.search)
const me = {
  name: (params.get('name') || sessionStorage.getItem('seqsync-name') || 'Guest').slice(0, 32),
  color: params.get('color') || sessionStorage.getItem('seqsync-color') || COLORS[Math.floor(Math.random() * COLORS.length)]
}
sessionStorage.setItem('seqsync-name', me.name)
sessionStorage.setItem('seqsync-color', me.color)
const token = params.get('token') || undefined

// #/collection/doc
function route () {
  const [collection, doc] = location.hash.replace(/^#\/?/, '').split('/')
  return {
    collection: NAME.test(collection || '') ? collection : 'notes',
    doc: NAME.test(doc || '') ? doc : ''
  }
}

// The page's own files for offline starts (network first: a reload online
// always gets the current build).
const offlineReady = (async () => {
  if (!('serviceWorker' in navigator)) return false
  await navigator.serviceWorker.register('sw.js')
  await navigator.serviceWorker.ready
  if (navigator.serviceWorker.controller === null) {
    await new Promise(resolve => navigator.serviceWorker.addEventListener('controllerchange', resolve, { once: true }))
  }
  return true
})()

async function main () {
  const { collection } = route()
  const started = performance.now()
  const store = await browserStore({ name: 'seqsync-demo', worker: new URL('store-worker.js', location.href) })
  const client = new SeqsyncClient({ url: location.origin, token, store })
  const notes = client.collection(collection)
  await notes.opened()
  $('store-info').textContent = `local store: slot ${store.slot}` +
    (store.adopted > 0 ? `, ${store.adopted} edits taken over from a closed tab` : '') +
    ` · opened in ${Math.round(performance.now() - started)} ms`
  document.body.dataset.slot = String(store.slot)
  offlineReady.then(ready => { document.body.dataset.offlineReady = String(ready) }, () => {})

  // ---- connection
  const renderConnection = state => {
    $('conn').dataset.state = state
    $('conn').textContent = state
  }
  notes.events.on('connection', ({ state }) => renderConnection(state))
  // A failed local commit or a refused push must show, not leave the
  // status saying "saving…" forever.
  notes.events.on('error', err => {
    console.error(err)
    $('store-info').textContent = `error: ${err.message}`
  })
  renderConnection(notes.connectionState)
  notes.follow()

  // ---- the list
  let current = null // { id, ydoc, view, presence }
  async function renderList () {
    const ids = await notes.documents()
    $('note-count').textContent = String(ids.length)
    $('notes').replaceChildren(...ids.map(id => {
      const li = document.createElement('li')
      li.dataset.doc = id
      if (current?.id === id) li.className = 'current'
      const a = document.createElement('a')
      a.href = `#/${collection}/${id}`
      a.textContent = id
      const del = document.createElement('button')
      del.type = 'button'
      del.title = `Delete ${id} (on the server, for everyone)`
      del.textContent = '×'
      del.onclick = async () => {
        del.disabled = true
        try {
          await notes.delete(id)
          if (current?.id === id) location.hash = `#/${collection}/`
        } catch (err) {
          alert(`Could not delete ${id}: ${err.message}`)
        } finally {
          del.disabled = false
          renderList()
        }
      }
      li.append(a, del)
      return li
    }))
  }
  let listQueued = false
  const scheduleList = () => {
    if (listQueued) return
    listQueued = true
    setTimeout(() => { listQueued = false; renderList() }, 100)
  }
  notes.events.on('change', scheduleList)
  notes.events.on('deleted', scheduleList)
  notes.events.on('saved', scheduleList)

  $('new-note').addEventListener('submit', event => {
    event.preventDefault()
    const id = $('new-note-id').value.trim()
    if (!NAME.test(id)) { $('new-note-id').reportValidity(); return }
    $('new-note-id').value = ''
    location.hash = `#/${collection}/${id}`
  })

  // ---- status of the open note
  function renderStatus () {
    if (current === null) return
    const s = notes.status(current.id)
    $('device').dataset.unsaved = String(s.unsaved)
    $('device').textContent = s.unsaved === 0 ? '✓ saved on this device' : `saving ${s.unsaved} edits…`
    $('server').dataset.savedThrough = String(s.savedThrough)
    $('server').textContent = s.savedThrough > 0 ? `✓ saved on the server through seq ${s.savedThrough}` : 'not on the server yet'
    $('pending').dataset.pending = String(s.pending)
    $('pending').textContent = s.pending === 0 ? 'nothing pending' : `${s.pending} edits pending`
  }
  notes.events.on('status', s => { if (s.doc === current?.id) renderStatus() })

  // ---- presence
  function renderPeople () {
    const people = current === null ? [] : [...current.presence.getStates().entries()].filter(([, s]) => s.user)
    $('people-count').textContent = String(people.length)
    $('people').replaceChildren(...people.map(([clientId, s]) => {
      const li = document.createElement('li')
      const dot = document.createElement('span')
      dot.className = 'dot'
      dot.style.background = s.user.color
      li.append(dot, s.user.name + (clientId === current.presence.clientID ? ' (you)' : ''))
      return li
    }))
  }

  // ---- the editor
  async function open () {
    const { doc: id } = route()
    if (current !== null) {
      current.view.destroy()
      current.presence.destroy()
      current = null
    }
    $('editor').replaceChildren()
    if (id === '') {
      $('editor').textContent = 'Pick a note on the left, or make a new one.'
      renderList()
      return
    }
    const ydoc = await notes.doc(id)
    const presence = await notes.presence(id)
    presence.setLocalStateField('user', { name: me.name, color: me.color, colorLight: me.color + '33' })
    presence.on('change', renderPeople)
    const ytext = ydoc.getText('content')
    const view = new EditorView({
      parent: $('editor'),
      state: EditorState.create({
        doc: ytext.toString(),
        extensions: [basicSetup, markdown(), EditorView.lineWrapping,
          placeholder('Type here. It is saved in this browser at once, and on the server when online.'),
          yCollab(ytext, presence)]
      })
    })
    current = { id, ydoc, view, presence }
    $('ywebsocket-link').href = `editor.html#/${collection}/${id}`
    // For the browser tests: what the page's document holds.
    window.seqsyncNotes = { collection, doc: id, text: () => ytext.toString(), slot: store.slot, adopted: store.adopted, notes, store }
    document.body.dataset.doc = id
    renderStatus()
    renderPeople()
    renderList()
  }
  window.addEventListener('hashchange', () => { open().catch(showError) })
  await open()
  document.body.dataset.ready = 'true'
  window.addEventListener('pagehide', () => { client.close().catch(() => {}) })
}

function showError (err) {
  console.error(err)
  $('store-info').textContent = `error: ${err.message}`
  document.body.dataset.error = err.message
}

main().catch(showError)
