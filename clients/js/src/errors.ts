/** Typed errors of the client. Every error leaves the local store as it
 * was after its last whole transaction. */

/** Base class: `code` is the server's stable code when there is one. */
export class SeqsyncError extends Error {
  readonly code: string
  constructor (code: string, message: string) {
    super(message)
    this.name = 'SeqsyncError'
    this.code = code
  }
}

/** The server's schema and this app's do not fit. Nothing local was
 * touched by the step that raised it. `code` is `schema_too_new` (the app
 * is at a newer schema version than the server: wait for the server),
 * `schema_too_old` or `upgrade_required` (see {@link UpgradeRequiredError}). */
export class SchemaError extends SeqsyncError {
  /** The app's schema version (the client's `schemaVersion` option). */
  readonly clientVersion: number
  /** The server's, when it said. */
  readonly serverVersion: number | undefined
  constructor (code: string, message: string, clientVersion: number, serverVersion?: number) {
    super(code, message)
    this.name = 'SchemaError'
    this.clientVersion = clientVersion
    this.serverVersion = serverVersion
  }
}

/** The server's data is at a newer schema version than this app understands
 * (its `welcome` says so, a change arrives at a newer version, or it refused
 * the app's version as `schema_too_old`): upgrade the app. Local data is
 * untouched. */
export class UpgradeRequiredError extends SchemaError {
  constructor (message: string, clientVersion: number, serverVersion?: number, code = 'upgrade_required') {
    super(code, message, clientVersion, serverVersion)
    this.name = 'UpgradeRequiredError'
  }
}

/** The server refused the connection or a request (an `error` frame, an
 * HTTP error answer): `code` is its code (`unauthorized`, `forbidden`,
 * `invalid_frame`, …). */
export class ServerError extends SeqsyncError {
  readonly status: number | undefined
  constructor (code: string, message: string, status?: number) {
    super(code, message)
    this.name = 'ServerError'
    this.status = status
  }
}

/** The server could not be reached, or went away mid-conversation: retry
 * later (the outbox is intact). */
export class TransportError extends SeqsyncError {
  constructor (message: string, code = 'unavailable') {
    super(code, message)
    this.name = 'TransportError'
  }
}

/** `push_error` codes that refuse an update for good: it is moved out of
 * the outbox into a rejected record. */
export const PERMANENT_PUSH_CODES: ReadonlySet<string> = new Set([
  'invalid_update',
  'invalid_name',
  'too_large',
  'document_deleted',
  'reserved_client_id',
  'forbidden',
  'migration_failed'
])

/** `push_error` codes that say "nothing was written, retry later". */
export const RETRYABLE_PUSH_CODES: ReadonlySet<string> = new Set([
  'overloaded',
  // Not confirmed within the server's bound; it may still land, and a
  // retry of a landed update is a no-op.
  'commit_timeout',
  'storage',
  'shutting_down',
  'internal',
  'not_owner'
])
