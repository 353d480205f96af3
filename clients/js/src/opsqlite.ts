/**
 * `@seqsync/client/op-sqlite`: the local store for React Native, on
 * op-sqlite (the seed's choice: one SQLite store for the app, synchronous
 * JSI bindings, statements on a native thread).
 *
 * The schema, statements and transactions are the shared SQL store's
 * (`sqlstore.ts`), the same as the Node store's; this file serves the
 * core's connection interface from an op-sqlite `DB`. It imports only
 * op-sqlite's types: the app opens the database (so it picks the file, the
 * location and the encryption) and hands it over.
 *
 * ```ts
 * import { open } from '@op-engineering/op-sqlite'
 * import { opSqliteStore } from '@seqsync/client/op-sqlite'
 * const store = opSqliteStore(open({ name: 'seqsync.sqlite' }))
 * ```
 *
 * Durability: the store sets WAL mode and `synchronous=NORMAL` (see
 * `@seqsync/client/sqlite` for why that keeps every edit reported "saved
 * locally" across an app kill) unless `synchronous: 'full'` is given.
 */
import type { DB, Scalar } from '@op-engineering/op-sqlite'
import type { SeqsyncStore, StoreOptions } from './store.js'
import { type SqlConnection, type SqlValue, SqlStore } from './sqlstore.js'

export interface OpSqliteStoreOptions extends StoreOptions {
  /** `normal` (default) or `full`: see `@seqsync/client/sqlite`. */
  synchronous?: 'normal' | 'full'
}

/** A row value as the core reads it: op-sqlite hands BLOBs out as
 * `ArrayBuffer`s, numbers as numbers, text as strings. */
function value (v: Scalar): SqlValue {
  if (v === null || typeof v === 'string' || typeof v === 'number') return v
  if (typeof v === 'boolean') return v ? 1 : 0
  if (v instanceof ArrayBuffer) return v
  // Any other ArrayBufferView: its bytes.
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength)
}

/** The core's connection over an op-sqlite `DB`. Every statement goes
 * through `execute` (asynchronous: it runs on op-sqlite's thread, never
 * blocking the JS thread). */
function connection (db: DB): SqlConnection {
  return {
    run: async (sql: string, params: SqlValue[]) => {
      const result = await db.execute(sql, params as Scalar[])
      return result.insertId ?? 0
    },
    all: async (sql: string, params: SqlValue[]) => {
      const result = await db.execute(sql, params as Scalar[])
      return result.rows.map((row: Record<string, Scalar>) => {
        const out: Record<string, SqlValue> = {}
        for (const [name, v] of Object.entries(row)) out[name] = value(v)
        return out
      })
    },
    exec: async (sql: string) => { await db.execute(sql) },
    close: async () => { await db.closeAsync() }
  }
}

/** A store in an open op-sqlite database (the store closes it on
 * `close()`). Its tables are created on first use if missing. */
export function opSqliteStore (db: DB, options: OpSqliteStoreOptions = {}): SeqsyncStore {
  return new SqlStore(connection(db), options, [
    'PRAGMA journal_mode = WAL',
    `PRAGMA synchronous = ${options.synchronous === 'full' ? 'FULL' : 'NORMAL'}`,
    'PRAGMA busy_timeout = 5000'
  ])
}
