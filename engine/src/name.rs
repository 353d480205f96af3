//! Validated names: collection names, document ids and peer ids.
//!
//! Names arrive from the network (URL path segments, headers, JSON), so they are
//! checked once, at the edge, and carried as types that cannot hold a bad value.
//! A collection name doubles as a key in every backend and may end up in a file
//! name or a URL, hence the narrow alphabet and the ban on a leading `.` (no
//! `..`, no hidden files). Document and peer ids are free-form UTF-8 but without
//! control characters, which would corrupt logs and line-based tools.

use std::fmt;

use crate::error::{InvalidName, NameKind};

/// Longest collection name, in bytes (all allowed characters are ASCII).
pub const MAX_COLLECTION_NAME_BYTES: usize = 128;
/// Longest document id, in bytes of UTF-8.
pub const MAX_DOC_ID_BYTES: usize = 256;
/// Longest peer id, in bytes of UTF-8.
pub const MAX_PEER_ID_BYTES: usize = 256;

/// The name of a collection: 1–128 characters of `[A-Za-z0-9_.-]`, not starting
/// with `.`.
///
/// Constructing one is the only validation a collection name gets; every API
/// that takes a `&CollectionName` can rely on it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CollectionName(String);

impl CollectionName {
    /// Validates `name`. Errors: [`InvalidName`] saying what is wrong and where.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        let kind = NameKind::Collection;
        check_length(kind, &name, MAX_COLLECTION_NAME_BYTES)?;
        if let Some((at, ch)) = name
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(InvalidName::ForbiddenChar { kind, ch, at });
        }
        if name.starts_with('.') {
            return Err(InvalidName::LeadingDot);
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of a document within a collection: 1–256 bytes of UTF-8 without
/// control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocId(String);

impl DocId {
    /// Validates `id`. Errors: [`InvalidName`].
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidName> {
        let id = id.into();
        check_free_form(NameKind::Document, &id, MAX_DOC_ID_BYTES)?;
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id a client gives itself (`x-peer-id`): 1–256 bytes of UTF-8 without
/// control characters. Peers are tracked per collection from their first ack.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(String);

impl PeerId {
    /// Validates `id`. Errors: [`InvalidName`].
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidName> {
        let id = id.into();
        check_free_form(NameKind::Peer, &id, MAX_PEER_ID_BYTES)?;
        Ok(Self(id))
    }

    /// The origin of every change a schema migration writes
    /// ([`crate::MIGRATION_ORIGIN`]).
    pub fn migration() -> Self {
        Self(crate::migration::MIGRATION_ORIGIN.to_owned())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Longest name of a pinned version, in bytes.
pub const MAX_VERSION_NAME_BYTES: usize = 128;

/// Checks a pinned version's name: 1–128 bytes of UTF-8 without control
/// characters. Errors: [`InvalidName`] of kind `Version`.
pub fn check_version_name(name: &str) -> Result<(), InvalidName> {
    check_free_form(NameKind::Version, name, MAX_VERSION_NAME_BYTES)
}

/// Checks a change's author (the subject of the signed token a push came
/// with): 1–256 bytes of UTF-8 without control characters, like a peer id.
/// Errors: [`InvalidName`] of kind `Author`.
pub fn check_author(author: &str) -> Result<(), InvalidName> {
    check_free_form(NameKind::Author, author, MAX_PEER_ID_BYTES)
}

fn check_length(kind: NameKind, value: &str, max_bytes: usize) -> Result<(), InvalidName> {
    if value.is_empty() {
        return Err(InvalidName::Empty { kind });
    }
    if value.len() > max_bytes {
        return Err(InvalidName::TooLong {
            kind,
            len_bytes: value.len(),
            max_bytes,
        });
    }
    Ok(())
}

fn check_free_form(kind: NameKind, value: &str, max_bytes: usize) -> Result<(), InvalidName> {
    check_length(kind, value, max_bytes)?;
    if let Some((at, ch)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(InvalidName::ForbiddenChar { kind, ch, at });
    }
    Ok(())
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $t {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl TryFrom<&str> for $t {
            type Error = InvalidName;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }
    };
}
string_newtype_impls!(CollectionName);
string_newtype_impls!(DocId);
string_newtype_impls!(PeerId);

#[cfg(test)]
mod tests {
    use super::*;

    /// Names become storage keys and URL segments: every rule of docs/DESIGN.md must
    /// refuse with a typed error, not be silently "fixed".
    #[test]
    fn collection_names_follow_the_brief() {
        for ok in ["a", "notes", "A-b_c.d", "x.", &"z".repeat(128)] {
            assert!(CollectionName::new(ok).is_ok(), "{ok:?} should be valid");
        }
        assert_eq!(
            CollectionName::new(""),
            Err(InvalidName::Empty {
                kind: NameKind::Collection
            })
        );
        assert!(matches!(
            CollectionName::new("z".repeat(129)),
            Err(InvalidName::TooLong { len_bytes: 129, .. })
        ));
        assert!(matches!(
            CollectionName::new("a/b"),
            Err(InvalidName::ForbiddenChar { ch: '/', at: 1, .. })
        ));
        assert_eq!(CollectionName::new(".."), Err(InvalidName::LeadingDot));
        assert_eq!(CollectionName::new(".hidden"), Err(InvalidName::LeadingDot));
        assert!(matches!(
            CollectionName::new("a\0b"),
            Err(InvalidName::ForbiddenChar { ch: '\0', .. })
        ));
        assert!(matches!(
            CollectionName::new("é"),
            Err(InvalidName::ForbiddenChar { ch: 'é', .. })
        ));
        assert!(CollectionName::new("x".repeat(10 * 1024)).is_err());
    }

    /// Document ids are free-form but must not carry control characters or
    /// exceed 256 bytes (counted in bytes, not characters).
    #[test]
    fn document_ids_accept_unicode_but_not_control_chars() {
        assert!(DocId::new("a/b c/../ü😀").is_ok());
        assert!(DocId::new("é".repeat(128)).is_ok()); // 256 bytes
        assert!(matches!(
            DocId::new("é".repeat(129)),
            Err(InvalidName::TooLong { len_bytes: 258, .. })
        ));
        assert!(matches!(
            DocId::new("a\nb"),
            Err(InvalidName::ForbiddenChar {
                ch: '\n',
                at: 1,
                ..
            })
        ));
        assert!(matches!(DocId::new(""), Err(InvalidName::Empty { .. })));
        assert!(matches!(
            PeerId::new("p\u{7f}"),
            Err(InvalidName::ForbiddenChar { .. })
        ));
    }
}
