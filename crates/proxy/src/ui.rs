//! `GET /ui` and `/ui/{asset}`: the operator's page, embedded at build time (plain HTML, CSS and JS, no
//! build step). The page is open; it logs in itself with the key typed in and calls `/queue/status`.

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// `GET /ui`: the page.
pub(crate) async fn index() -> Response {
    asset_response(INDEX, "text/html; charset=utf-8")
}

/// `GET /ui/{asset}`: the page's script and style sheet (`/ui/index.html` is the page too).
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "" | "index.html" => asset_response(INDEX, "text/html; charset=utf-8"),
        "app.js" => asset_response(SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => asset_response(STYLE, "text/css; charset=utf-8"),
        _ => ApiError::unknown_route("GET", &format!("/ui/{name}")).into_response(),
    }
}

/// An embedded asset with headers that keep the page to itself: only its own script, style and API calls
/// (so nothing injected could send the key elsewhere), not framed, no referrer.
fn asset_response(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                     frame-ancestors 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}
