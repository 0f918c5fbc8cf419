//! rmcp's Streamable HTTP client with an OAuth bearer token on every request.
//!
//! [`BearerClient`] wraps the reqwest client rmcp already drives and asks its
//! server's [`TokenSource`] for a token before each request (renewed before
//! it expires). A 401 gets one retry with a new token; a second 401 and a 403
//! `insufficient_scope` become errors that say what the server wants. Only
//! this server's requests carry this server's token.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use secrecy::ExposeSecret;
use sse_stream::{Error as SseError, Sse};

use super::oauth::{challenge_param, TokenSource};

type HttpError = StreamableHttpError<reqwest::Error>;

/// reqwest for rmcp's Streamable HTTP transport, with one server's tokens.
#[derive(Clone)]
pub struct BearerClient {
    http: reqwest::Client,
    tokens: Arc<TokenSource>,
}

impl BearerClient {
    pub fn new(http: reqwest::Client, tokens: Arc<TokenSource>) -> Self {
        Self { http, tokens }
    }

    /// Runs `call` with a token; on a 401, once more with a new one.
    async fn authorized<T, F, Fut>(&self, call: F) -> Result<T, HttpError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, HttpError>>,
    {
        let token = self.tokens.token().await.map_err(oauth_failed)?;
        let result = match call(token.expose_secret().to_owned()).await {
            Err(StreamableHttpError::AuthRequired(_)) => {
                tracing::info!(message = "Access token rejected (401); getting a new one.");
                let fresh = self
                    .tokens
                    .after_rejection(&token)
                    .await
                    .map_err(oauth_failed)?;
                call(fresh.expose_secret().to_owned()).await
            }
            other => other,
        };
        result.map_err(explain)
    }
}

fn oauth_failed(e: super::oauth::OAuthError) -> HttpError {
    StreamableHttpError::UnexpectedServerResponse(format!("OAuth: {e}").into())
}

/// 401 after a fresh token, and 403 for a missing scope, in words.
fn explain(e: HttpError) -> HttpError {
    match e {
        StreamableHttpError::AuthRequired(challenge) => {
            let why = challenge_param(&challenge.www_authenticate_header, "error_description")
                .unwrap_or_else(|| "no reason given".into());
            StreamableHttpError::UnexpectedServerResponse(
                format!("the server rejected a freshly issued access token (401: {why})").into(),
            )
        }
        StreamableHttpError::InsufficientScope(challenge) => {
            let scope = challenge
                .required_scope
                .clone()
                .or_else(|| challenge_param(&challenge.www_authenticate_header, "scope"))
                .unwrap_or_else(|| "(not named)".into());
            StreamableHttpError::UnexpectedServerResponse(
                format!(
                    "the server requires scope \"{scope}\", which the access token does not have \
                     (403 insufficient_scope; add it to `scopes` in [mcp.NAME.oauth] and to the \
                     client's registration)"
                )
                .into(),
            )
        }
        other => other,
    }
}

impl StreamableHttpClient for BearerClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        self.authorized(|token| {
            self.http.post_message(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                Some(token),
                custom_headers.clone(),
            )
        })
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        self.authorized(|token| {
            self.http.post_message_with_max_sse_event_size(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                Some(token),
                custom_headers.clone(),
                max_sse_event_size,
            )
        })
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, HttpError> {
        self.authorized(|token| {
            self.http.post_message_with_response_limits(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                Some(token),
                custom_headers.clone(),
                limits,
            )
        })
        .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), HttpError> {
        self.authorized(|token| {
            self.http.delete_session(
                uri.clone(),
                session_id.clone(),
                Some(token),
                custom_headers.clone(),
            )
        })
        .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, HttpError> {
        self.authorized(|token| {
            self.http.get_stream(
                uri.clone(),
                session_id.clone(),
                last_event_id.clone(),
                Some(token),
                custom_headers.clone(),
            )
        })
        .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, HttpError> {
        self.authorized(|token| {
            self.http.get_stream_with_max_sse_event_size(
                uri.clone(),
                session_id.clone(),
                last_event_id.clone(),
                Some(token),
                custom_headers.clone(),
                max_sse_event_size,
            )
        })
        .await
    }
}
