//! The signature of a webhook request, and its check.
//!
//! The scheme is the one payment providers made familiar, so receivers have
//! code for it already: the header says when it was signed and the HMAC of
//! that time and the body, `t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`. Signing the time with the body lets a receiver refuse
//! a replayed old request (it checks `t` is recent); signing the exact bytes
//! means it must check before parsing. `v1` names the scheme so another can
//! be added beside it without breaking receivers.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The `x-seqsync-signature` value for `body` signed at `timestamp_secs`
/// (Unix seconds) with `secret`.
pub fn sign(secret: &[u8], timestamp_secs: u64, body: &[u8]) -> String {
    format!(
        "t={timestamp_secs},v1={}",
        hex(&mac(secret, timestamp_secs, body))
    )
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<digits>,v1=<64 hex digits>`.
    #[error("the signature header is not t=<unix seconds>,v1=<64 hex digits>")]
    Malformed,
    /// `t` is further from now than the tolerance: an old request replayed,
    /// or a clock far off.
    #[error("signed at {timestamp_secs}, more than {tolerance_secs} s from now ({now_secs}); refuse it (replayed, or a clock is off)")]
    Expired {
        /// When it says it was signed.
        timestamp_secs: u64,
        /// The receiver's clock.
        now_secs: u64,
        /// The accepted distance.
        tolerance_secs: u64,
    },
    /// The HMAC does not match: another secret, or a changed body.
    #[error("the signature does not match the body (another secret, or the body was changed)")]
    Mismatch,
}

/// Checks a signature header against `body` for a receiver written in Rust
/// (docs/WEBHOOKS.md has the same check in JavaScript and Python): the
/// HMAC must match (compared in constant time) and `t` must be within
/// `tolerance_secs` of `now_secs`.
///
/// Errors: [`SignatureError`].
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_secs: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
        .ok_or(SignatureError::Malformed)?;
    let timestamp_secs: u64 = t.parse().map_err(|_| SignatureError::Malformed)?;
    let expected = unhex(v1).ok_or(SignatureError::Malformed)?;
    if timestamp_secs.abs_diff(now_secs) > tolerance_secs {
        return Err(SignatureError::Expired {
            timestamp_secs,
            now_secs,
            tolerance_secs,
        });
    }
    let mut mac = keyed(secret);
    mac.update(format!("{timestamp_secs}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (a long one is hashed first), so this
    // never fails; the fallback keeps the signature well-defined anyway.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| HmacSha256::new(&Default::default()))
}

fn mac(secret: &[u8], timestamp_secs: u64, body: &[u8]) -> [u8; 32] {
    let mut mac = keyed(secret);
    mac.update(format!("{timestamp_secs}.").as_bytes());
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receivers in other languages check against this exact value
    /// (docs/WEBHOOKS.md quotes it; it was computed with Python's `hmac`,
    /// not with this code), so the scheme must not drift.
    #[test]
    fn the_documented_example_signs_to_the_documented_value() {
        let header = sign(
            b"whsec_0123456789abcdef",
            1_700_000_000,
            b"{\"hook\":\"search\"}",
        );
        assert_eq!(
            header,
            "t=1700000000,v1=edc5540a10952d32791e1e93a9e83383035f2d172e5081aa94cafcd8cc47ab42",
            "if this changed, every receiver's check breaks"
        );
    }

    /// A receiver must refuse what it cannot trust: another body, another
    /// secret, an old timestamp, a garbled header.
    #[test]
    fn verify_accepts_only_the_signed_body_with_the_right_secret_in_time() {
        let body = b"{\"changes\":[]}";
        let header = sign(b"a secret of 16 bytes", 1_000, body);
        assert_eq!(
            verify(b"a secret of 16 bytes", &header, body, 1_100, 300),
            Ok(())
        );
        assert_eq!(
            verify(
                b"a secret of 16 bytes",
                &header,
                b"{\"changes\":[1]}",
                1_100,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another secret!!!!!", &header, body, 1_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(b"a secret of 16 bytes", &header, body, 2_000, 300),
            Err(SignatureError::Expired { .. })
        ));
        for garbled in ["", "t=1000", "v1=00,t=1000", "t=x,v1=00", "t=1000,v1=zz"] {
            assert_eq!(
                verify(b"a secret of 16 bytes", garbled, body, 1_000, 300),
                Err(SignatureError::Malformed),
                "{garbled:?}"
            );
        }
    }
}
