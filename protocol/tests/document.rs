//! docs/PROTOCOL.md is what clients in other languages are written from, so
//! it must not drift from the code: every JSON example parses as the type its
//! block names, every frame example decodes as the frame it names, every
//! route the server registers is described, and every error code the
//! protocol lists has a row.

use seqsync_protocol::http::*;
use seqsync_protocol::sync::{ClientFrame, ServerFrame};

fn read(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(info string, body)` of every fenced block.
fn blocks(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for line in lines.by_ref() {
            if line.starts_with("```") {
                break;
            }
            body.push_str(line);
            body.push('\n');
        }
        out.push((info.trim().to_owned(), body));
    }
    out
}

fn parses_as(type_name: &str, body: &str) -> Result<(), String> {
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(body: &str) -> Result<(), String> {
        let value: T = serde_json::from_str(body).map_err(|e| e.to_string())?;
        // And back: what the server writes from the value parses again to it.
        let again: T = serde_json::from_str(&serde_json::to_string(&value).unwrap())
            .map_err(|e| e.to_string())?;
        assert_eq!(
            serde_json::to_value(&value).unwrap(),
            serde_json::to_value(&again).unwrap()
        );
        Ok(())
    }
    match type_name {
        "PushAnswer" => check::<PushAnswer>(body),
        "BatchRequest" => check::<BatchRequest>(body),
        "BatchAnswer" => check::<BatchAnswer>(body),
        "DeleteAnswer" => check::<DeleteAnswer>(body),
        "ChangesAnswer" => check::<ChangesAnswer>(body),
        "RecoverCollectionRequest" => check::<RecoverCollectionRequest>(body),
        "RecoverCollectionAnswer" => check::<RecoverCollectionAnswer>(body),
        "AckRequest" => check::<AckRequest>(body),
        "AckAnswer" => check::<AckAnswer>(body),
        "PeerList" => check::<Vec<PeerJson>>(body),
        "DigestAnswer" => check::<DigestAnswer>(body),
        "CompactAnswer" => check::<CompactAnswer>(body),
        "HealthAnswer" => check::<HealthAnswer>(body),
        "CollectionsAnswer" => check::<CollectionsAnswer>(body),
        "DocumentsAnswer" => check::<DocumentsAnswer>(body),
        "DocumentContentAnswer" => check::<DocumentContentAnswer>(body),
        "HistoryAnswer" => check::<HistoryAnswer>(body),
        "RestoreRequest" => check::<RestoreRequest>(body),
        "RestoreAnswer" => check::<RestoreAnswer>(body),
        "PinRequest" => check::<PinRequest>(body),
        "VersionJson" => check::<VersionJson>(body),
        "VersionsAnswer" => check::<VersionsAnswer>(body),
        "ErrorAnswer" => check::<ErrorAnswer>(body),
        "SubscribeMessage" => check::<SubscribeMessage>(body),
        "WebhookDelivery" => check::<seqsync_protocol::webhook::WebhookDelivery>(body),
        other => Err(format!("no protocol type is named {other}")),
    }
}

fn hex_bytes(body: &str) -> Vec<u8> {
    body.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("{b:?} is not a hex byte")))
        .collect()
}

fn frame_name_client(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Hello(_) => "hello",
        ClientFrame::Push { .. } => "push",
        ClientFrame::PushBatch { .. } => "push_batch",
        ClientFrame::Ack { .. } => "ack",
        ClientFrame::Awareness { .. } => "awareness",
        ClientFrame::Leave { .. } => "leave",
    }
}

fn frame_name_server(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Welcome { .. } => "welcome",
        ServerFrame::Pushed { .. } => "pushed",
        ServerFrame::PushError { .. } => "push_error",
        ServerFrame::Changes { .. } => "changes",
        ServerFrame::UpToDate { .. } => "up_to_date",
        ServerFrame::Acked { .. } => "acked",
        ServerFrame::AckError { .. } => "ack_error",
        ServerFrame::Reset { .. } => "reset",
        ServerFrame::Error { .. } => "error",
        ServerFrame::Presence { .. } => "presence",
    }
}

#[test]
fn every_example_in_protocol_md_parses_as_its_type() {
    // Why: a client written from the page must be able to trust its
    // examples byte for byte.
    let doc = read("docs/PROTOCOL.md");
    let mut json_examples = 0;
    let mut frame_examples = 0;
    for (info, body) in blocks(&doc) {
        let mut words = info.split_whitespace();
        match (words.next(), words.next()) {
            (Some("json"), Some(type_name)) => {
                parses_as(type_name, &body)
                    .unwrap_or_else(|e| panic!("```json {type_name} example: {e}\n{body}"));
                json_examples += 1;
            }
            (Some("json"), None) => panic!("a JSON example without its type:\n{body}"),
            (Some("sync-client"), Some(name)) => {
                let frame = ClientFrame::decode(&hex_bytes(&body))
                    .unwrap_or_else(|e| panic!("sync-client {name}: {e}"));
                assert_eq!(frame_name_client(&frame), name);
                assert_eq!(frame.encode(), hex_bytes(&body), "re-encoding {name}");
                frame_examples += 1;
            }
            (Some("sync-server"), Some(name)) => {
                let frame = ServerFrame::decode(&hex_bytes(&body))
                    .unwrap_or_else(|e| panic!("sync-server {name}: {e}"));
                assert_eq!(frame_name_server(&frame), name);
                assert_eq!(frame.encode(), hex_bytes(&body), "re-encoding {name}");
                frame_examples += 1;
            }
            _ => {}
        }
    }
    assert!(json_examples >= 15, "only {json_examples} JSON examples");
    assert!(frame_examples >= 9, "only {frame_examples} frame examples");
}

/// `(METHOD, path)` of every route `server/src/routes.rs` registers, in
/// the document's spelling (`{c}`, `{d}`, `{p}`).
fn server_routes() -> Vec<(String, String)> {
    let source = read("server/src/routes.rs");
    let scope_start = source.find("web::scope(\"").expect("the collection scope");
    let scope = source[scope_start + 12..]
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let scope_end = source[scope_start..]
        .find("\n    )")
        .map(|i| scope_start + i)
        .expect("the end of the scope");
    let mut routes = Vec::new();
    let mut rest = &source[..];
    let mut offset = 0;
    while let Some(at) = rest.find(".route(") {
        let after = &rest[at + 7..];
        let path = after.split('"').nth(1).unwrap().to_owned();
        let method = after
            .split("web::")
            .nth(1)
            .unwrap()
            .split("()")
            .next()
            .unwrap()
            .to_uppercase();
        let absolute = offset + at;
        let full = if absolute > scope_start && absolute < scope_end {
            format!("{scope}{path}")
        } else {
            path
        };
        let spelled = full
            .replace("{collection}", "{c}")
            .replace("{doc}", "{d}")
            .replace("{peer}", "{p}");
        routes.push((method, spelled));
        offset += at + 7;
        rest = after;
    }
    routes
}

#[test]
fn every_route_of_the_server_is_in_protocol_md() {
    // Why: a route added to the server and not to the page is a route no
    // client in another language can use.
    let doc = read("docs/PROTOCOL.md");
    let routes = server_routes();
    assert!(routes.len() >= 17, "found only {routes:?}");
    for (method, path) in routes {
        let heading = format!("`{method} {path}");
        assert!(
            doc.contains(&heading),
            "docs/PROTOCOL.md has no heading for {method} {path}"
        );
    }
}

#[test]
fn every_error_code_has_a_row_in_protocol_md() {
    // Why: clients branch on codes; each must be explained.
    let doc = read("docs/PROTOCOL.md");
    for code in seqsync_protocol::ERROR_CODES {
        assert!(
            doc.contains(&format!("`{code}`")),
            "docs/PROTOCOL.md does not explain the error code {code}"
        );
    }
}
