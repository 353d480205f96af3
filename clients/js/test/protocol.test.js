// Byte-exact tests of the sync socket codec (docs/PROTOCOL.md, "Frames"),
// including the example conversation of PROTOCOL.md.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { encodeFrame, decodeFrame, decodeServerFrame, decodeClientFrame, FrameError, toHex } from '../dist/protocol.js'

const hex = (s) => Uint8Array.from((s.replace(/\s+/g, '').match(/../g) ?? []).map(b => parseInt(b, 16)))
const ascii = (s) => toHex(new TextEncoder().encode(s))
const EPOCH = '5d2c6f0a9b8e47e1a3c2d4f6b8a0c1e2'
const CHECKSUM = '0123456789abcdef'

function roundTrip (frame, bytesHex) {
  const bytes = encodeFrame(frame)
  assert.equal(toHex(bytes), bytesHex.replace(/\s+/g, ''), `encoding of ${frame.type}`)
  const back = decodeFrame(bytes)
  assert.deepEqual(normalize(back), normalize(frame))
}

function normalize (frame) {
  return JSON.parse(JSON.stringify(frame, (_, v) => v instanceof Uint8Array ? toHex(v) : v))
}

test('the example conversation of PROTOCOL.md, byte for byte', () => {
  const doc = new Y.Doc()
  doc.getText('t').insert(0, 'hi')
  const update = Y.encodeStateAsUpdate(doc)
  const len = update.length.toString(16).padStart(2, '0')
  assert.ok(update.length < 128)
  // → hello 01 05 70 68 6f 6e 65 00 00 00 00 00
  roundTrip({ type: 'hello', peer: 'phone', after: 0, epoch: '', checksum: '', schemaVersion: 0, docs: [] },
    '01 05 70 68 6f 6e 65 00 00 00 00 00')
  // ← welcome 40 20 <32 bytes of epoch> 00 01 80 02
  roundTrip({ type: 'welcome', epoch: EPOCH, head: 0, schemaVersion: 1, maxPushesInFlight: 256 },
    '40 20' + ascii(EPOCH) + '00 01 80 02')
  // ← up_to_date 44 00 00
  roundTrip({ type: 'up_to_date', head: 0, checksum: '' }, '44 00 00')
  // → push 02 01 05 6e 6f 74 65 31 <len> <update>
  roundTrip({ type: 'push', id: 1, doc: 'note1', update }, '02 01 05 6e 6f 74 65 31' + len + toHex(update))
  // ← changes 43 01 10 <16 bytes of checksum> 01 01 05 6e 6f 74 65 31 00 01 05 70 68 6f 6e 65 <len> <update>
  roundTrip({
    type: 'changes',
    through: 1,
    checksum: CHECKSUM,
    changes: [{ seq: 1, doc: 'note1', kind: 'update', schemaVersion: 1, origin: 'phone', payload: update }]
  }, '43 01 10' + ascii(CHECKSUM) + '01 01 05 6e 6f 74 65 31 00 01 05 70 68 6f 6e 65' + len + toHex(update))
  // ← pushed 41 01 01 01 01
  roundTrip({ type: 'pushed', id: 1, head: 1, seqs: [1] }, '41 01 01 01 01')
  // ← up_to_date 44 01 10 <16 bytes of checksum>
  roundTrip({ type: 'up_to_date', head: 1, checksum: CHECKSUM }, '44 01 10' + ascii(CHECKSUM))
  // → ack 04 01, ← acked 45 01
  roundTrip({ type: 'ack', seq: 1 }, '04 01')
  roundTrip({ type: 'acked', seq: 1 }, '45 01')
})

test('every other frame type round-trips with exact bytes', () => {
  roundTrip({ type: 'hello', peer: 'p', after: 300, epoch: EPOCH, checksum: CHECKSUM, schemaVersion: 2, docs: ['a', 'bc'] },
    '01 01 70 ac 02 20' + ascii(EPOCH) + '10' + ascii(CHECKSUM) + '02 02 01 61 02 62 63')
  roundTrip({ type: 'push_batch', id: 7, updates: [{ doc: 'a', update: hex('0000') }, { doc: 'b', update: hex('01') }] },
    '03 07 02 01 61 02 00 00 01 62 01 01')
  roundTrip({ type: 'pushed', id: 7, head: 130, seqs: [129, 0] }, '41 07 82 01 02 81 01 00')
  roundTrip({ type: 'push_error', id: 3, code: 'too_large', message: 'x' }, '42 03 09' + ascii('too_large') + '01 78')
  roundTrip({
    type: 'changes',
    through: 9,
    checksum: CHECKSUM,
    changes: [
      { seq: 8, doc: 'd', kind: 'delete', schemaVersion: 1, origin: '', payload: new Uint8Array() },
      { seq: 9, doc: 'e', kind: 'snapshot', schemaVersion: 1, origin: '', payload: hex('0000') }
    ]
  }, '43 09 10' + ascii(CHECKSUM) + '02 08 01 64 01 01 00 00 09 01 65 02 01 00 02 00 00')
  roundTrip({ type: 'reset', reason: 'foreign_epoch', epoch: EPOCH, head: 12 },
    '46 0d' + ascii('foreign_epoch') + '20' + ascii(EPOCH) + '0c')
  roundTrip({ type: 'error', code: 'forbidden', message: '' }, '47 09' + ascii('forbidden') + '00')
  roundTrip({ type: 'ack_error', seq: 5, code: 'ack_beyond_head', message: '' },
    '48 05 0f' + ascii('ack_beyond_head') + '00')
  roundTrip({ type: 'welcome', epoch: '', head: 0, schemaVersion: 1, maxPushesInFlight: 1 }, '40 00 00 01 01')
})

test('the presence frames of PROTOCOL.md, byte for byte', () => {
  // One client (id 1, clock 1) with the state {"name":"ann"}.
  const update = hex('01 01 01 0e' + ascii('{"name":"ann"}'))
  roundTrip({ type: 'awareness', doc: 'note-1', update }, '05 06' + ascii('note-1') + '12' + toHex(update))
  roundTrip({ type: 'presence', doc: 'note-1', update }, '49 06' + ascii('note-1') + '12' + toHex(update))
  roundTrip({ type: 'leave', doc: 'note-1' }, '06 06' + ascii('note-1'))
  assert.throws(() => decodeServerFrame(hex('06 06' + ascii('note-1'))), FrameError)
  assert.throws(() => decodeClientFrame(hex('49 01 61 00')), FrameError)
})

test('varuints: 7 bits per byte, up to 2^53 - 1', () => {
  const big = Number.MAX_SAFE_INTEGER
  const bytes = encodeFrame({ type: 'ack', seq: big })
  assert.equal(toHex(bytes), '04ffffffffffffff0f')
  assert.equal(decodeFrame(bytes).seq, big)
  assert.equal(toHex(encodeFrame({ type: 'ack', seq: 127 })), '047f')
  assert.equal(toHex(encodeFrame({ type: 'ack', seq: 128 })), '048001')
  assert.equal(toHex(encodeFrame({ type: 'ack', seq: 16384 })), '04808001')
  // 2^53 does not fit
  assert.throws(() => decodeFrame(hex('04 80 80 80 80 80 80 80 10')), FrameError)
  assert.throws(() => encodeFrame({ type: 'ack', seq: -1 }), FrameError)
  assert.throws(() => encodeFrame({ type: 'ack', seq: 1.5 }), FrameError)
})

test('malformed frames are refused with a typed FrameError', () => {
  const cases = {
    empty: '',
    'unknown type': '05',
    'unknown server type': '48 00',
    'truncated varuint': '04 80',
    'truncated string': '01 05 70 68',
    'trailing bytes': '04 01 00',
    'truncated bytes': '02 01 01 61 05 00 00',
    'invalid utf-8': '47 02 c3 28 00',
    'unknown change kind': '43 01 00 01 01 01 61 03 01 00 00',
    'never-ending varuint': '04 80 80 80 80 80 80 80 80 80 80 00'
  }
  for (const [what, bytes] of Object.entries(cases)) {
    assert.throws(() => decodeFrame(hex(bytes)), (err) => {
      assert.ok(err instanceof FrameError, what)
      assert.equal(err.code, 'invalid_frame')
      return true
    }, what)
  }
})

test('direction checks', () => {
  assert.throws(() => decodeServerFrame(hex('04 01')), FrameError)
  assert.throws(() => decodeClientFrame(hex('45 01')), FrameError)
  assert.equal(decodeServerFrame(hex('45 01')).type, 'acked')
  assert.equal(decodeClientFrame(hex('04 01')).type, 'ack')
})

test('strings are UTF-8 with a byte length', () => {
  const bytes = encodeFrame({ type: 'ack', seq: 1 })
  assert.equal(bytes.length, 2)
  const push = encodeFrame({ type: 'push', id: 1, doc: 'é', update: new Uint8Array([0, 0]) })
  assert.equal(toHex(push), '020102c3a9020000')
})
