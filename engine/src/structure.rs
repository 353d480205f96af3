//! The block structure of Yjs v1 updates, read without integrating them,
//! and the one shape of update that yrs 0.28.1 must never integrate (fuzz
//! finding F3, a heap use-after-free).
//!
//! # Why this module exists
//!
//! `TransactionMut::apply_update` first trims an incoming update by what
//! the document already has: `BlockSet::exclude` walks the document's
//! *known ranges* of each client (`[0, next clock)` minus the clock gaps,
//! "skips", that out-of-order updates leave) and splits the incoming items
//! at each range's start and end, then replaces the part inside the range
//! by a `Skip`, which frees that item. A split links the two halves by raw
//! pointers (`left.right = right_half`). When a known range starts strictly
//! inside an incoming item (which needs a gap in the document before that
//! range), the kept left half still points at the freed right half, and
//! `integrate_item` reads through it: a use-after-free that `catch_unwind`
//! cannot contain. yrs retries its pending update inside the same call, so
//! the same holds for a parked (pending) item that a gap *created by this
//! update* would split.
//!
//! # Why refusing it costs honest clients nothing
//!
//! A document's clocks of a client resume after a gap only where yrs
//! integrated an item whose left origin is not the clock just before it
//! (otherwise that origin would be missing and the item would be parked, not
//! integrated). An encoded item spanning clocks `[b, e)` claims that every
//! clock after `b` has the previous clock as its origin. So an item spanning
//! the start of such a range contradicts what the document already holds: no
//! Yjs encoder writes it. Every update of the editing traces and of the
//! Node clients passes (`tests/legitimate_updates.rs`).
//!
//! The check is only run when it can matter (the document has a gap or a
//! pending update), so an ordinary push pays nothing for it.

use std::collections::HashMap;
use std::ops::Range;

use yrs::block::{
    ClientID, ItemContent, BLOCK_GC_REF_NUMBER, BLOCK_ITEM_DOC_REF_NUMBER,
    BLOCK_ITEM_JSON_REF_NUMBER, BLOCK_SKIP_REF_NUMBER,
};
use yrs::block::{HAS_ORIGIN, HAS_PARENT_SUB, HAS_RIGHT_ORIGIN};
use yrs::encoding::read::{Cursor, Read};
use yrs::updates::decoder::{Decoder, DecoderV1};

/// What one block of an update is, as far as the check needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockKind {
    /// An item (content), which yrs may split and link by pointers.
    Item,
    /// An item with legacy JSON content (content ref 2), which yrs 0.28.1
    /// decodes reading one string more than it encodes (fuzz finding F2):
    /// a document holding one encodes into bytes nobody can decode.
    JsonItem,
    /// A subdocument (content ref 9). yrs 0.28.1 leaks every subdocument
    /// it decodes (about 2.5 KB each, a reference cycle), so the scan reads
    /// its guid and options itself instead of letting yrs build a `Doc`.
    DocItem,
    /// Garbage-collected clocks: integrated, never split by pointers.
    Gc,
    /// A hole in the update's own clocks.
    Skip,
}

/// One block of one client: its clock range and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScannedBlock {
    pub clocks: Range<u32>,
    pub kind: BlockKind,
    /// An id of the item's own client at or after its clock that it names
    /// as origin, right origin or parent (F6).
    pub later_reference: Option<yrs::ID>,
}

/// Every block of an update, per client, in the update's order; a
/// client's blocks never overlap (`scan_update` refuses that, F5).
pub(crate) type ScannedUpdate = HashMap<ClientID, Vec<ScannedBlock>>;

/// Reads the blocks of a Yjs v1 update exactly as yrs's `Update::decode_v1`
/// does (same field order, same content decoder), keeping only each block's
/// clocks and kind. The delete set is not read.
///
/// Errors: a message when the bytes are not an update; callers scan bytes
/// that yrs decoded or encoded already, so an error means yrs and this
/// reader disagree and the update must be refused.
///
/// Never panics: yrs's readers can (a client id of 53 bits or more trips
/// a debug assertion in `ClientID::new`, found by the fuzzer), so the scan
/// runs under `catch_unwind`, as `decode_update` does.
pub(crate) fn scan_update(bytes: &[u8]) -> Result<ScannedUpdate, String> {
    std::panic::catch_unwind(|| scan_blocks(bytes)).unwrap_or_else(|_| {
        Err("the update's blocks do not read: the decoder rejected the bytes".to_owned())
    })
}

fn scan_blocks(bytes: &[u8]) -> Result<ScannedUpdate, String> {
    let mut decoder = DecoderV1::new(Cursor::new(bytes));
    let error = |e: yrs::encoding::read::Error| format!("the update's blocks do not read: {e}");
    let clients: u32 = decoder.read_var().map_err(error)?;
    let mut scanned = ScannedUpdate::new();
    for _ in 0..clients {
        let blocks: u32 = decoder.read_var().map_err(error)?;
        let client = decoder.read_client().map_err(error)?;
        let mut clock: u32 = decoder.read_var().map_err(error)?;
        let list = scanned.entry(client).or_default();
        // F5: yrs appends a client's second section to the first without
        // looking, and integrating a block at clocks it has just
        // integrated overwrites that item in the block store (it takes it
        // for a skip) while the document still links it: freed memory is
        // read on the next update. One section per client is what every
        // Yjs encoder writes; a later section may only continue after the
        // earlier one.
        if let Some(last) = list.last() {
            if clock < last.clocks.end {
                return Err(format!(
                    "client {client} has two sections and the second starts at clock {clock}, \
                     inside clocks the first already covers (up to {}): no Yjs encoder writes \
                     that, and yrs 0.28 would free an item it still uses",
                    last.clocks.end
                ));
            }
        }
        for _ in 0..blocks {
            let info = decoder.read_info().map_err(error)?;
            let mut later_reference = None;
            let (kind, len) = match info {
                BLOCK_SKIP_REF_NUMBER => (BlockKind::Skip, decoder.read_var().map_err(error)?),
                BLOCK_GC_REF_NUMBER => (BlockKind::Gc, decoder.read_len().map_err(error)?),
                info => {
                    // yrs picks the content decoder by the low four bits
                    // (`ItemContent::decode`), so a fifth bit set does not
                    // hide JSON content (the fuzzer's third F2 witness).
                    let kind = match info & 0b1111 {
                        BLOCK_ITEM_JSON_REF_NUMBER => BlockKind::JsonItem,
                        BLOCK_ITEM_DOC_REF_NUMBER => BlockKind::DocItem,
                        _ => BlockKind::Item,
                    };
                    let (len, references) = read_item(&mut decoder, info).map_err(error)?;
                    // F6: an item can only point at its own client's
                    // items created before it (lower clocks); see
                    // `first_later_reference`.
                    later_reference = references
                        .into_iter()
                        .flatten()
                        .find(|id| id.client == client && id.clock >= clock);
                    (kind, len)
                }
            };
            // yrs drops empty items and refuses empty skips and GCs.
            if len == 0 {
                continue;
            }
            let end = clock
                .checked_add(len)
                .ok_or_else(|| format!("client {client}'s clocks overflow"))?;
            list.push(ScannedBlock {
                clocks: clock..end,
                kind,
                later_reference,
            });
            clock = end;
        }
    }
    Ok(scanned)
}

/// Reads one item's header and content (as `Update::decode_block` does):
/// its length in clocks, and the ids it refers to (origin, right origin,
/// parent item).
fn read_item(
    decoder: &mut DecoderV1<'_>,
    info: u8,
) -> Result<(u32, [Option<yrs::ID>; 3]), yrs::encoding::read::Error> {
    let cant_copy_parent_info = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0;
    let mut references = [None; 3];
    if info & HAS_ORIGIN != 0 {
        references[0] = Some(decoder.read_left_id()?);
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        references[1] = Some(decoder.read_right_id()?);
    }
    if cant_copy_parent_info {
        if decoder.read_parent_info()? {
            decoder.read_string()?;
        } else {
            references[2] = Some(decoder.read_left_id()?);
        }
        if info & HAS_PARENT_SUB != 0 {
            decoder.read_string()?;
        }
    }
    if info & 0b1111 == BLOCK_ITEM_DOC_REF_NUMBER {
        // As `Options::decode` reads it (guid, then an Any of options),
        // without building the `Doc` that yrs would leak. One clock.
        decoder.read_string()?;
        decoder.read_any()?;
        return Ok((1, references));
    }
    let content = ItemContent::decode(decoder, info)?;
    // `Item::new` measures items in UTF-16 code units, as Yjs does.
    Ok((content.len_utf16(), references))
}

/// The first item of `kind` in a scanned update, if any: `(client,
/// clock)` (subdocuments, F7; legacy JSON content, F2).
pub(crate) fn first_of_kind(scanned: &ScannedUpdate, kind: BlockKind) -> Option<(ClientID, u32)> {
    scanned.iter().find_map(|(client, blocks)| {
        blocks
            .iter()
            .find(|b| b.kind == kind)
            .map(|b| (*client, b.clocks.start))
    })
}

/// The first item that names a later item of its own client as its
/// origin, right origin or parent (F6): `(client, clock, named id)`.
///
/// Items can only refer to items that existed when they were created, and
/// a client's own earlier items have lower clocks, so no Yjs client writes
/// this. yrs integrates such an item once the named one arrives, but the
/// document's encoding then never loads on a fresh client (the item waits
/// for one that comes after it in the same client's order), so readers
/// would silently miss content. Pushes are refused for it; stored changes
/// are not (they load on the server).
pub(crate) fn first_later_reference(scanned: &ScannedUpdate) -> Option<(ClientID, u32, yrs::ID)> {
    scanned.iter().find_map(|(client, blocks)| {
        blocks
            .iter()
            .find_map(|b| b.later_reference.map(|id| (*client, b.clocks.start, id)))
    })
}

/// The clocks at which a client's known ranges resume after a gap: the
/// starts above 0 of its maximal integrated runs (`known` is sorted and
/// merged).
pub(crate) fn gap_ends(known: &[Range<u32>]) -> impl Iterator<Item = u32> + '_ {
    known.iter().map(|r| r.start).filter(|start| *start > 0)
}

/// The clocks at which integrating `blocks` may leave the document's
/// clocks resuming after a gap: the start of the first non-skip block and
/// of every non-skip block that follows a skip.
pub(crate) fn run_starts(blocks: &[ScannedBlock]) -> Vec<u32> {
    let mut starts = Vec::new();
    let mut after_hole = true;
    for block in blocks {
        match block.kind {
            BlockKind::Skip => after_hole = true,
            BlockKind::Item | BlockKind::JsonItem | BlockKind::DocItem | BlockKind::Gc => {
                if after_hole && block.clocks.start > 0 {
                    starts.push(block.clocks.start);
                }
                after_hole = false;
            }
        }
    }
    starts
}

/// The first item of `blocks` that strictly contains one of `clocks`
/// (`start < clock < end`): yrs would split it there and free its right
/// half while the left half still points at it.
pub(crate) fn item_spanning(
    blocks: &[ScannedBlock],
    clocks: impl IntoIterator<Item = u32>,
) -> Option<(Range<u32>, u32)> {
    let items: Vec<&ScannedBlock> = blocks
        .iter()
        .filter(|b| {
            matches!(
                b.kind,
                BlockKind::Item | BlockKind::JsonItem | BlockKind::DocItem
            )
        })
        .collect();
    if items.is_empty() {
        return None;
    }
    for clock in clocks {
        // Blocks of one update are in clock order per client section.
        if let Some(item) = items
            .iter()
            .find(|b| b.clocks.start < clock && clock < b.clocks.end)
        {
            return Some((item.clocks.clone(), clock));
        }
    }
    None
}

/// Adds `range` to a sorted, merged list of ranges, keeping it so.
pub(crate) fn add_range(ranges: &mut Vec<Range<u32>>, range: Range<u32>) {
    if range.is_empty() {
        return;
    }
    // Fast path: appending at or after the end (typing).
    if let Some(last) = ranges.last_mut() {
        if range.start >= last.start && range.start <= last.end {
            last.end = last.end.max(range.end);
            return;
        }
        if range.start > last.end {
            ranges.push(range);
            return;
        }
    } else {
        ranges.push(range);
        return;
    }
    ranges.push(range);
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u32>> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

/// What a root's items say about its type (see `json`): whether any has a
/// key (a map entry), or sits in its list holding text (chunks, embeds,
/// formatting marks), XML nodes, or other values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RootEvidence {
    pub keys: bool,
    pub text: bool,
    pub xml: bool,
    pub values: bool,
}

/// Where an item sits, as its header says.
#[derive(Clone, Debug)]
enum Placement {
    /// In a root type, by name, with or without a key.
    Root { name: String, keyed: bool },
    /// Inside another item's type (a nested type): not a root's.
    Nested,
    /// Where the item with this id sits (the header names an origin
    /// instead of a parent, as Yjs writes every item but the first of a
    /// run).
    Like(yrs::ID),
}

/// What an item's content says about its parent's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContentEvidence {
    Nothing,
    Text,
    Xml,
    Value,
}

/// Per root name, what the items of a Yjs v1 update (a document's full
/// state) say about its type. Items that name an origin instead of their
/// parent sit where that origin sits; those are resolved through the
/// update's own items (a bounded number of passes: an origin of another
/// client may come later in the update).
///
/// Errors: a message when the bytes are not an update. Never panics (as
/// [`scan_update`]).
pub(crate) fn scan_root_evidence(bytes: &[u8]) -> Result<HashMap<String, RootEvidence>, String> {
    std::panic::catch_unwind(|| root_evidence(bytes)).unwrap_or_else(|_| {
        Err("the update's blocks do not read: the decoder rejected the bytes".to_owned())
    })
}

fn root_evidence(bytes: &[u8]) -> Result<HashMap<String, RootEvidence>, String> {
    /// Passes over items whose origin was not placed yet.
    const MAX_PASSES: usize = 16;
    let mut decoder = DecoderV1::new(Cursor::new(bytes));
    let error = |e: yrs::encoding::read::Error| format!("the update's blocks do not read: {e}");
    // (client, clocks, placement, content evidence), in update order.
    let mut items: Vec<(ClientID, Range<u32>, Placement, ContentEvidence)> = Vec::new();
    let clients: u32 = decoder.read_var().map_err(error)?;
    for _ in 0..clients {
        let blocks: u32 = decoder.read_var().map_err(error)?;
        let client = decoder.read_client().map_err(error)?;
        let mut clock: u32 = decoder.read_var().map_err(error)?;
        for _ in 0..blocks {
            let info = decoder.read_info().map_err(error)?;
            let len = match info {
                BLOCK_SKIP_REF_NUMBER => decoder.read_var().map_err(error)?,
                BLOCK_GC_REF_NUMBER => decoder.read_len().map_err(error)?,
                info => {
                    let (len, placement, content) =
                        read_placed_item(&mut decoder, info).map_err(error)?;
                    if len > 0 {
                        let end = clock.checked_add(len).ok_or("clocks overflow")?;
                        items.push((client, clock..end, placement, content));
                    }
                    len
                }
            };
            clock = clock.checked_add(len).ok_or("clocks overflow")?;
        }
    }
    // Where each item sits: `None` until known.
    let mut placed: Vec<Option<Option<(String, bool)>>> = items
        .iter()
        .map(|(_, _, placement, _)| match placement {
            Placement::Root { name, keyed } => Some(Some((name.clone(), *keyed))),
            Placement::Nested => Some(None),
            Placement::Like(_) => None,
        })
        .collect();
    let mut by_client: HashMap<ClientID, Vec<usize>> = HashMap::new();
    for (index, (client, _, _, _)) in items.iter().enumerate() {
        by_client.entry(*client).or_default().push(index);
    }
    let find = |id: &yrs::ID| -> Option<usize> {
        let indexes = by_client.get(&id.client)?;
        let at = indexes.partition_point(|&i| items[i].1.end <= id.clock);
        indexes
            .get(at)
            .copied()
            .filter(|&i| items[i].1.contains(&id.clock))
    };
    for _ in 0..MAX_PASSES {
        let mut progress = false;
        for index in 0..items.len() {
            if placed[index].is_some() {
                continue;
            }
            if let Placement::Like(id) = &items[index].2 {
                // An origin this update does not hold (or not placed after
                // every pass) leaves the item unplaced: it is no evidence.
                if let Some(known) = find(id).and_then(|i| placed[i].clone()) {
                    placed[index] = Some(known);
                    progress = true;
                }
            }
        }
        if !progress {
            break;
        }
    }
    let mut evidence: HashMap<String, RootEvidence> = HashMap::new();
    for (index, (_, _, _, content)) in items.iter().enumerate() {
        let Some(Some((name, keyed))) = &placed[index] else {
            continue;
        };
        let root = evidence.entry(name.clone()).or_default();
        if *keyed {
            root.keys = true;
            continue;
        }
        match content {
            ContentEvidence::Nothing => {}
            ContentEvidence::Text => root.text = true,
            ContentEvidence::Xml => root.xml = true,
            ContentEvidence::Value => root.values = true,
        }
    }
    Ok(evidence)
}

/// Reads one item as [`read_item`] does, keeping where it sits and what
/// its content says about its parent's type.
fn read_placed_item(
    decoder: &mut DecoderV1<'_>,
    info: u8,
) -> Result<(u32, Placement, ContentEvidence), yrs::encoding::read::Error> {
    let cant_copy_parent_info = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0;
    let origin = if info & HAS_ORIGIN != 0 {
        Some(decoder.read_left_id()?)
    } else {
        None
    };
    let right_origin = if info & HAS_RIGHT_ORIGIN != 0 {
        Some(decoder.read_right_id()?)
    } else {
        None
    };
    let placement = if cant_copy_parent_info {
        let root = if decoder.read_parent_info()? {
            Some(decoder.read_string()?.to_owned())
        } else {
            decoder.read_left_id()?;
            None
        };
        let keyed = if info & HAS_PARENT_SUB != 0 {
            decoder.read_string()?;
            true
        } else {
            false
        };
        match root {
            Some(name) => Placement::Root { name, keyed },
            None => Placement::Nested,
        }
    } else {
        // Yjs gives an item with an origin its origin's parent (and key).
        match origin.or(right_origin) {
            Some(id) => Placement::Like(id),
            None => Placement::Nested,
        }
    };
    if info & 0b1111 == BLOCK_ITEM_DOC_REF_NUMBER {
        decoder.read_string()?;
        decoder.read_any()?;
        return Ok((1, placement, ContentEvidence::Value));
    }
    let content = ItemContent::decode(decoder, info)?;
    let evidence = match &content {
        ItemContent::Deleted(_) => ContentEvidence::Nothing,
        ItemContent::String(_) | ItemContent::Embed(_) | ItemContent::Format(_, _) => {
            ContentEvidence::Text
        }
        ItemContent::Type(branch) => match branch.type_ref() {
            yrs::types::TypeRef::XmlElement(_)
            | yrs::types::TypeRef::XmlText
            | yrs::types::TypeRef::XmlHook
            | yrs::types::TypeRef::XmlFragment => ContentEvidence::Xml,
            _ => ContentEvidence::Value,
        },
        _ => ContentEvidence::Value,
    };
    Ok((content.len_utf16(), placement, evidence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, ReadTxn, Text, Transact};

    /// The scanner must see the same blocks yrs decodes, or the check
    /// would look at other clocks than yrs splits.
    #[test]
    fn scanned_blocks_match_what_yrs_encodes() {
        let doc = Doc::with_client_id(9);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "hello world");
        text.insert(&mut doc.transact_mut(), 0, "ab");
        text.remove_range(&mut doc.transact_mut(), 1, 3);
        let map = doc.get_or_insert_map("m");
        yrs::Map::insert(&map, &mut doc.transact_mut(), "k", 42);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        let scanned = scan_update(&update).unwrap();
        let client = ClientID::new(9);
        let blocks = &scanned[&client];
        let end = blocks.last().unwrap().clocks.end;
        assert_eq!(end, doc.transact().state_vector().get(&client));
        for pair in blocks.windows(2) {
            assert_eq!(pair[0].clocks.end, pair[1].clocks.start);
        }
        // And it survives a round trip through yrs's own Update.
        let again = yrs::Update::decode_v1(&update).unwrap().encode_v1();
        assert_eq!(scan_update(&again).unwrap(), scanned);
    }

    /// Ranges stay sorted and merged whatever order they arrive in.
    #[test]
    fn ranges_merge_in_any_order() {
        let mut ranges = Vec::new();
        for r in [10..12, 0..3, 3..5, 20..25, 11..15, 7..8] {
            add_range(&mut ranges, r);
        }
        assert_eq!(ranges, vec![0..5, 7..8, 10..15, 20..25]);
        assert_eq!(gap_ends(&ranges).collect::<Vec<_>>(), vec![7, 10, 20]);
    }
}
