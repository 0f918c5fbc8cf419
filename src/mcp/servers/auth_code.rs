//! The authorization code grant with PKCE (OAuth 2.1 §4.1), for a person
//! signing parlor in to a remote MCP server, and the refresh tokens that keep
//! it signed in.
//!
//! `GET /authorize` shows a consent page (who asks, for which scopes and
//! which server); `POST /authorize` takes the person's name, password and
//! answer, and sends the browser back to the client's registered redirect URI
//! with a one-time code. The code is worth nothing without the PKCE verifier
//! only the client holds, so a code seen in a browser history or a log
//! cannot be exchanged by anyone else.
//!
//! Refresh tokens rotate: each use returns a new one and retires the old.
//! A retired token presented again means two parties hold it, so the whole
//! grant (every token descended from the same sign-in) is revoked and the
//! person has to sign in again (OAuth 2.1 §4.3.1, the BCP's reuse detection).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SecureRandom as _;
use axum::extract::{Form, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::{AuthServer, TokenError, TokenForm};

/// How long a code may wait for its exchange: it is meant to be used at once.
const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a refresh token stays good unused.
const REFRESH_TTL: Duration = Duration::from_secs(24 * 3600);

/// A code handed out and not yet exchanged.
struct Pending {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    user: String,
    scopes: Vec<String>,
    resource: String,
    expires: Instant,
}

/// A live refresh token's grant.
struct Grant {
    client_id: String,
    user: String,
    scopes: Vec<String>,
    resource: String,
    /// Every token rotated from one sign-in shares this.
    family: u64,
    expires: Instant,
}

/// Codes and refresh tokens, by the SHA-256 of their value (a memory dump
/// holds no usable token).
#[derive(Default)]
pub(super) struct Grants {
    codes: HashMap<[u8; 32], Pending>,
    refresh: HashMap<[u8; 32], Grant>,
    /// Retired refresh tokens and their family, for reuse detection.
    retired: HashMap<[u8; 32], u64>,
    families: u64,
}

fn hash(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

fn random_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokenError::server("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// An http URL on a loopback address (`127.0.0.1`, `[::1]`, `localhost`).
pub(super) fn is_loopback(url: &url::Url) -> bool {
    url.scheme() == "http"
        && match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        }
}

/// `asked` is one of `registered`: exactly, or for a loopback URI with any
/// port (RFC 8252 §7.3).
fn redirect_allowed(registered: &[String], asked: &str) -> bool {
    let Ok(asked_url) = url::Url::parse(asked) else {
        return false;
    };
    registered.iter().any(|r| {
        r == asked
            || url::Url::parse(r).is_ok_and(|mut r| {
                if !is_loopback(&r) || !is_loopback(&asked_url) {
                    return false;
                }
                let _ = r.set_port(asked_url.port());
                r == asked_url
            })
    })
}

/// The authorization request, as the query of `GET /authorize` and again
/// (hidden fields) in the consent form.
#[derive(Debug, Deserialize)]
pub(super) struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    resource: Option<String>,
}

/// The consent form's own fields besides the request. Not `Debug`: it
/// holds a password.
#[derive(Deserialize)]
pub(super) struct ConsentForm {
    // Only string fields, so serde's `flatten` works with forms.
    #[serde(flatten)]
    request: AuthorizeParams,
    username: Option<String>,
    password: Option<String>,
    decision: Option<String>,
}

/// A checked authorization request.
struct Request {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scopes: Vec<String>,
    resource: String,
    state: Option<String>,
}

/// What is wrong with a request: shown on the page while the redirect URI
/// is not yet trusted (never send a browser to an unregistered address),
/// sent back to the client once it is.
enum Refusal {
    Page(String),
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Page(why) => (
                StatusCode::BAD_REQUEST,
                Html(page(
                    "Sign-in request refused",
                    &format!("<p>{}</p>", escape(&why)),
                )),
            )
                .into_response(),
            Refusal::Redirect {
                redirect_uri,
                state,
                error,
                description,
            } => back_to_client(
                &redirect_uri,
                &[("error", error), ("error_description", &description)],
                state.as_deref(),
            ),
        }
    }
}

/// A 303 to the client's redirect URI with `params` (and `state`).
fn back_to_client(redirect_uri: &str, params: &[(&str, &str)], state: Option<&str>) -> Response {
    let mut url = match url::Url::parse(redirect_uri) {
        Ok(url) => url,
        Err(_) => return Refusal::Page("bad redirect URI".into()).into_response(),
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            query.append_pair(k, v);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
    }
    let mut response = Redirect::to(url.as_str()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

fn check(server: &AuthServer, p: AuthorizeParams) -> Result<Request, Refusal> {
    let client_id = p
        .client_id
        .ok_or_else(|| Refusal::Page("client_id is missing".into()))?;
    let client = server
        .client(&client_id)
        .ok_or_else(|| Refusal::Page(format!("unknown client {client_id:?}")))?;
    let redirect_uri = p
        .redirect_uri
        .ok_or_else(|| Refusal::Page("redirect_uri is missing".into()))?;
    if !redirect_allowed(&client.redirect_uris, &redirect_uri) {
        return Err(Refusal::Page(format!(
            "redirect_uri {redirect_uri:?} is not registered for client {client_id:?}"
        )));
    }
    let refuse = |error: &'static str, description: String| Refusal::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: p.state.clone(),
        error,
        description,
    };
    if p.response_type.as_deref() != Some("code") {
        return Err(refuse(
            "unsupported_response_type",
            "response_type must be code".into(),
        ));
    }
    let challenge = match (p.code_challenge, p.code_challenge_method.as_deref()) {
        (Some(c), Some("S256")) if (43..=128).contains(&c.len()) => c,
        (Some(_), Some("S256")) => {
            return Err(refuse(
                "invalid_request",
                "code_challenge must be 43 to 128 characters".into(),
            ))
        }
        _ => {
            return Err(refuse(
                "invalid_request",
                "PKCE is required: code_challenge with code_challenge_method=S256".into(),
            ))
        }
    };
    let resource = match p.resource {
        Some(r) if url::Url::parse(&r).is_ok_and(|u| u.fragment().is_none()) => r,
        _ => {
            return Err(refuse(
                "invalid_target",
                "resource must name the MCP server the token is for (RFC 8707)".into(),
            ))
        }
    };
    let scopes: Vec<String> = match p.scope.as_deref() {
        Some(s) if !s.trim().is_empty() => s.split_whitespace().map(str::to_owned).collect(),
        _ => client.scopes.clone(),
    };
    if let Some(bad) = scopes.iter().find(|s| !client.scopes.contains(s)) {
        return Err(refuse(
            "invalid_scope",
            format!("client {client_id:?} may not have scope {bad:?}"),
        ));
    }
    Ok(Request {
        client_id,
        redirect_uri,
        challenge,
        scopes,
        resource,
        state: p.state,
    })
}

/// `GET /authorize`: the consent page.
pub(super) async fn consent_page(
    State(server): State<Arc<AuthServer>>,
    Query(params): Query<AuthorizeParams>,
) -> Response {
    match check(&server, params) {
        Ok(request) => Html(consent_html(&request, None)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /authorize`: the person's answer.
pub(super) async fn consent_answer(
    State(server): State<Arc<AuthServer>>,
    Form(form): Form<ConsentForm>,
) -> Response {
    let request = match check(&server, form.request) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    if form.decision.as_deref() != Some("allow") {
        tracing::info!(message = "Sign-in declined.", client_id = %request.client_id);
        return back_to_client(
            &request.redirect_uri,
            &[
                ("error", "access_denied"),
                ("error_description", "the person declined"),
            ],
            request.state.as_deref(),
        );
    }
    let user = form.username.unwrap_or_default();
    if !server.sign_in(&user, form.password.as_deref().unwrap_or_default()) {
        tracing::info!(message = "Sign-in failed: wrong name or password.", client_id = %request.client_id);
        return (
            StatusCode::UNAUTHORIZED,
            Html(consent_html(&request, Some("Wrong name or password."))),
        )
            .into_response();
    }
    let code = match random_token() {
        Ok(code) => code,
        Err(e) => return e.into_response(),
    };
    tracing::info!(message = "Authorization code issued.", client_id = %request.client_id, user = %user, scope = %request.scopes.join(" "));
    server.grants.lock().expect("not poisoned").codes.insert(
        hash(&code),
        Pending {
            client_id: request.client_id,
            redirect_uri: request.redirect_uri.clone(),
            challenge: request.challenge,
            user,
            scopes: request.scopes,
            resource: request.resource,
            expires: Instant::now() + CODE_TTL,
        },
    );
    back_to_client(
        &request.redirect_uri,
        &[("code", &code), ("iss", server.issuer())],
        request.state.as_deref(),
    )
}

fn invalid_grant(description: impl Into<String>) -> TokenError {
    TokenError::bad("invalid_grant", description)
}

/// `grant_type=authorization_code`: a code and its PKCE verifier for
/// tokens. The code is spent whatever the outcome.
pub(super) fn exchange(
    server: &AuthServer,
    client_id: &str,
    form: &TokenForm,
) -> Result<serde_json::Value, TokenError> {
    let code = form
        .code
        .as_deref()
        .ok_or_else(|| TokenError::bad("invalid_request", "code is missing"))?;
    let verifier = form
        .code_verifier
        .as_deref()
        .ok_or_else(|| TokenError::bad("invalid_request", "code_verifier is missing (PKCE)"))?;
    let pending = server
        .grants
        .lock()
        .expect("not poisoned")
        .codes
        .remove(&hash(code))
        .ok_or_else(|| invalid_grant("unknown, used or expired code"))?;
    if Instant::now() > pending.expires {
        return Err(invalid_grant("the code expired; sign in again"));
    }
    if pending.client_id != client_id {
        return Err(invalid_grant("the code was issued to another client"));
    }
    if form.redirect_uri.as_deref() != Some(pending.redirect_uri.as_str()) {
        return Err(invalid_grant(
            "redirect_uri differs from the authorization request's",
        ));
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if !bool::from(computed.as_bytes().ct_eq(pending.challenge.as_bytes())) {
        tracing::info!(message = "PKCE verifier does not match.", client_id = %client_id);
        return Err(invalid_grant(
            "code_verifier does not match the code_challenge",
        ));
    }
    let family = {
        let mut grants = server.grants.lock().expect("not poisoned");
        grants.families += 1;
        grants.families
    };
    tokens(
        server,
        Grant {
            client_id: pending.client_id,
            user: pending.user,
            scopes: pending.scopes,
            resource: pending.resource,
            family,
            expires: Instant::now() + REFRESH_TTL,
        },
    )
}

/// `grant_type=refresh_token`: a live refresh token for new tokens; the old
/// one is retired. A retired one presented again revokes its whole family.
pub(super) fn refresh(
    server: &AuthServer,
    client_id: &str,
    form: &TokenForm,
) -> Result<serde_json::Value, TokenError> {
    let presented = hash(
        form.refresh_token
            .as_deref()
            .ok_or_else(|| TokenError::bad("invalid_request", "refresh_token is missing"))?,
    );
    let grant = {
        let mut grants = server.grants.lock().expect("not poisoned");
        if let Some(family) = grants.retired.get(&presented).copied() {
            grants.refresh.retain(|_, g| g.family != family);
            drop(grants);
            tracing::warn!(message = "A retired refresh token was used again: its grant is revoked.", client_id = %client_id);
            return Err(invalid_grant(
                "refresh token already used: the grant is revoked; sign in again",
            ));
        }
        let grant = grants
            .refresh
            .remove(&presented)
            .ok_or_else(|| invalid_grant("unknown or revoked refresh token; sign in again"))?;
        grants.retired.insert(presented, grant.family);
        grant
    };
    if grant.client_id != client_id {
        return Err(invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    if Instant::now() > grant.expires {
        return Err(invalid_grant("the refresh token expired; sign in again"));
    }
    let scopes = match form.scope.as_deref() {
        Some(s) if !s.trim().is_empty() => {
            let asked: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
            if let Some(bad) = asked.iter().find(|s| !grant.scopes.contains(s)) {
                return Err(TokenError::bad(
                    "invalid_scope",
                    format!("scope {bad:?} was not granted at sign-in"),
                ));
            }
            asked
        }
        _ => grant.scopes.clone(),
    };
    tokens(
        server,
        Grant {
            scopes,
            expires: Instant::now() + REFRESH_TTL,
            ..grant
        },
    )
}

/// An access token for `grant`'s person and a new refresh token for it.
fn tokens(server: &AuthServer, grant: Grant) -> Result<serde_json::Value, TokenError> {
    let client = server
        .client(&grant.client_id)
        .ok_or_else(|| invalid_grant("the client is no longer registered"))?;
    let (access, ttl) = server.issue(
        &grant.user,
        &grant.client_id,
        client,
        &grant.resource,
        &grant.scopes,
    )?;
    let refresh = random_token()?;
    tracing::info!(message = "Access token issued.", client_id = %grant.client_id, user = %grant.user, aud = %grant.resource, scope = %grant.scopes.join(" "), ttl_s = ttl.as_secs());
    let scope = grant.scopes.join(" ");
    server
        .grants
        .lock()
        .expect("not poisoned")
        .refresh
        .insert(hash(&refresh), grant);
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "refresh_token": refresh,
        "scope": scope,
    }))
}

fn consent_html(r: &Request, problem: Option<&str>) -> String {
    let hidden = [
        ("response_type", "code"),
        ("client_id", r.client_id.as_str()),
        ("redirect_uri", r.redirect_uri.as_str()),
        ("code_challenge", r.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("scope", &r.scopes.join(" ")),
        ("resource", r.resource.as_str()),
        ("state", r.state.as_deref().unwrap_or_default()),
    ]
    .iter()
    .map(|(k, v)| format!(r#"<input type="hidden" name="{k}" value="{}">"#, escape(v)))
    .collect::<String>();
    let problem = problem
        .map(|p| format!(r#"<p role="alert">{}</p>"#, escape(p)))
        .unwrap_or_default();
    page(
        "Sign in",
        &format!(
            r#"<p><b>{client}</b> asks to use <b>{resource}</b> on your behalf with: <b>{scopes}</b>.</p>
{problem}<form method="post" action="/authorize">{hidden}
<label>Name <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button name="decision" value="allow">Allow</button> <button name="decision" value="deny">Deny</button>
</form>"#,
            client = escape(&r.client_id),
            resource = escape(&r.resource),
            scopes = escape(&r.scopes.join(" ")),
        ),
    )
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1>{body}</body></html>"
    )
}

/// Text safe inside HTML elements and quoted attributes.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects_match_on_any_port_others_exactly() {
        let registered = vec![
            "http://127.0.0.1/callback".to_string(),
            "https://app.example.com/cb".to_string(),
        ];
        assert!(redirect_allowed(
            &registered,
            "http://127.0.0.1:53682/callback"
        ));
        assert!(redirect_allowed(&registered, "http://127.0.0.1/callback"));
        assert!(redirect_allowed(&registered, "https://app.example.com/cb"));
        assert!(!redirect_allowed(
            &registered,
            "http://127.0.0.1:53682/other"
        ));
        assert!(!redirect_allowed(
            &registered,
            "https://app.example.com:8443/cb"
        ));
        assert!(!redirect_allowed(
            &registered,
            "https://app.example.com/cb/x"
        ));
        assert!(!redirect_allowed(
            &registered,
            "http://evil.example/callback"
        ));
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
