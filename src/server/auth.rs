//! Who is calling: every `/v1/*` request is authenticated here, before its
//! handler, and carries its [`Caller`] as a request extension to wherever a
//! pipeline is started for it.
//!
//! A key comes as `Authorization: Bearer KEY` (what OpenAI clients send).
//! Browsers cannot set headers on a WebSocket, so `GET /v1/calls` also
//! takes it as a subprotocol: `new WebSocket(url, ["parlor",
//! "parlor.key." + KEY])`; the server answers with `parlor`, never echoing
//! the key. A query parameter is not accepted: URLs end up in proxy and
//! access logs.
//!
//! Without a keyring (no `[auth]` in the spec) every request is the
//! anonymous caller, as before authentication existed. `/`, `/healthz`,
//! `/readyz` and `/metrics` stay open (probes and scrapers hold no keys).

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::access::Caller;

/// The subprotocol a browser offers so the server has one to answer with.
pub const WS_PROTOCOL: &str = "parlor";
/// The prefix of the subprotocol that carries the key.
pub const WS_KEY_PREFIX: &str = "parlor.key.";

/// Middleware: a 401 for a missing or unknown key, else the request goes on
/// with its [`Caller`].
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match &state.keyring {
        _ if !request.uri().path().starts_with("/v1/") => Caller::default(),
        None => Caller::default(),
        Some(ring) => match presented_key(request.headers()).and_then(|k| ring.authenticate(k)) {
            Some(caller) => caller,
            None => {
                // The key itself is never logged.
                tracing::info!(message = "Request refused: no valid API key.", path = %request.uri().path());
                return unauthorized().into_response();
            }
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The key from `Authorization: Bearer` or a `parlor.key.` subprotocol.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| {
        headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(WS_KEY_PREFIX))
    })
}

/// OpenAI's answer to a bad key, so its clients raise `AuthenticationError`.
pub fn unauthorized() -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "Missing or invalid API key. Send it as `Authorization: Bearer KEY` \
                  (a WebSocket may offer the subprotocol `parlor.key.KEY` instead)."
            .into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    }
}

/// The caller of a request that passed [`authenticate`] (anonymous if it
/// did not run, as in a router built without it).
pub fn caller_of(extensions: &axum::http::Extensions) -> Caller {
    extensions.get::<Caller>().cloned().unwrap_or_default()
}
