// The store contract (clients/js/test/support/store-contract.js) in a
// browser page, against the browser store (@seqsync/client/browser):
// a small runner with the part of node:test and node:assert/strict the
// contract uses. contract.test.js bundles this page, opens it in Chromium
// and reports each case as a node test.
import { browserStore } from '@seqsync/client/browser'
import { storeContract, reopenContract } from '../../../clients/js/test/support/store-contract.js'

const tests = []
let prefix = ''
const describe = (name, body) => {
  const outer = prefix
  prefix = `${name}: `
  body()
  prefix = outer
}
const test = (name, fn) => { tests.push({ name: prefix + name, fn }) }

function deepEqual (a, b) {
  if (Object.is(a, b)) return true
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false
  if (ArrayBuffer.isView(a)) return a.byteLength === b.byteLength && a.every((x, i) => x === b[i])
  const keys = Object.keys(a)
  if (keys.length !== Object.keys(b).length) return false
  return keys.every(k => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k], b[k]))
}
const show = v => { try { return JSON.stringify(v) } catch { return String(v) } }
const assert = {
  equal (actual, expected, message) {
    if (!Object.is(actual, expected)) throw new Error(`${message ?? 'not equal'}: ${show(actual)} !== ${show(expected)}`)
  },
  deepEqual (actual, expected, message) {
    if (!deepEqual(actual, expected)) throw new Error(`${message ?? 'not deep-equal'}: ${show(actual)} vs ${show(expected)}`)
  },
  ok (value, message) {
    if (!value) throw new Error(message ?? `not truthy: ${show(value)}`)
  }
}

const worker = new URL('/store-worker.js', location.href)
const run = Math.random().toString(36).slice(2, 8)
let n = 0
const newName = () => `contract-${run}-${n++}`
storeContract({ describe, test, assert }, 'browser (OPFS)', options => browserStore({ ...options, name: newName(), worker }))
reopenContract({ test, assert }, 'browser (OPFS)', name => browserStore({ name, worker }), newName)

window.runContract = async () => {
  const results = []
  for (const t of tests) {
    const started = performance.now()
    try {
      await t.fn()
      results.push({ name: t.name, ok: true, ms: performance.now() - started })
    } catch (err) {
      results.push({ name: t.name, ok: false, error: String(err?.stack ?? err), ms: performance.now() - started })
    }
  }
  return results
}
