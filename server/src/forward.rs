//! Forwarding a write to the node that owns its collection (several nodes
//! on one PostgreSQL database, `docs/POSTGRES.md`).
//!
//! HTTP clients are answered with a 307 and repeat the request themselves.
//! A `/yws` connection cannot be redirected mid-session, so the node it is
//! connected to pushes the update to the owner on its behalf: one HTTP POST
//! per update, on the blocking pool (the client is blocking), following at
//! most one more redirect if the lease moved meanwhile. The owner's commit
//! reaches this node's room back through the commit watcher, like any
//! other node's.

use std::time::Duration;

use seqsync_engine::Seq;

/// How long a forwarded push may take.
const FORWARD_TIMEOUT_MS: u64 = 10_000;
/// Redirects followed (the lease moved again while forwarding).
const MAX_FORWARD_REDIRECTS: usize = 2;

/// Pushes `update` to document `doc` of `collection` at `owner` (a node's
/// advertised URL), declaring `schema_version` and authenticating with
/// `write_token` (the nodes of one deployment share it). Returns the seq
/// the owner logged (`None`: a no-op).
///
/// Errors: a message saying what failed (unreachable, refused, malformed).
pub(crate) async fn push_to_owner(
    owner: String,
    collection: String,
    doc: String,
    update: Vec<u8>,
    schema_version: Option<u32>,
    write_token: String,
) -> Result<Option<Seq>, String> {
    let work = move || {
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
            .build();
        let mut url = format!(
            "{}/v1/collections/{}/documents/{}/updates",
            owner.trim_end_matches('/'),
            encode(&collection),
            encode(&doc)
        );
        for _ in 0..=MAX_FORWARD_REDIRECTS {
            let mut request = agent
                .post(&url)
                .set("content-type", "application/octet-stream");
            if let Some(version) = schema_version {
                request = request.set("x-schema-version", &version.to_string());
            }
            if !write_token.is_empty() {
                request = request.set("authorization", &format!("Bearer {write_token}"));
            }
            let response = match request.send_bytes(&update) {
                Ok(response) => response,
                Err(ureq::Error::Status(_, response)) => response,
                Err(e) => return Err(format!("the owner is unreachable: {e}")),
            };
            match response.status() {
                200 => {
                    let body = response
                        .into_string()
                        .map_err(|e| format!("the owner's answer: {e}"))?;
                    let answer: seqsync_protocol::http::PushAnswer = serde_json::from_str(&body)
                        .map_err(|e| format!("the owner's answer is malformed: {e}"))?;
                    return Ok(answer.seq);
                }
                307 => match response.header("location") {
                    Some(next) => url = next.to_owned(),
                    None => return Err("a redirect without a location".to_owned()),
                },
                status => {
                    return Err(format!(
                        "the owner answered {status}: {}",
                        response.into_string().unwrap_or_default()
                    ))
                }
            }
        }
        Err("too many redirects: the collection's lease keeps moving".to_owned())
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("the forwarding task failed: {e}"))?
}

/// Percent-encodes a path segment (names are validated, but may hold
/// characters a URL path does not take as they are).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
