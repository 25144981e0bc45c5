//! The web UI: the files of `web/dist` (built by Vite, see `web/`), embedded in the binary
//! at compile time and served at `/`. Any other path that is not an API route gets
//! `index.html`, so the UI's own routes (`/sessions/ID`) survive a reload; paths under
//! `/api/`, `/slack/`, `/webhooks/` and the server's own routes are never shadowed, and a
//! missing file under `/assets/` is a 404, not a page. Built without the UI (`cargo build`
//! alone), `/` says how to build it.

use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::ApiError;

#[derive(rust_embed::Embed)]
#[folder = "../../web/dist"]
#[allow_missing = true]
struct Assets;

/// Paths that belong to the server, never to the UI.
const SERVER_PATHS: &[&str] = &[
    "/api",
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/slack",
    "/webhooks",
];

/// The policy for the UI's pages: its own scripts and styles only, the API over HTTP and
/// WebSockets on the same host.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// Shown at `/` when the binary was built without the UI.
const PLACEHOLDER: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Hangar</title></head>\
<body style=\"font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem\">\
<h1>Hangar</h1><p>This <code>hangar</code> was built without its web UI. The API is up: \
see <a href=\"/openapi.json\">/openapi.json</a>.</p>\
<p>To build the UI: <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>, then build \
<code>hangar</code> again (<code>scripts/up.sh</code> does both).</p></body></html>";

/// Whether this binary carries the web UI.
pub fn embedded() -> bool {
    Assets::get("index.html").is_some()
}

/// What a path outside the API router gets.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A server path that matched no route: the JSON 404.
    NotFound,
    /// A file of the UI.
    File(String),
    /// A page of the UI: `index.html`.
    Page,
}

/// Decides what `path` is; `exists` says whether the UI has that file.
fn target(path: &str, exists: impl Fn(&str) -> bool) -> Target {
    let server_path = SERVER_PATHS
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')));
    if server_path {
        return Target::NotFound;
    }
    let file = path.trim_start_matches('/');
    if !file.is_empty() && file != "index.html" && exists(file) {
        return Target::File(file.to_string());
    }
    // A hashed asset that is gone (an old page after an upgrade) must fail, not get HTML.
    if file.starts_with("assets/") {
        return Target::NotFound;
    }
    Target::Page
}

/// The router's fallback: UI files and pages for GET and HEAD, the JSON 404/405
/// otherwise.
pub async fn fallback(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let t = target(path, |f| Assets::get(f).is_some());
    if t == Target::NotFound {
        return ApiError::from_status(StatusCode::NOT_FOUND).into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        let mut resp = ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED).into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match t {
        Target::File(file) => match Assets::get(&file) {
            Some(f) => {
                let cache = if file.starts_with("assets/") {
                    // Vite names these after their content: they never change.
                    "public, max-age=31536000, immutable"
                } else {
                    "no-cache"
                };
                let mime = f.metadata.mimetype().to_string();
                (
                    [
                        (header::CONTENT_TYPE, mime),
                        (header::CACHE_CONTROL, cache.to_string()),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
                    ],
                    f.data.into_owned(),
                )
                    .into_response()
            }
            None => ApiError::from_status(StatusCode::NOT_FOUND).into_response(),
        },
        _ => {
            let body = match Assets::get("index.html") {
                Some(f) => f.data.into_owned(),
                None => PLACEHOLDER.as_bytes().to_vec(),
            };
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-cache"),
                    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    (header::REFERRER_POLICY, "no-referrer"),
                ],
                body,
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(f: &str) -> bool {
        matches!(f, "assets/index-abc.js" | "favicon.svg")
    }

    #[test]
    fn server_paths_are_never_the_ui() {
        for p in [
            "/api",
            "/api/",
            "/api/nope",
            "/api/sessions/x/nope",
            "/healthz/x",
            "/metrics/",
            "/openapi.json/x",
            "/slack/nope",
            "/webhooks/x",
        ] {
            assert_eq!(target(p, has), Target::NotFound, "{p}");
        }
    }

    #[test]
    fn files_are_served_and_pages_fall_back_to_the_index() {
        assert_eq!(
            target("/assets/index-abc.js", has),
            Target::File("assets/index-abc.js".into())
        );
        assert_eq!(
            target("/favicon.svg", has),
            Target::File("favicon.svg".into())
        );
        for p in [
            "/",
            "/index.html",
            "/sessions/ses-1",
            "/sign-in",
            "/apiary",
            "/envs/e",
        ] {
            assert_eq!(target(p, has), Target::Page, "{p}");
        }
    }

    #[test]
    fn a_missing_asset_is_not_found_rather_than_a_page() {
        assert_eq!(target("/assets/index-old.js", has), Target::NotFound);
    }
}
