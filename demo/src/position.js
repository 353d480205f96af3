// What the server's log holds compared with what this page holds.
//
// The page keeps a mirror: a Y.Doc fed only by the document's committed
// changes (its stored state, then every change of the change stream, which
// the server sends after commit). The page's edits are saved when the
// mirror contains everything the page's own document contains: its state
// vector (insertions) and its delete set (deletions, which a state vector
// does not show). Then "saved through seq N" holds with N the last seq the
// stream delivered: every edit shown is in the log at or before N.
import * as Y from 'yjs'

// Whether the sorted, merged ranges `outer` cover every range of `inner`.
function rangesCover (outer = [], inner = []) {
  let i = 0
  for (const { clock, len } of inner) {
    let at = clock
    const end = clock + len
    while (at < end) {
      while (i < outer.length && outer[i].clock + outer[i].len <= at) i++
      if (i >= outer.length || outer[i].clock > at) return false
      at = outer[i].clock + outer[i].len
    }
  }
  return true
}

// Whether document `big` contains everything of document `small`.
export function contains (big, small) {
  const s = Y.snapshot(small)
  const b = Y.snapshot(big)
  for (const [client, clock] of s.sv) {
    if ((b.sv.get(client) || 0) < clock) return false
  }
  for (const [client, ranges] of s.ds.clients) {
    if (!rangesCover(b.ds.clients.get(client), ranges)) return false
  }
  return true
}
