//! A document's content as JSON: what a search indexer, a support tool or
//! a webhook's receiver reads without a Yjs library (`GET
//! …/documents/{d}?format=json`).
//!
//! Why the root types are inferred: a Yjs update does not say what type a
//! root is. A client decides that when it calls `getText("content")` or
//! `getMap("meta")`, and yrs, loading bytes alone, leaves every root
//! undefined (its `to_json` answers `undefined` for each). So this module
//! reads the document's own items (`structure::scan_root_evidence`): a root
//! whose items have keys is a map; one holding text chunks (or embeds,
//! or formatting marks) is a text; one holding XML elements or XML text is
//! an XML fragment; one holding other values is an array. The value of
//! each is then what Yjs's `toJSON` gives for that type: a text as its
//! plain string (formatting dropped), an XML fragment as its XML string,
//! maps and arrays as JSON objects and arrays (nested types included), a
//! binary value as an array of byte values.
//!
//! A root whose every item was deleted has lost the trace of its type (a
//! deleted item keeps only its length): it is `null`.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};
use yrs::types::ToJson;
use yrs::{Any, GetString, ReadTxn, Transact};

use crate::structure::{scan_root_evidence, RootEvidence};
use crate::yjs::{decode_update, new_doc, UpdateDecodeError};

/// The type a root was inferred to have (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootKind {
    /// `Y.Text`: its plain string.
    Text,
    /// `Y.Map`: an object.
    Map,
    /// `Y.Array`: an array.
    Array,
    /// `Y.XmlFragment` (rich-text editors: ProseMirror, Tiptap): its XML.
    XmlFragment,
    /// Only deleted items remain: `null`.
    Unknown,
}

impl RootKind {
    fn of(evidence: &RootEvidence) -> Self {
        if evidence.xml {
            RootKind::XmlFragment
        } else if evidence.text {
            RootKind::Text
        } else if evidence.values {
            RootKind::Array
        } else if evidence.keys {
            RootKind::Map
        } else {
            RootKind::Unknown
        }
    }
}

/// Why a document's JSON could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentJsonError {
    /// The state is not a Yjs v1 update (a stored document that does not
    /// decode: restore it from a backup).
    #[error("the document's state does not decode: {0}")]
    Undecodable(#[from] UpdateDecodeError),
    /// yrs refused to integrate the state.
    #[error("the document's state does not load: {0}")]
    Unloadable(String),
}

/// A document as JSON: each root type's value, and the type each root was
/// inferred to have.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentJson {
    /// Root name → its value, sorted by name.
    pub roots: Map<String, Value>,
    /// Root name → the type it was read as.
    pub kinds: BTreeMap<String, RootKind>,
}

/// The root types of the document whose full state is `state` (a Yjs v1
/// update, as `GET …/documents/{d}` answers), as JSON (module docs).
///
/// Pure and blocking (CPU only; a large document takes as long as loading
/// it). Errors: [`DocumentJsonError`].
pub fn document_json(state: &[u8]) -> Result<DocumentJson, DocumentJsonError> {
    read_document(state, &new_doc())
}

/// [`document_json`] into a document the caller chose (`restore` edits
/// it): `doc`, empty, ends holding `state`, each root typed as read.
pub(crate) fn read_document(
    state: &[u8],
    doc: &yrs::Doc,
) -> Result<DocumentJson, DocumentJsonError> {
    let mut kinds: BTreeMap<String, RootKind> = BTreeMap::new();
    if state.len() > 2 {
        let evidence = scan_root_evidence(state)
            .map_err(|e| DocumentJsonError::Undecodable(UpdateDecodeError::Malformed(e)))?;
        for (name, evidence) in &evidence {
            kinds.insert(name.clone(), RootKind::of(evidence));
        }
    }
    load_state_into(state, doc)?;
    // Roots yrs knows but no item placed (their items all name an origin
    // this state does not hold): nothing says their type.
    {
        let txn = doc.transact();
        for (name, _) in txn.root_refs() {
            kinds.entry(name.to_owned()).or_insert(RootKind::Unknown);
        }
    }
    let mut roots = Map::new();
    for (name, kind) in &kinds {
        let value = match kind {
            // `get_or_insert_*` gives the undefined root its type; the
            // document is this function's own, so nothing else sees it.
            RootKind::Text => {
                let text = doc.get_or_insert_text(name.as_str());
                let txn = doc.transact();
                Value::String(text.get_string(&txn))
            }
            RootKind::XmlFragment => {
                let xml = doc.get_or_insert_xml_fragment(name.as_str());
                let txn = doc.transact();
                Value::String(xml.get_string(&txn))
            }
            RootKind::Map => {
                let map = doc.get_or_insert_map(name.as_str());
                let txn = doc.transact();
                any_to_json(&map.to_json(&txn))
            }
            RootKind::Array => {
                let array = doc.get_or_insert_array(name.as_str());
                let txn = doc.transact();
                any_to_json(&array.to_json(&txn))
            }
            RootKind::Unknown => Value::Null,
        };
        roots.insert(name.clone(), value);
    }
    Ok(DocumentJson { roots, kinds })
}

/// Applies a document's full state to `doc` (nothing for an empty state:
/// `Y.encodeStateAsUpdate` of nothing). Never panics: a state yrs cannot
/// integrate is an error.
fn load_state_into(state: &[u8], doc: &yrs::Doc) -> Result<(), DocumentJsonError> {
    if matches!(state, [] | [0, 0]) {
        return Ok(());
    }
    let update = decode_update(state)?;
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        doc.transact_mut().apply_update(update)
    }));
    match applied {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DocumentJsonError::Unloadable(e.to_string())),
        Err(_) => Err(DocumentJsonError::Unloadable("yrs panicked".to_owned())),
    }
}

/// yrs's `Any` as a JSON value: `undefined` and non-finite numbers as
/// `null`, binary as an array of byte values.
fn any_to_json(any: &Any) -> Value {
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(yrs::any::Number::Int(n)) => Value::Number((*n).into()),
        Any::Number(yrs::any::Number::Float(n)) => {
            Number::from_f64(*n).map_or(Value::Null, Value::Number)
        }
        Any::String(s) => Value::String(s.to_string()),
        Any::Buffer(bytes) => Value::Array(bytes.iter().map(|b| Value::from(*b)).collect()),
        Any::Array(values) => Value::Array(values.iter().map(any_to_json).collect()),
        Any::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), any_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, Map as _, Text, XmlElementPrelim, XmlFragment, XmlTextPrelim};

    fn state_of(doc: &yrs::Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
    }

    /// Why: a support tool reading `?format=json` must see each root as the
    /// type the app used, though the bytes never say which: text, map,
    /// array (with a nested map), and a rich-text editor's XML fragment.
    #[test]
    fn every_root_type_reads_as_the_app_wrote_it() {
        let doc = yrs::Doc::with_client_id(1 << 20);
        let text = doc.get_or_insert_text("content");
        let meta = doc.get_or_insert_map("meta");
        let list = doc.get_or_insert_array("list");
        let prose = doc.get_or_insert_xml_fragment("prose");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello world");
            text.remove_range(&mut txn, 0, 6);
            text.insert(&mut txn, 5, "!");
            meta.insert(&mut txn, "title", "Notes");
            meta.insert(&mut txn, "title", "Monday notes");
            meta.insert(&mut txn, "pages", 3);
            list.insert_range(&mut txn, 0, [1, 2]);
            list.push_back(&mut txn, yrs::MapPrelim::from([("k", "v")]));
            let p = prose.insert(&mut txn, 0, XmlElementPrelim::empty("p"));
            p.insert(&mut txn, 0, XmlTextPrelim::new("rich"));
        }
        let out = document_json(&state_of(&doc)).unwrap();
        assert_eq!(
            Value::Object(out.roots),
            json!({
                "content": "world!",
                "meta": {"title": "Monday notes", "pages": 3},
                "list": [1, 2, {"k": "v"}],
                "prose": "<p>rich</p>",
            })
        );
        assert_eq!(out.kinds["content"], RootKind::Text);
        assert_eq!(out.kinds["meta"], RootKind::Map);
        assert_eq!(out.kinds["list"], RootKind::Array);
        assert_eq!(out.kinds["prose"], RootKind::XmlFragment);
    }

    /// Why: items typed by another client after the first are placed by
    /// their origin, which may belong to a client encoded later in the
    /// state; and a text whose first item was deleted keeps its type.
    #[test]
    fn items_placed_by_another_clients_origin_are_found() {
        let a = yrs::Doc::with_client_id(9 << 20);
        let b = yrs::Doc::with_client_id(2 << 20);
        let text_a = a.get_or_insert_text("t");
        text_a.insert(&mut a.transact_mut(), 0, "abc");
        b.transact_mut()
            .apply_update(yrs::Update::decode_v1(&state_of(&a)).unwrap())
            .unwrap();
        let text_b = b.get_or_insert_text("t");
        text_b.insert(&mut b.transact_mut(), 3, "def");
        text_b.remove_range(&mut b.transact_mut(), 0, 3);
        let out = document_json(&state_of(&b)).unwrap();
        assert_eq!(out.roots["t"], json!("def"));
    }

    /// Why: an emptied root has lost the trace of its type, and an empty
    /// document has no roots: both must answer, not fail.
    #[test]
    fn emptied_roots_are_null_and_an_empty_document_is_an_empty_object() {
        let doc = yrs::Doc::with_client_id(1 << 20);
        let text = doc.get_or_insert_text("gone");
        text.insert(&mut doc.transact_mut(), 0, "x");
        text.remove_range(&mut doc.transact_mut(), 0, 1);
        let out = document_json(&state_of(&doc)).unwrap();
        assert_eq!(Value::Object(out.roots), json!({"gone": null}));
        let empty = document_json(&state_of(&yrs::Doc::new())).unwrap();
        assert!(empty.roots.is_empty());
    }

    /// Why: stored bytes that do not decode must give a typed error.
    #[test]
    fn bytes_that_are_not_an_update_are_refused() {
        assert!(document_json(&[7, 7, 7, 7]).is_err());
    }
}
