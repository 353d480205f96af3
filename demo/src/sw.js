// The notes app's service worker: keeps the page's own files so the app
// opens offline (its data is in the browser store, not here). Network
// first — online, a reload always gets the current build, and the copy is
// refreshed — then the kept copy when the server cannot be reached. API
// routes and sockets are never touched.
const CACHE = 'seqsync-notes-v1'
const SHELL = ['./', 'index.html', 'notes.js', 'notes.css', 'style.css', 'store-worker.js', 'sqlite3.wasm']

self.addEventListener('install', event => {
  event.waitUntil(caches.open(CACHE).then(cache => cache.addAll(SHELL)).then(() => self.skipWaiting()))
})

self.addEventListener('activate', event => {
  event.waitUntil(self.clients.claim())
})

self.addEventListener('fetch', event => {
  const request = event.request
  const url = new URL(request.url)
  if (request.method !== 'GET' || url.origin !== self.location.origin) return
  if (url.pathname.startsWith('/v1/') || url.pathname.startsWith('/yws') || url.pathname === '/metrics') return
  event.respondWith((async () => {
    const cache = await caches.open(CACHE)
    try {
      const response = await fetch(request)
      if (response.ok) await cache.put(request, response.clone())
      return response
    } catch (err) {
      const kept = await cache.match(request, { ignoreSearch: true })
      if (kept !== undefined) return kept
      throw err
    }
  })())
})
