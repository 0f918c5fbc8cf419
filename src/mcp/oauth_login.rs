//! `parlor mcp login NAME`: a person signs parlor in to a remote MCP server
//! with the OAuth 2.1 authorization code grant and PKCE (RFC 7636), the way
//! a native app does it (RFC 8252): parlor listens on a loopback port for
//! the browser's redirect, shows the person the authorization URL, and
//! exchanges the code it gets back, with the verifier only it holds, for an
//! access token and a refresh token. The refresh token goes to the server's
//! own credential file; later runs renew from it without a person.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SecureRandom as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::Url;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::oauth::{OAuthError, TokenSource};

/// Longest request line and headers read from the browser.
const MAX_REQUEST: usize = 16 * 1024;

/// Signs a person in for `tokens`' server: `show` gets the URL to open in a
/// browser; the redirect must come back within `wait`. On success the
/// refresh token is saved and `tokens` holds a fresh access token.
///
/// # Errors
/// A source that is not for a person's grant, discovery, a sign-in the
/// person or the server refused, a timeout, or a refused code exchange.
pub async fn login(
    tokens: &TokenSource,
    show: impl FnOnce(&Url),
    wait: Duration,
) -> Result<(), OAuthError> {
    if tokens.store().is_none() {
        return Err(OAuthError::SignIn(format!(
            "MCP server \"{}\" uses the client_credentials grant: there is nobody to sign in \
             (set grant = \"authorization_code\" in [mcp.{}.oauth])",
            tokens.name(),
            tokens.name()
        )));
    }
    let endpoints = tokens.endpoints().await?;
    let authorization = endpoints.authorization.clone().ok_or_else(|| {
        OAuthError::Discovery(
            "the authorization server's metadata names no authorization_endpoint".into(),
        )
    })?;
    let verifier = random(32)?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random(16)?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| OAuthError::SignIn(format!("cannot listen on a loopback port: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| OAuthError::SignIn(e.to_string()))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let scope = tokens.spec.scopes.join(" ");
    let mut url = authorization;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &tokens.spec.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &state)
        .append_pair("resource", &endpoints.resource);
    if !scope.is_empty() {
        url.query_pairs_mut().append_pair("scope", &scope);
    }
    show(&url);
    let code = tokio::time::timeout(wait, redirected(&listener, &state))
        .await
        .map_err(|_| {
            OAuthError::SignIn(format!(
                "no answer from the browser within {} s",
                wait.as_secs()
            ))
        })??;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", tokens.spec.client_id.as_str()),
        ("code_verifier", verifier.as_str()),
        ("resource", endpoints.resource.as_str()),
    ];
    let asked = Instant::now();
    let answer = tokens.request_token(&endpoints.token, &form).await?;
    let held = tokens.keep(answer, asked)?;
    tokens.hold(held).await;
    tracing::info!(message = "Signed in.", server = %tokens.server_url(), client_id = %tokens.spec.client_id);
    Ok(())
}

/// `n` random bytes, URL-safe base64.
fn random(n: usize) -> Result<String, OAuthError> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| OAuthError::SignIn("no randomness".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Waits for the browser's redirect carrying `state`, answers it with a
/// page, and returns its code. Requests for other paths, or with another
/// state (a page trying to slip its own code in), are answered and ignored.
async fn redirected(listener: &TcpListener, state: &str) -> Result<String, OAuthError> {
    loop {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|e| OAuthError::SignIn(format!("loopback listener: {e}")))?;
        let Some(target) = request_target(&mut stream).await else {
            continue;
        };
        let Ok(url) = Url::parse(&format!("http://127.0.0.1{target}")) else {
            answer(&mut stream, 400, "Bad request.").await;
            continue;
        };
        if url.path() != "/callback" {
            answer(&mut stream, 404, "Not found.").await;
            continue;
        }
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        if param("state").as_deref() != Some(state) {
            answer(&mut stream, 400, "This sign-in was not started here.").await;
            continue;
        }
        if let Some(error) = param("error") {
            let why = match param("error_description") {
                Some(d) => format!("{error}: {d}"),
                None => error,
            };
            answer(&mut stream, 200, "Sign-in refused. You can close this tab.").await;
            return Err(OAuthError::SignIn(format!(
                "the authorization server answered {why}"
            )));
        }
        if let Some(code) = param("code") {
            answer(
                &mut stream,
                200,
                "parlor is signed in. You can close this tab.",
            )
            .await;
            return Ok(code);
        }
        answer(&mut stream, 400, "No code in the redirect.").await;
    }
}

/// The target of an HTTP request's first line (`/callback?...`), read
/// within [`MAX_REQUEST`] bytes; `None` for anything else.
async fn request_target(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next()?.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) if target.starts_with('/') => Some(target.to_string()),
        _ => None,
    }
}

async fn answer(stream: &mut TcpStream, status: u16, text: &str) {
    let body = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>parlor</title><p>{text}</p></html>"
    );
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/html; charset=utf-8\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
