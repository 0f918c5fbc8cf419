//! `GET /`: the web page, a press-to-talk live call in the browser.
//!
//! The page is one self-contained file (markup, style, script and the
//! microphone's AudioWorklet) compiled into the binary, so a server needs
//! nothing beside it to be talked to. It speaks the `/v1/calls` protocol
//! like any other caller.

use axum::http::header;
use axum::response::{Html, IntoResponse};

const PAGE: &str = include_str!("page.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            // Everything the page needs is inline; the worklet is loaded
            // from a blob: URL, and the socket goes back to this server.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline' blob:; style-src 'unsafe-inline'; \
                 connect-src 'self'; worker-src blob:; media-src 'self' blob:",
            ),
        ],
        Html(PAGE),
    )
}
