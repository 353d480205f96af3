//! `[server] static_dir` served at `/` (the demo editor): files, the app's
//! `index.html` for its routes, the "not built" page, the API's JSON 404
//! everywhere else, and no way out of the directory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use seqsync_engine::BackendKind;
use seqsync_server::{HostConfig, ServerThread};

fn start(static_dir: &Path, data: &Path) -> ServerThread {
    let mut config = HostConfig::default();
    config.engine.storage.backend = BackendKind::Memory;
    config.engine.storage.path = data.to_path_buf();
    config.server.listen = "127.0.0.1:0".to_owned();
    config.server.static_dir = static_dir.to_path_buf();
    ServerThread::start(config).unwrap()
}

/// A GET with the path sent exactly as given (an HTTP client library would
/// normalise `..` away): status, content type and body.
fn raw_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let (status, headers, body) = raw_get_with(addr, path, "");
    (status, header(&headers, "content-type"), body)
}

/// A header's value in a response head, or "".
fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default()
}

/// [`raw_get`] with extra header lines (each ending in `\r\n`): status,
/// the response head, body.
fn raw_get_with(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A built demo is served: `/` and app routes get `index.html`, files get
/// their content type, and unknown files and API paths keep the JSON 404.
#[test]
fn built_demo_is_served_at_the_root() {
    let site = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<p>the demo</p>").unwrap();
    std::fs::write(site.path().join("app.js"), "console.log(1)").unwrap();
    std::fs::write(data.path().join("secret.txt"), "outside").unwrap();
    let server = start(site.path(), data.path());

    for route in ["/", "/doc/abc"] {
        let (status, content_type, body) = raw_get(server.addr, route);
        assert_eq!(status, 200, "{route}");
        assert!(
            content_type.starts_with("text/html"),
            "{route}: {content_type}"
        );
        assert!(body.contains("the demo"), "{route}: {body}");
    }
    let (status, content_type, body) = raw_get(server.addr, "/app.js");
    assert_eq!((status, body.as_str()), (200, "console.log(1)"));
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );

    for missing in ["/missing.js", "/v1/collections/c/nope", "/yws/x"] {
        let (status, content_type, body) = raw_get(server.addr, missing);
        assert_eq!(status, 404, "{missing}");
        assert!(content_type.starts_with("application/json"), "{missing}");
        assert!(body.contains("not_found"), "{missing}: {body}");
    }
    // The data directory is next to the site's: no path reaches it.
    let outside = format!(
        "/../{}/secret.txt",
        data.path().file_name().unwrap().to_str().unwrap()
    );
    for escape in [
        outside.as_str(),
        "/%2e%2e/secret.txt",
        "/a/../../secret.txt",
    ] {
        let (status, _, body) = raw_get(server.addr, escape);
        assert_ne!(status, 200, "{escape}");
        assert!(!body.contains("outside"), "{escape}: {body}");
    }
    // The API is unaffected.
    let (status, _, _) = raw_get(server.addr, "/healthz");
    assert_eq!(status, 200);
    server.stop();
}

/// A reload revalidates: the same file answers 304 to its ETag, and a
/// rebuilt one (another size) is sent again.
#[test]
fn unchanged_files_answer_not_modified() {
    let site = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<p>v1</p>").unwrap();
    let server = start(site.path(), data.path());
    let (status, head, _) = raw_get_with(server.addr, "/", "");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "cache-control"), "no-cache");
    let etag = header(&head, "etag");
    assert!(etag.starts_with("W/\""), "{head}");
    let (status, head, body) =
        raw_get_with(server.addr, "/", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!((status, body.as_str()), (304, ""));
    assert_eq!(header(&head, "etag"), etag);
    std::fs::write(site.path().join("index.html"), "<p>version 2</p>").unwrap();
    let (status, _, body) = raw_get_with(server.addr, "/", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!((status, body.as_str()), (200, "<p>version 2</p>"));
    server.stop();
}

/// Before `npm run build`, `/` says which command builds the demo rather
/// than a bare 404.
#[test]
fn unbuilt_demo_answers_the_build_command() {
    let site = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = start(&site.path().join("dist"), data.path());
    let (status, content_type, body) = raw_get(server.addr, "/");
    assert_eq!(status, 404);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(
        body.contains("npm ci --prefix demo &amp;&amp; npm run build --prefix demo"),
        "{body}"
    );
    let (status, content_type, _) = raw_get(server.addr, "/app.js");
    assert_eq!(status, 404);
    assert!(content_type.starts_with("application/json"));
    server.stop();
}
