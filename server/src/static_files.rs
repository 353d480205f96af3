//! `/`: the static files of `[server] static_dir` (the demo editor built in
//! `demo/dist`), for every GET that no API route answers.
//!
//! A path names a file under the directory, never outside it: segments are
//! used as they come (not percent-decoded), and any `.`/`..` segment,
//! backslash or NUL is refused. A path whose last segment has no extension
//! (an app route such as `/` or `/doc/abc`) gets `index.html`. While the
//! directory has no `index.html` (the demo not built), `/` answers a short
//! page with the command that builds it. Everything else keeps the API's
//! JSON 404, so a mistyped API path still reads as one. Files carry a weak
//! ETag and `no-cache`: a reload revalidates and gets a 304 until the demo
//! is rebuilt.

use std::path::{Path, PathBuf};

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;
use crate::AppState;

/// Files larger than this are not served (the demo's bundle is far below).
const MAX_STATIC_BYTES: u64 = 32 << 20;

/// The page `/` answers while the demo is not built.
const NOT_BUILT_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seqsync</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}
code,pre{background:#f3f3f3;border-radius:4px;padding:.1em .3em}pre{padding:.8em}</style></head>
<body><h1>seqsync is running</h1>
<p>The demo editor is not built yet (no <code>index.html</code> in <code>STATIC_DIR</code>).
Build it from the repository root, then reload this page:</p>
<pre>npm ci --prefix demo &amp;&amp; npm run build --prefix demo</pre>
<p>The API is served meanwhile: <code>/v1/collections/{collection}/…</code>,
<code>/yws/{collection}/{doc}</code>, <code>/metrics</code>, <code>/healthz</code>.</p>
</body></html>
"#;

/// The content type of a file by its extension.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        // WebAssembly.instantiateStreaming refuses any other type (the
        // browser store's SQLite).
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The file a request path names under `root`, or `None` if the path could
/// leave it. The path is split as sent: a `%2e%2e` stays a literal name.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut file = root.to_path_buf();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." || segment.contains(['\\', '\0']) {
            return None;
        }
        file.push(segment);
    }
    Some(file)
}

/// Whether a path is an app route (served `index.html`), not a file name.
fn is_app_route(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_none_or(|last| !last.contains('.'))
}

fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .json(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").body())
}

/// A file found: its bytes (`None` when the client's copy is current) and
/// its validator.
struct Found {
    body: Option<Vec<u8>>,
    etag: String,
}

/// Reads a regular file of at most `MAX_STATIC_BYTES` on the blocking pool,
/// unless `if_none_match` names its current validator (a weak ETag of its
/// size and modification time: a rebuilt bundle gets a new one).
async fn read_file(file: PathBuf, if_none_match: Option<String>) -> Option<Found> {
    web::block(move || {
        let meta = std::fs::metadata(&file).ok()?;
        if !meta.is_file() || meta.len() > MAX_STATIC_BYTES {
            return None;
        }
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let etag = format!("W/\"{:x}-{modified:x}\"", meta.len());
        let current = if_none_match.is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
        let body = if current {
            None
        } else {
            Some(std::fs::read(&file).ok()?)
        };
        Some(Found { body, etag })
    })
    .await
    .ok()
    .flatten()
}

/// The default service: a static file, the app's `index.html`, the "not
/// built" page, or the API's JSON 404.
pub(crate) async fn serve(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let root = state.server.static_dir.clone();
    let path = req.path().to_owned();
    let is_api = ["/v1/", "/yws/"].iter().any(|p| path.starts_with(p));
    if root.as_os_str().is_empty() || is_api || !matches!(*req.method(), Method::GET | Method::HEAD)
    {
        return not_found();
    }
    let Some(file) = resolve(&root, &path) else {
        return not_found();
    };
    let if_none_match = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (file, found) = match read_file(file.clone(), if_none_match.clone()).await {
        Some(found) => (file, found),
        None if is_app_route(&path) => {
            let index = root.join("index.html");
            match read_file(index.clone(), if_none_match).await {
                Some(found) => (index, found),
                None if path == "/" => {
                    let page = NOT_BUILT_PAGE
                        .replace("STATIC_DIR", &html_escape(&root.display().to_string()));
                    return HttpResponse::NotFound()
                        .content_type("text/html; charset=utf-8")
                        .body(page);
                }
                None => return not_found(),
            }
        }
        None => return not_found(),
    };
    // Rebuilt bundles keep their names: always revalidate (cheap: 304).
    let Some(body) = found.body else {
        return HttpResponse::NotModified()
            .insert_header(("etag", found.etag))
            .insert_header(("cache-control", "no-cache"))
            .finish();
    };
    HttpResponse::Ok()
        .content_type(content_type(&file))
        .insert_header(("etag", found.etag))
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request path must never name a file outside the static directory,
    /// however it spells `..`.
    #[test]
    fn paths_stay_under_the_static_directory() {
        let root = Path::new("/srv/app");
        assert_eq!(resolve(root, "/"), Some(PathBuf::from("/srv/app")));
        assert_eq!(
            resolve(root, "/app.js"),
            Some(PathBuf::from("/srv/app/app.js"))
        );
        assert_eq!(
            resolve(root, "//a//b.css"),
            Some(PathBuf::from("/srv/app/a/b.css"))
        );
        for escape in ["/../etc/passwd", "/a/../../x", "/./x", "/a\\..\\x", "/a\0"] {
            assert_eq!(resolve(root, escape), None, "{escape:?}");
        }
        // Not decoded: a literal file name, under the root.
        assert_eq!(
            resolve(root, "/%2e%2e/x"),
            Some(PathBuf::from("/srv/app/%2e%2e/x"))
        );
    }

    /// Paths without an extension are the app's own routes.
    #[test]
    fn app_routes_are_paths_without_an_extension() {
        assert!(is_app_route("/"));
        assert!(is_app_route("/doc/abc"));
        assert!(!is_app_route("/app.js"));
        assert!(!is_app_route("/assets/x.css"));
    }

    /// Browsers compile WebAssembly while it downloads only when it comes
    /// as `application/wasm` (the browser store's SQLite is 0.9 MB).
    #[test]
    fn webassembly_is_served_as_application_wasm() {
        assert_eq!(
            content_type(Path::new("/srv/app/sqlite3.wasm")),
            "application/wasm"
        );
        assert_eq!(
            content_type(Path::new("/srv/app/store-worker.js")),
            "text/javascript; charset=utf-8"
        );
    }
}
