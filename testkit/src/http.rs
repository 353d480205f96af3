//! Plain HTTP calls for tests: any status is an answer (a test asserts on
//! 4xx and 5xx as much as on 200), only a transport failure panics.

use serde_json::Value;

/// (status, body bytes, `x-seqsync-cursor` header) of `request`, sent with
/// `body` if given.
pub fn call(request: ureq::Request, body: Option<&[u8]>) -> (u16, Vec<u8>, Option<String>) {
    let result = match body {
        Some(bytes) => request.send_bytes(bytes),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = response.status();
    let cursor = response.header("x-seqsync-cursor").map(str::to_owned);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).expect("read the body");
    (status, bytes, cursor)
}

/// A body as JSON; panics with the body if it is not.
pub fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}
