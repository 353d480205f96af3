//! The schema of a small notes app, shared by the migration tests of every
//! crate, so each test migrates the same shapes.
//!
//! - v1: map `note` with `title`; array `tags`; text `content`.
//! - v2 (step 1 → 2): `title` is renamed `name`, and `status` gets the
//!   default `"draft"` when absent.
//! - v3 (step 2 → 3): array `history` gets `"v3"` once, and `content` starts
//!   with `"# "` (a heading mark) once.
//!
//! Both steps are re-runnable: they move only what is still in the old shape.

use seqsync_engine::{DocId, Migrations, StepError};
use yrs::types::ToJson;
use yrs::{
    Any, Array, ArrayRef, Doc, GetString, Map, MapRef, Out, ReadTxn, StateVector, Text, Transact,
    TransactionMut, WriteTxn,
};

pub const NOTE: &str = "note";
pub const TAGS: &str = "tags";
pub const HISTORY: &str = "history";
pub const CONTENT: &str = "content";
pub const HEADING: &str = "# ";

/// Steps 1 → 2 → 3.
pub fn migrations() -> Migrations {
    Migrations::new().step(1, rename_title).step(2, mark_v3)
}

/// Step 1 → 2 only.
pub fn migrations_to_v2() -> Migrations {
    Migrations::new().step(1, rename_title)
}

/// 1 → 2: `title` becomes `name` (the old key's value wins: it was written
/// by a client that did not know `name`), `status` defaults to `"draft"`.
pub fn rename_title(_: &DocId, txn: &mut TransactionMut<'_>) -> Result<(), StepError> {
    let note = txn.get_or_insert_map(NOTE);
    if let Some(title) = note.get(txn, "title") {
        let title = plain_string(txn, &title);
        note.insert(txn, "name", title);
        note.remove(txn, "title");
    }
    if note.get(txn, "status").is_none() {
        note.insert(txn, "status", "draft");
    }
    Ok(())
}

/// 2 → 3: `history` records `"v3"` once and `content` starts with a heading
/// mark once.
pub fn mark_v3(_: &DocId, txn: &mut TransactionMut<'_>) -> Result<(), StepError> {
    let history = txn.get_or_insert_array(HISTORY);
    let marked = history.iter(txn).any(|v| plain_string(txn, &v) == "v3");
    if !marked {
        let len = history.len(txn);
        history.insert(txn, len, "v3");
    }
    let content = txn.get_or_insert_text(CONTENT);
    if !content.get_string(txn).starts_with(HEADING) {
        content.insert(txn, 0, HEADING);
    }
    Ok(())
}

fn plain_string<T: ReadTxn>(txn: &T, value: &Out) -> String {
    match value.to_json(txn) {
        Any::String(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// What a note holds, read back for assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoteView {
    pub title: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub tags: Vec<String>,
    pub history: Vec<String>,
    pub content: String,
}

pub fn view(doc: &Doc) -> NoteView {
    let txn = doc.transact();
    let mut out = NoteView::default();
    if let Some(note) = txn.get_map(NOTE) {
        let get = |key: &str| note.get(&txn, key).map(|v| plain_string(&txn, &v));
        out.title = get("title");
        out.name = get("name");
        out.status = get("status");
    }
    if let Some(tags) = txn.get_array(TAGS) {
        out.tags = tags.iter(&txn).map(|v| plain_string(&txn, &v)).collect();
    }
    if let Some(history) = txn.get_array(HISTORY) {
        out.history = history.iter(&txn).map(|v| plain_string(&txn, &v)).collect();
    }
    if let Some(content) = txn.get_text(CONTENT) {
        out.content = content.get_string(&txn);
    }
    out
}

/// A document loaded from one update (UTF-16 offsets, like the server's).
pub fn doc_from(update: &[u8], client_id: u64) -> Doc {
    let doc = Doc::with_options(yrs::Options {
        client_id: yrs::ClientID::new(client_id),
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::default()
    });
    apply(&doc, update);
    doc
}

pub fn apply(doc: &Doc, update: &[u8]) {
    use yrs::updates::decoder::Decode;
    let update = yrs::Update::decode_v1(update).unwrap();
    doc.transact_mut().apply_update(update).unwrap();
}

pub fn state_of(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// A v1 client edit: set the title, add a tag, type at the end of the
/// content. Returns the update.
pub fn v1_edit(doc: &Doc, title: Option<&str>, tag: Option<&str>, typed: &str) -> Vec<u8> {
    let mut txn = doc.transact_mut();
    let note: MapRef = txn.get_or_insert_map(NOTE);
    if let Some(title) = title {
        note.insert(&mut txn, "title", title);
    }
    if let Some(tag) = tag {
        let tags: ArrayRef = txn.get_or_insert_array(TAGS);
        let len = tags.len(&txn);
        tags.insert(&mut txn, len, tag);
    }
    if !typed.is_empty() {
        let content = txn.get_or_insert_text(CONTENT);
        let len = content.len(&txn);
        content.insert(&mut txn, len, typed);
    }
    txn.encode_update_v1()
}
