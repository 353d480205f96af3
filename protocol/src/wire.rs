//! How values that JSON cannot carry as they are travel in JSON: bytes as
//! base64 (standard alphabet, padded), 64-bit checksums as 16 hex digits
//! (JavaScript numbers hold 53 bits), epochs as 32 hex digits. Each is a
//! newtype whose serde form is that string, so a malformed value is a
//! deserialization error naming the field, never a silent zero.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Bytes (a Yjs update or state vector) as base64 in JSON.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Base64Bytes(pub Vec<u8>);

impl std::fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Base64Bytes {
    /// Decodes standard padded base64. `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        b64().decode(text.as_bytes()).ok().map(Base64Bytes)
    }

    /// The base64 text.
    pub fn encode(&self) -> String {
        b64().encode(&self.0)
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Base64Bytes::decode(&text)
            .ok_or_else(|| serde::de::Error::custom("not standard padded base64"))
    }
}

/// A 64-bit checksum or digest as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Hex64(pub u64);

impl Hex64 {
    /// Parses exactly 16 hex digits (either case). `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Hex64)
    }
}

impl std::fmt::Display for Hex64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for Hex64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Hex64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Hex64::parse(&text).ok_or_else(|| serde::de::Error::custom("not 16 hex digits"))
    }
}

/// A collection's epoch as 32 lowercase hex digits (the engine's `Epoch`
/// bytes; this crate does not depend on the engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EpochHex(pub [u8; 16]);

impl EpochHex {
    /// Parses exactly 32 hex digits (either case). `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(EpochHex(bytes))
    }
}

impl std::fmt::Display for EpochHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for EpochHex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for EpochHex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        EpochHex::parse(&text).ok_or_else(|| serde::de::Error::custom("not 32 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_forms_round_trip_and_refuse_other_lengths() {
        // Why: a checksum or epoch read with a wrong length must be an
        // error, not a value with missing digits.
        assert_eq!(Hex64(0xab).to_string(), "00000000000000ab");
        assert_eq!(Hex64::parse("00000000000000AB"), Some(Hex64(0xab)));
        assert_eq!(Hex64::parse("ab"), None);
        assert_eq!(Hex64::parse("+000000000000000"), None);
        let epoch = EpochHex([7; 16]);
        assert_eq!(EpochHex::parse(&epoch.to_string()), Some(epoch));
        assert_eq!(EpochHex::parse("07"), None);
        assert!(serde_json::from_str::<Base64Bytes>("\"not base64!\"").is_err());
        assert_eq!(
            serde_json::from_str::<Base64Bytes>("\"AQID\"").ok(),
            Some(Base64Bytes(vec![1, 2, 3]))
        );
    }
}
