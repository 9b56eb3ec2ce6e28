//! The playground (`GET /` and `/playground`): a chat beside a drawing of the session's memory,
//! served by the binary itself. Its three files are embedded at compile time and the page may
//! fetch nothing but this server (its Content-Security-Policy says so to the browser), so it works
//! offline and behind any proxy. It talks to the server through the public API only: sessions,
//! `/v1/chat/completions` over SSE, and the memory map ([`super::memory_map`]).

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

/// Every fetch, script, style and image from this server only; no frames, no inline script.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// One embedded file with its content type, under the page's policy.
fn embedded(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, POLICY),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page.
#[utoipa::path(get, path = "/playground", tag = "playground",
    responses((status = 200, description = "The playground's HTML (also at `/`)", content_type = "text/html")))]
pub async fn page() -> Response {
    embedded(
        "text/html; charset=utf-8",
        include_str!("playground/index.html"),
    )
}

/// The page's script.
pub async fn script() -> Response {
    embedded(
        "text/javascript; charset=utf-8",
        include_str!("playground/app.js"),
    )
}

/// The page's style sheet.
pub async fn style() -> Response {
    embedded(
        "text/css; charset=utf-8",
        include_str!("playground/app.css"),
    )
}
