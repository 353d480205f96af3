/**
 * The seqsync client: one per app and server. It hands out collections,
 * each with live Y.Docs kept in the local store and synced over the sync
 * socket (docs/PROTOCOL.md).
 */
import { Collection, type CollectionOptions } from './collection.js'
import { Http, type FetchLike, type WebSocketConstructor } from './transport.js'
import type { SeqsyncStore } from './store.js'

export interface SeqsyncClientOptions {
  /** The server's base URL (`http://host:port`; `ws://` works too). */
  url: string
  /** A bearer token (sent as `Authorization` on HTTP, `?access_token=` on
   * the socket). */
  token?: string
  /** The peer id the server tracks acks under; must be unique per local
   * store. Default: generated once and kept in the store's kv table. */
  peer?: string
  /** The local store (`memoryStore()`, or `sqliteStore(path)` from
   * `@seqsync/client/sqlite`). */
  store: SeqsyncStore
  /** A WebSocket constructor; default `globalThis.WebSocket` (Node 20 has
   * none: pass the `ws` package's). */
  WebSocket?: WebSocketConstructor
  /** Default `globalThis.fetch`. */
  fetch?: FetchLike
  /** Connection and HTTP timeout, ms (default 10,000). */
  timeoutMs?: number
  /** Acks are sent this long after the cursor moves, at most one per
   * interval (default 250 ms). */
  ackDelayMs?: number
  /** How long stop() waits for the goodbye (default 10,000 ms). */
  goodbyeTimeoutMs?: number
  /** Reconnect backoff (default 250 ms doubling to 5 s, jittered). */
  backoff?: { minMs?: number, maxMs?: number }
  /** Shows every local edit to the other tabs of this browser that hold a
   * store of the same name, at once and offline too (a BroadcastChannel;
   * see `tabs.ts`). Default: the store's `tabChannel` (a browser store
   * has one: its name); `null` turns it off. */
  tabChannel?: string | null
}

const PEER_KEY = 'peer'

export class SeqsyncClient {
  readonly store: SeqsyncStore
  private readonly options: SeqsyncClientOptions
  private readonly http: Http
  private readonly httpBase: string
  private readonly collections = new Map<string, Collection>()
  private peerPromise: Promise<string> | null = null

  constructor (options: SeqsyncClientOptions) {
    this.options = options
    this.store = options.store
    this.httpBase = options.url.replace(/^ws(s?):\/\//, 'http$1://').replace(/\/+$/, '')
    const fetchImpl = options.fetch ?? (globalThis.fetch as unknown as FetchLike | undefined)
    if (fetchImpl === undefined) throw new Error('no fetch: pass options.fetch')
    this.http = new Http(this.httpBase, options.token, fetchImpl, options.timeoutMs ?? 10_000)
  }

  /** The peer id (generated and stored on first use when not given). */
  peer (): Promise<string> {
    this.peerPromise ??= (async () => {
      if (this.options.peer !== undefined && this.options.peer !== '') return this.options.peer
      const stored = await this.store.getKv('', PEER_KEY)
      if (stored !== undefined && stored !== '') return stored
      const bytes = new Uint8Array(8)
      globalThis.crypto.getRandomValues(bytes)
      const id = 'js-' + [...bytes].map(b => b.toString(16).padStart(2, '0')).join('')
      await this.store.setKv('', PEER_KEY, id)
      return id
    })()
    return this.peerPromise
  }

  /** The collection `name` (one object per name). */
  collection (name: string, options: CollectionOptions = {}): Collection {
    let c = this.collections.get(name)
    if (c === undefined) {
      const ws = this.httpBase.replace(/^http/, 'ws')
      const token = this.options.token
      const WebSocketCtor = this.options.WebSocket
      const backoff = this.options.backoff ?? {}
      c = new Collection(name, {
        store: this.store,
        http: this.http,
        wsUrl: (collection) => `${ws}/v1/collections/${encodeURIComponent(collection)}/sync` +
          (token === undefined || token === '' ? '' : `?access_token=${encodeURIComponent(token)}`),
        WebSocket: () => {
          const ctor = WebSocketCtor ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
          if (ctor === undefined) throw new Error('no WebSocket: pass options.WebSocket (e.g. the `ws` package\'s) on Node 20')
          return ctor
        },
        peer: () => this.peer(),
        connectTimeoutMs: this.options.timeoutMs ?? 10_000,
        ackDelayMs: this.options.ackDelayMs ?? 250,
        goodbyeTimeoutMs: this.options.goodbyeTimeoutMs ?? 10_000,
        backoff: { minMs: backoff.minMs ?? 250, maxMs: backoff.maxMs ?? 5_000 },
        tabChannel: this.tabChannel()
      }, options)
      this.collections.set(name, c)
    }
    return c
  }

  private tabChannel (): string | undefined {
    const option = this.options.tabChannel
    if (option === null) return undefined
    if (option !== undefined) return option
    const fromStore = (this.store as { tabChannel?: unknown }).tabChannel
    return typeof fromStore === 'string' ? fromStore : undefined
  }

  /** Stops every collection (with the goodbye), then closes the store. */
  async close (): Promise<void> {
    await Promise.all([...this.collections.values()].map(c => c.close()))
    this.collections.clear()
    await this.store.close()
  }
}
