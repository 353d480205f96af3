/**
 * Tabs of one browser that hold stores of the same name (one slot each,
 * see `browser.ts`) show each other's edits at once, offline too: every
 * local edit of a live document is posted on a BroadcastChannel, and the
 * other tabs apply it to their live copy of that document.
 *
 * A relayed edit is saved and pushed by the receiving tab too, as if typed
 * there. Why: the receiver's next edits may build on it, and a server that
 * receives an edit before the one it builds on must park it (Yjs pending
 * structures) until the other arrives — the Chromium suite lost such edits
 * when the receiver pushed first. Saved by both, each tab's store holds
 * everything that tab shows, its outbox is in causal order, and an edit
 * reaches the server even if its author closes before pushing it. The cost
 * is a second push of each edit while two tabs are open, which the server
 * answers without logging anything (an update that adds nothing logs
 * nothing). A relayed edit is not relayed again.
 *
 * A tab that opens a document asks the other tabs for what it lacks (its
 * state vector, answered with the difference), so a tab opened or reloaded
 * next to one holding unpushed edits shows them at once, as y-websocket
 * does between the windows of one browser.
 *
 * Messages on the channel `seqsync-tabs:NAME:COLLECTION`:
 * - `{ kind: 'update', doc, update }`: a Yjs update of document `doc`;
 * - `{ kind: 'state', doc, stateVector }`: "send me what I lack of `doc`".
 */
import * as Y from 'yjs'

/** The part of `BroadcastChannel` the relay uses. */
interface ChannelLike {
  postMessage: (message: unknown) => void
  close: () => void
  onmessage: ((event: { data: unknown }) => void) | null
}

type TabMessage =
  | { kind: 'update', doc: string, update: Uint8Array }
  | { kind: 'state', doc: string, stateVector: Uint8Array }

/** Messages larger than this are not relayed (the other tabs get the edit
 * from the server): a relayed whole-document answer stays bounded. */
const MAX_RELAY_BYTES = 8 << 20

export class TabRelay {
  /** The origin of transactions the relay applies. */
  readonly origin = Symbol('seqsync-tab')
  private readonly channel: ChannelLike
  private readonly live: (doc: string) => Y.Doc | undefined

  /** `live`: the collection's live document of that id, if loaded. */
  constructor (channelName: string, live: (doc: string) => Y.Doc | undefined) {
    const Ctor = (globalThis as unknown as { BroadcastChannel?: new (name: string) => ChannelLike }).BroadcastChannel
    if (Ctor === undefined) throw new Error('no BroadcastChannel in this environment')
    this.channel = new Ctor(channelName)
    this.live = live
    this.channel.onmessage = (event) => { this.receive(event.data as TabMessage) }
  }

  /** A document was loaded in this tab: ask the others what it lacks. */
  opened (doc: string, ydoc: Y.Doc): void {
    this.post({ kind: 'state', doc, stateVector: Y.encodeStateVector(ydoc) })
  }

  /** A local edit of `doc` (saved by this tab): show it to the others. */
  edited (doc: string, update: Uint8Array): void {
    this.post({ kind: 'update', doc, update })
  }

  close (): void {
    this.channel.onmessage = null
    this.channel.close()
  }

  private post (message: TabMessage): void {
    const bytes = message.kind === 'update' ? message.update.byteLength : message.stateVector.byteLength
    if (bytes > MAX_RELAY_BYTES) return
    try {
      this.channel.postMessage(message)
    } catch {
      // A closed channel (the page is going away): nothing to relay to.
    }
  }

  private receive (message: TabMessage): void {
    if (typeof message !== 'object' || message === null || typeof message.doc !== 'string') return
    const ydoc = this.live(message.doc)
    if (ydoc === undefined) return // not open here: it loads from the store or the server
    try {
      if (message.kind === 'update' && message.update instanceof Uint8Array) {
        Y.applyUpdate(ydoc, message.update, this.origin)
      } else if (message.kind === 'state' && message.stateVector instanceof Uint8Array) {
        const diff = Y.encodeStateAsUpdate(ydoc, message.stateVector)
        // An empty update is 2 bytes: nothing the asker lacks.
        if (diff.byteLength > 2) this.post({ kind: 'update', doc: message.doc, update: diff })
      }
    } catch {
      // A malformed message from another tab must not break this one; the
      // edit reaches this tab through the server anyway.
    }
  }
}
