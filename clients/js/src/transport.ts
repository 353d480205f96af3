/**
 * The wire: one sync socket (a WebSocket carrying binary frames) and the
 * HTTP routes a client needs besides it (recover, delete, compact).
 */
import { fromBase64, toBase64 } from 'lib0/buffer'
import { type ClientFrame, type ServerFrame, FrameError, decodeServerFrame, encodeFrame } from './protocol.js'
import { ServerError, TransportError } from './errors.js'

/** The part of the WebSocket API the client uses (the browser's, Node 22's
 * global, or the `ws` package's). */
export interface WebSocketLike {
  binaryType: string
  readonly readyState: number
  send(data: Uint8Array): void
  close(code?: number, reason?: string): void
  onopen: ((ev: unknown) => void) | null
  onmessage: ((ev: { data: unknown }) => void) | null
  onclose: ((ev: { code: number, reason: string }) => void) | null
  onerror: ((ev: unknown) => void) | null
}

export type WebSocketConstructor = new (url: string) => WebSocketLike

export type FetchLike = (input: string, init?: {
  method?: string
  headers?: Record<string, string>
  body?: string
  signal?: AbortSignal
}) => Promise<{ ok: boolean, status: number, text(): Promise<string> }>

const OPEN = 1

/** Why a socket closed. */
export interface SocketClose {
  code: number
  reason: string
  /** A frame the client could not decode, or an error of the socket. */
  error?: Error
}

/** One sync socket. Frames arrive through `onFrame` in order; `onClose`
 * is called exactly once. */
export class SyncSocket {
  onFrame: (frame: ServerFrame) => void = () => {}
  onClose: (close: SocketClose) => void = () => {}
  private closed = false
  private readonly ws: WebSocketLike

  private constructor (ws: WebSocketLike) {
    this.ws = ws
  }

  /** Opens a socket; resolves once it is open. */
  static open (url: string, WebSocket: WebSocketConstructor, timeoutMs: number): Promise<SyncSocket> {
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike
      try {
        ws = new WebSocket(url)
      } catch (err) {
        reject(new TransportError(`cannot open ${redact(url)}: ${String(err)}`))
        return
      }
      ws.binaryType = 'arraybuffer'
      const socket = new SyncSocket(ws)
      let settled = false
      const timer = setTimeout(() => {
        if (settled) return
        settled = true
        try { ws.close() } catch {}
        reject(new TransportError(`no connection to ${redact(url)} within ${timeoutMs} ms`))
      }, timeoutMs)
      let lastError: unknown
      ws.onerror = (ev) => {
        lastError = ev
      }
      ws.onopen = () => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        socket.attach()
        resolve(socket)
      }
      ws.onclose = (ev) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        const detail = errorText(lastError)
        reject(new TransportError(`cannot connect to ${redact(url)}: closed ${ev.code}${detail === '' ? '' : ` (${detail})`}`))
      }
    })
  }

  private attach (): void {
    const ws = this.ws
    let lastError: unknown
    ws.onerror = (ev) => {
      lastError = ev
    }
    ws.onmessage = (ev) => {
      if (this.closed) return
      const data = ev.data
      let bytes: Uint8Array
      if (data instanceof ArrayBuffer) bytes = new Uint8Array(data)
      else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
      else {
        this.fail(new FrameError('a text message on the sync socket', 0), 1003)
        return
      }
      let frame: ServerFrame
      try {
        frame = decodeServerFrame(bytes)
      } catch (err) {
        this.fail(err as Error, 1002)
        return
      }
      this.onFrame(frame)
    }
    ws.onclose = (ev) => {
      if (this.closed) return
      this.closed = true
      const detail = errorText(lastError)
      this.onClose({ code: ev.code, reason: ev.reason, ...(detail === '' ? {} : { error: new TransportError(detail) }) })
    }
  }

  private fail (error: Error, code: number): void {
    if (this.closed) return
    this.closed = true
    try { this.ws.close(code, error.message.slice(0, 100)) } catch {}
    this.onClose({ code, reason: error.message, error })
  }

  get isOpen (): boolean {
    return !this.closed && this.ws.readyState === OPEN
  }

  send (frame: ClientFrame): boolean {
    if (!this.isOpen) return false
    this.ws.send(encodeFrame(frame))
    return true
  }

  /** Closes with `code` (1000 by default); `onClose` is called at once. */
  close (code = 1000, reason = ''): void {
    if (this.closed) return
    this.closed = true
    try { this.ws.close(code, reason) } catch {}
    this.onClose({ code, reason })
  }
}

function errorText (ev: unknown): string {
  if (ev === undefined || ev === null) return ''
  const e = ev as { message?: unknown, error?: { message?: unknown } }
  if (typeof e.message === 'string') return e.message
  if (e.error !== undefined && typeof e.error.message === 'string') return e.error.message
  return ''
}

/** The URL without its access token (for messages). */
export function redact (url: string): string {
  return url.replace(/access_token=[^&]*/, 'access_token=…')
}

/** The server's answer to `POST /v1/collections/{c}/recover`. */
export interface RecoverAnswer {
  documents: Array<{ doc: string, update: Uint8Array }>
  deleted: string[]
  cursor: number
  epoch: string | null
  schemaVersion: number
}

/** The HTTP routes, with the client's token. */
export class Http {
  constructor (
    private readonly base: string,
    private readonly token: string | undefined,
    private readonly fetch: FetchLike,
    private readonly timeoutMs: number
  ) {}

  async request (method: string, path: string, body?: unknown): Promise<unknown> {
    const headers: Record<string, string> = {}
    if (this.token !== undefined && this.token !== '') headers.authorization = `Bearer ${this.token}`
    if (body !== undefined) headers['content-type'] = 'application/json'
    const controller = new AbortController()
    const timer = setTimeout(() => controller.abort(), this.timeoutMs)
    let status: number
    let text: string
    try {
      const res = await this.fetch(this.base + path, {
        method,
        headers,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: controller.signal
      })
      status = res.status
      text = await res.text()
      if (!res.ok) {
        let code = `http_${status}`
        let message = text
        try {
          const parsed = JSON.parse(text) as { error?: { code?: string, message?: string } }
          if (parsed.error?.code !== undefined) code = parsed.error.code
          if (parsed.error?.message !== undefined) message = parsed.error.message
        } catch {}
        throw new ServerError(code, `${method} ${path}: ${message}`, status)
      }
    } catch (err) {
      if (err instanceof ServerError) throw err
      throw new TransportError(`${method} ${path}: ${(err as Error).message ?? String(err)}`)
    } finally {
      clearTimeout(timer)
    }
    if (text === '') return null
    try {
      return JSON.parse(text)
    } catch {
      throw new TransportError(`${method} ${path}: the answer is not JSON`)
    }
  }

  collectionPath (collection: string): string {
    return `/v1/collections/${encodeURIComponent(collection)}`
  }

  async recover (collection: string, stateVectors: Map<string, Uint8Array>): Promise<RecoverAnswer> {
    const svs: Record<string, string> = {}
    for (const [doc, sv] of stateVectors) svs[doc] = toBase64(sv)
    const answer = await this.request('POST', `${this.collectionPath(collection)}/recover`, { state_vectors: svs }) as {
      documents?: Array<{ doc: string, update: string }>
      deleted?: string[]
      cursor?: number
      epoch?: string | null
      schema_version?: number
    }
    if (answer === null || typeof answer !== 'object' || typeof answer.cursor !== 'number') {
      throw new TransportError(`POST recover: unexpected answer ${JSON.stringify(answer).slice(0, 200)}`)
    }
    return {
      documents: (answer.documents ?? []).map(d => ({ doc: d.doc, update: fromBase64(d.update) })),
      deleted: answer.deleted ?? [],
      cursor: answer.cursor,
      epoch: answer.epoch ?? null,
      schemaVersion: answer.schema_version ?? 0
    }
  }

  async deleteDocument (collection: string, doc: string): Promise<{ seq: number, head: number }> {
    return await this.request('DELETE', `${this.collectionPath(collection)}/documents/${encodeURIComponent(doc)}`) as { seq: number, head: number }
  }

  /** The collection's epoch (null: it does not exist). */
  async epoch (collection: string): Promise<string | null> {
    const page = await this.request('GET', `${this.collectionPath(collection)}/changes?after=0&limit=1`) as { epoch?: string | null } | null
    return page?.epoch ?? null
  }

  async compact (collection: string): Promise<unknown> {
    return await this.request('POST', `${this.collectionPath(collection)}/compact`)
  }
}
