// op-sqlite's `DB` API, served from better-sqlite3 in Node: the thin
// adapter the store contract suite runs the op-sqlite store through.
//
// Why an adapter: op-sqlite's React Native runtime (JSI, a native thread)
// cannot run on these machines, and the Node build it ships
// (`node/dist`) does not load under Node's ESM resolver (it imports
// `./database` without an extension). So this file implements the part of
// op-sqlite's published `DB` type the store uses, with op-sqlite's
// observable behaviour: `execute` is asynchronous (it resolves on a later
// turn, as the native thread's answer does), returns `{ rows, insertId,
// rowsAffected }`, and hands BLOBs out as `ArrayBuffer`s.
//
// `failOn(predicate)` makes `execute` reject for statements the predicate
// picks (a fault injected through the binding, for the atomicity test).
import Database from 'better-sqlite3'

export function openOpSqliteOnNode (path) {
  const db = new Database(path)
  const statements = new Map()
  let fail = null
  let closed = false
  const prepared = (sql) => {
    let stmt = statements.get(sql)
    if (stmt === undefined) {
      stmt = db.prepare(sql)
      statements.set(sql, stmt)
    }
    return stmt
  }
  const toScalar = (v) => (Buffer.isBuffer(v) ? v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength) : v)
  const fromParam = (v) => (v instanceof ArrayBuffer ? Buffer.from(v) : ArrayBuffer.isView(v) ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : v)
  const executeNow = (sql, params = []) => {
    if (closed) throw new Error('op-sqlite: the database is closed')
    if (fail !== null && fail(sql, params)) throw new Error(`op-sqlite: injected failure of ${sql.split(/\s+/).slice(0, 3).join(' ')}`)
    const stmt = prepared(sql)
    const bound = params.map(fromParam)
    if (stmt.reader) {
      const rows = stmt.all(...bound).map(row => Object.fromEntries(Object.entries(row).map(([k, v]) => [k, toScalar(v)])))
      return { rows, rowsAffected: 0 }
    }
    const info = stmt.run(...bound)
    return { rows: [], rowsAffected: info.changes, insertId: Number(info.lastInsertRowid) }
  }
  return {
    execute: (sql, params) => new Promise((resolve, reject) => {
      setImmediate(() => {
        try { resolve(executeNow(sql, params)) } catch (err) { reject(err) }
      })
    }),
    executeSync: executeNow,
    close: () => { closed = true; db.close() },
    closeAsync: async () => { closed = true; db.close() },
    /** Test hook: reject the statements `predicate(sql, params)` picks (null: none). */
    failOn: (predicate) => { fail = predicate }
  }
}
