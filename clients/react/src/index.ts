/**
 * `@seqsync/react`: React hooks over `@seqsync/client`.
 *
 * - `<SeqsyncProvider client={client}>` puts one client in context.
 * - `useCollection(name)`: the collection, following (connected, live)
 *   while any component uses it.
 * - `useDocument(collection, id)`: the document's live `Y.Doc` (`null`
 *   while it loads from the local store), re-rendering on every change,
 *   local or remote.
 * - `useSyncStatus(collection, id?)`: connection, catch-up progress and,
 *   for a document, its edits pending and the seq the server saved it
 *   through: what a status line needs to tell the truth.
 * - `usePresence(collection, id)`: the document's presence (Yjs awareness)
 *   and every current state, re-rendering when someone comes, moves or
 *   goes.
 *
 * Why `useSyncExternalStore` everywhere: the client's objects change
 * outside React (sockets, the local store, other tabs); each hook
 * subscribes to the client's own events and reads a snapshot that only
 * changes identity when something changed, so React never tears and never
 * re-renders for nothing.
 */
import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useMemo,
  useState,
  useSyncExternalStore,
  type ReactNode
} from 'react'
import type {
  Collection,
  CollectionOptions,
  ConnectionState,
  DocStatus,
  Presence,
  PresenceState,
  Progress,
  SeqsyncClient
} from '@seqsync/client'

/** A `Y.Doc` as the client hands it out (typed from the client, so this
 * package needs no `yjs` of its own: one Yjs per app). */
export type YDoc = Awaited<ReturnType<Collection['doc']>>

const ClientContext = createContext<SeqsyncClient | null>(null)

/** Puts `client` in context for the hooks below it. */
export function SeqsyncProvider (props: { client: SeqsyncClient, children?: ReactNode }): ReactNode {
  return createElement(ClientContext.Provider, { value: props.client }, props.children)
}

/** The client of the nearest `SeqsyncProvider`. Throws outside one. */
export function useSeqsyncClient (): SeqsyncClient {
  const client = useContext(ClientContext)
  if (client === null) throw new Error('useSeqsyncClient: no <SeqsyncProvider client={…}> above this component')
  return client
}

/** How many mounted `useCollection`s follow each collection: the first
 * starts following, the last one to unmount stops (with the goodbye, so
 * the outbox is pushed first). */
const followers = new WeakMap<Collection, number>()

/**
 * The collection `name` of the provider's client, following while any
 * component uses it (`follow: false` to only read the local store and sync
 * by hand). The same object for the same name.
 */
export function useCollection (name: string, options: CollectionOptions & { follow?: boolean } = {}): Collection {
  const client = useSeqsyncClient()
  const { follow = true, ...collectionOptions } = options
  const collection = client.collection(name, collectionOptions)
  useEffect(() => {
    if (!follow) return
    followers.set(collection, (followers.get(collection) ?? 0) + 1)
    if (!collection.isFollowing) collection.follow()
    return () => {
      const left = (followers.get(collection) ?? 1) - 1
      followers.set(collection, left)
      if (left === 0) void collection.stop().catch(() => {})
    }
  }, [collection, follow])
  return collection
}

/** A store for `useSyncExternalStore` whose snapshot is a version number
 * bumped by the subscribed events. */
function versioned (subscribe: (bump: () => void) => () => void): { subscribe: (onChange: () => void) => () => void, version: () => number } {
  let version = 0
  return {
    subscribe: (onChange) => {
      const off = subscribe(() => {
        version++
        onChange()
      })
      // What changed between the render and this subscription is not
      // missed: React reads the snapshot again right after subscribing.
      version++
      return off
    },
    version: () => version
  }
}

/**
 * The live `Y.Doc` of document `id` (`null` until it is loaded from the
 * local store), re-rendering the component on every change of it, local
 * or remote. Edits made to it are saved locally and synced.
 */
export function useDocument (collection: Collection, id: string): YDoc | null {
  const [loaded, setLoaded] = useState<{ id: string, collection: Collection, ydoc: YDoc } | null>(null)
  useEffect(() => {
    let live = true
    collection.doc(id).then(ydoc => {
      if (live) setLoaded({ id, collection, ydoc })
    }, () => {})
    return () => { live = false }
  }, [collection, id])
  const ydoc = loaded !== null && loaded.id === id && loaded.collection === collection ? loaded.ydoc : null
  const store = useMemo(() => ydoc === null
    ? null
    : versioned((bump) => {
      ydoc.on('update', bump)
      return () => ydoc.off('update', bump)
    }), [ydoc])
  useSyncExternalStore(store?.subscribe ?? noSubscription, store?.version ?? zero, store?.version ?? zero)
  return ydoc
}

const noSubscription = (): (() => void) => () => {}
const zero = (): number => 0

/** What a status line shows. */
export interface SyncStatus {
  /** The collection's socket. */
  connection: ConnectionState
  /** Catch-up and push progress since the socket opened (`null` before). */
  progress: Progress | null
  /** With a document id: its edits not confirmed by the server
   * (`pending`), not yet in the local store (`unsaved`), and the seq the
   * server committed them through (`savedThrough`). */
  doc: DocStatus | null
}

/**
 * The collection's sync status (and document `id`'s, if given), re-rendering
 * when it changes. "Saved on this device" is `doc.unsaved === 0`; "saved on
 * the server through seq N" is `doc.pending === 0` with `doc.savedThrough`.
 */
export function useSyncStatus (collection: Collection, id?: string): SyncStatus {
  const store = useMemo(() => {
    let progress: Progress | null = null
    // The last snapshot, kept while nothing in it changed: React compares
    // snapshots by identity.
    let last: { key: string, status: SyncStatus } | null = null
    const read = (): SyncStatus => {
      const status: SyncStatus = {
        connection: collection.connectionState,
        progress,
        doc: id === undefined ? null : collection.status(id)
      }
      const key = JSON.stringify(status)
      if (last !== null && last.key === key) return last.status
      last = { key, status }
      return status
    }
    const subscribe = (onChange: () => void): (() => void) => {
      const offs = [
        collection.events.on('connection', onChange),
        collection.events.on('progress', (p) => {
          progress = { ...p }
          onChange()
        }),
        collection.events.on('status', (s) => { if (id === undefined || s.doc === id) onChange() }),
        collection.events.on('saved', onChange)
      ]
      return () => { for (const off of offs) off() }
    }
    return { read, subscribe }
  }, [collection, id])
  return useSyncExternalStore(store.subscribe, store.read, store.read)
}

/** A document's presence and its states. */
export interface PresenceView {
  /** `null` until the document is loaded. Set this client's state with
   * `presence.setLocalStateField('user', {...})`. */
  presence: Presence | null
  /** Every current state by Yjs client id, this client's included. */
  states: ReadonlyMap<number, PresenceState>
}

/**
 * The presence of document `id` (who else has it open, where their
 * cursor is), re-rendering when a state comes, changes or goes. The
 * presence is left (this client's state removed for everyone) when the
 * last component using it unmounts.
 */
export function usePresence (collection: Collection, id: string): PresenceView {
  const [presence, setPresence] = useState<Presence | null>(null)
  useEffect(() => {
    let live = true
    let mine: Presence | null = null
    collection.presence(id).then(p => {
      if (!live) return
      mine = p
      users.set(p, (users.get(p) ?? 0) + 1)
      setPresence(p)
    }, () => {})
    return () => {
      live = false
      if (mine === null) return
      const left = (users.get(mine) ?? 1) - 1
      users.set(mine, left)
      if (left === 0) mine.destroy()
    }
  }, [collection, id])
  const store = useMemo(() => {
    if (presence === null) return null
    let states: ReadonlyMap<number, PresenceState> = new Map(presence.getStates())
    return {
      subscribe: (onChange: () => void): (() => void) => {
        const listener = (): void => {
          states = new Map(presence.getStates())
          onChange()
        }
        presence.on('change', listener)
        // A change between the render and this subscription is not missed
        // (React reads the snapshot again right after subscribing).
        states = new Map(presence.getStates())
        return () => presence.off('change', listener)
      },
      read: () => states
    }
  }, [presence])
  const states = useSyncExternalStore(store?.subscribe ?? noSubscription, store?.read ?? noStates, store?.read ?? noStates)
  return { presence, states }
}

const users = new WeakMap<Presence, number>()
const EMPTY: ReadonlyMap<number, PresenceState> = new Map()
const noStates = (): ReadonlyMap<number, PresenceState> => EMPTY
