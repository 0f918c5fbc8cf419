//! parlor as an OAuth 2.1 client of a remote MCP server (`[mcp.NAME.oauth]`).
//!
//! A [`TokenSource`] belongs to one server. It finds the authorization server
//! (the spec's `issuer`, or discovery: the server's 401 names its RFC 9728
//! protected-resource metadata, which names the authorization server, whose
//! RFC 8414 metadata names the token endpoint), asks it for an access token
//! with the RFC 8707 `resource` parameter, and hands the token out until
//! shortly before it expires. A token the server rejects is replaced once
//! ([`TokenSource::after_rejection`]).
//!
//! Two grants (`[mcp.NAME.oauth] grant`):
//! - `client_credentials`: a service account; the client secret is read from
//!   the environment variable the spec names, never from the spec.
//! - `authorization_code`: a person signed in once with `parlor mcp login`
//!   (see [`super::oauth_login`]); their refresh token, kept in the server's
//!   own [`CredentialStore`] file, buys each access token and is replaced by
//!   the new one the authorization server returns (rotation).
//!
//! Secrets and tokens are [`SecretString`]s: their
//! `Debug` is redacted and nothing here formats one into an error or a log.

use std::time::{Duration, Instant};

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use thiserror::Error;

use super::credentials::CredentialStore;
use crate::spec::{OAuthGrant, OAuthSpec};

/// A token is renewed when less than this (or half its lifetime, if
/// shorter) is left, so it does not expire between the check and the
/// server's.
const RENEW_MARGIN: Duration = Duration::from_secs(30);
/// Deadline of each request to the authorization server or the metadata.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest error text taken from an authorization server's answer.
const MAX_ERROR_TEXT: usize = 200;

/// Why no token could be had. Never carries a secret or a token.
#[derive(Debug, Error)]
pub enum OAuthError {
    #[error("the client secret environment variable {0} is not set (it must hold the OAuth client secret)")]
    NoSecret(String),
    #[error("OAuth discovery: {0}")]
    Discovery(String),
    #[error("the authorization server refused the token request: {0}")]
    Refused(String),
    #[error("token request to {url} failed: {reason}")]
    Request { url: String, reason: String },
    #[error("nobody is signed in to MCP server \"{0}\" (grant authorization_code): run `parlor mcp login {0}` with the same --pipeline")]
    NotSignedIn(String),
    #[error("the credential store: {0}")]
    Store(String),
    #[error("sign-in: {0}")]
    SignIn(String),
}

/// How this source proves itself to the token endpoint.
enum Proof {
    ClientSecret(SecretString),
    /// A person's refresh token, from and back to their store.
    SignedIn(CredentialStore),
}

/// An access token and when to stop using it.
pub(super) struct Held {
    access: SecretString,
    renew_at: Instant,
}

/// Where to ask for tokens, found once per source.
#[derive(Debug, Clone)]
pub(super) struct Endpoints {
    pub(super) token: Url,
    /// Where a person signs in (authorization code grant).
    pub(super) authorization: Option<Url>,
    /// The RFC 8707 resource indicator: the protected resource's own name
    /// for itself (from its metadata), else the server URL.
    pub(super) resource: String,
}

/// OAuth tokens for one MCP server.
pub struct TokenSource {
    /// The server's name in the spec (its credential file's name).
    name: String,
    server_url: Url,
    pub(super) spec: OAuthSpec,
    proof: Proof,
    pub(super) http: reqwest::Client,
    endpoints: tokio::sync::Mutex<Option<Endpoints>>,
    held: tokio::sync::Mutex<Option<Held>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("name", &self.name)
            .field("server_url", &self.server_url.as_str())
            .field("client_id", &self.spec.client_id)
            .field("secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// The source of server `name` at `server_url`. Reads the client secret
    /// from the environment, or finds the person's credential store; no
    /// network yet.
    ///
    /// # Errors
    /// [`OAuthError::NoSecret`] when the secret's variable is unset or empty,
    /// [`OAuthError::Store`] when there is no place for credentials, and
    /// [`OAuthError::Discovery`] for a bad server URL.
    pub fn new(name: &str, server_url: &str, spec: &OAuthSpec) -> Result<Self, OAuthError> {
        let server_url = Url::parse(server_url)
            .map_err(|e| OAuthError::Discovery(format!("bad server URL {server_url:?}: {e}")))?;
        let proof = match spec.grant {
            OAuthGrant::ClientCredentials => {
                let var = spec.client_secret_env.clone().unwrap_or_default();
                let secret = std::env::var(&var)
                    .ok()
                    .filter(|s| !s.is_empty())
                    .ok_or(OAuthError::NoSecret(var))?;
                Proof::ClientSecret(SecretString::from(secret))
            }
            OAuthGrant::AuthorizationCode => {
                Proof::SignedIn(CredentialStore::for_server(name).map_err(OAuthError::Store)?)
            }
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // A redirect could carry the form (and the secret) elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OAuthError::Discovery(e.to_string()))?;
        Ok(Self {
            name: name.to_string(),
            server_url,
            spec: spec.clone(),
            proof,
            http,
            endpoints: tokio::sync::Mutex::new(None),
            held: tokio::sync::Mutex::new(None),
        })
    }

    /// A token valid for a while yet: the held one, or a new one.
    ///
    /// # Errors
    /// When discovery or the token request fails.
    pub async fn token(&self) -> Result<SecretString, OAuthError> {
        let mut held = self.held.lock().await;
        if let Some(h) = held.as_ref() {
            if Instant::now() < h.renew_at {
                return Ok(h.access.clone());
            }
            tracing::debug!(message = "Access token near expiry; renewing.", server = %self.server_url);
        }
        let fresh = self.fetch().await?;
        let access = fresh.access.clone();
        *held = Some(fresh);
        Ok(access)
    }

    /// The server answered 401 to `sent`: drop it and get another (unless a
    /// concurrent request already did).
    ///
    /// # Errors
    /// As [`TokenSource::token`].
    pub async fn after_rejection(&self, sent: &SecretString) -> Result<SecretString, OAuthError> {
        {
            let mut held = self.held.lock().await;
            if held
                .as_ref()
                .is_some_and(|h| h.access.expose_secret() == sent.expose_secret())
            {
                *held = None;
            }
        }
        self.token().await
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn server_url(&self) -> &Url {
        &self.server_url
    }

    /// The person's credential store (authorization code grant only).
    pub(super) fn store(&self) -> Option<&CredentialStore> {
        match &self.proof {
            Proof::SignedIn(store) => Some(store),
            Proof::ClientSecret(_) => None,
        }
    }

    pub(super) async fn endpoints(&self) -> Result<Endpoints, OAuthError> {
        let mut cached = self.endpoints.lock().await;
        if let Some(e) = cached.as_ref() {
            return Ok(e.clone());
        }
        let found = self.discover().await?;
        *cached = Some(found.clone());
        Ok(found)
    }

    /// The token endpoint and resource indicator: from the spec's issuer, or
    /// from the server's 401 and its protected-resource metadata.
    async fn discover(&self) -> Result<Endpoints, OAuthError> {
        let (issuer, resource) = match &self.spec.issuer {
            // The resource still names itself when it can: its tokens'
            // audience is what its metadata says, not the URL we were given.
            Some(issuer) => match self.resource_metadata().await {
                Ok(prm) => (issuer.clone(), prm.resource),
                Err(error) => {
                    tracing::debug!(message = "No protected-resource metadata; the server URL is the resource.", server = %self.server_url, %error);
                    (issuer.clone(), self.server_url.to_string())
                }
            },
            None => {
                let prm = self.resource_metadata().await?;
                let issuer = prm.authorization_servers.first().cloned().ok_or_else(|| {
                    OAuthError::Discovery(format!(
                        "the protected-resource metadata of {} names no authorization server",
                        self.server_url
                    ))
                })?;
                (issuer, prm.resource)
            }
        };
        // A discovered issuer or endpoint is where the client secret or the
        // person's code goes: https, or http only to loopback, as for the
        // MCP server itself.
        super::allow::remote(&issuer)
            .map_err(|why| OAuthError::Discovery(format!("authorization server: {why}")))?;
        let metadata_url = well_known(&issuer, "oauth-authorization-server")?;
        let meta: AuthServerMetadata = self.get_json(&metadata_url).await?;
        // RFC 8414 §3.3: metadata for another issuer must not be used.
        if meta.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(OAuthError::Discovery(format!(
                "{metadata_url} describes issuer {:?}, not {issuer:?}",
                meta.issuer
            )));
        }
        let needed = match self.spec.grant {
            OAuthGrant::ClientCredentials => "client_credentials",
            OAuthGrant::AuthorizationCode => "authorization_code",
        };
        if let Some(grants) = &meta.grant_types_supported {
            if !grants.iter().any(|g| g == needed) {
                return Err(OAuthError::Discovery(format!(
                    "the authorization server {issuer} does not offer the {needed} grant (it offers {})",
                    grants.join(", ")
                )));
            }
        }
        let endpoint = |field: &str, value: &str| {
            super::allow::remote(value)
                .map_err(|why| OAuthError::Discovery(format!("{field}: {why}")))
        };
        let token = endpoint("token_endpoint", &meta.token_endpoint)?;
        let authorization = meta
            .authorization_endpoint
            .as_deref()
            .map(|a| endpoint("authorization_endpoint", a))
            .transpose()?;
        Ok(Endpoints {
            token,
            authorization,
            resource,
        })
    }

    /// RFC 9728: the URL in the 401's `WWW-Authenticate: Bearer
    /// resource_metadata=...`, else the well-known URL on the server's origin.
    async fn resource_metadata(&self) -> Result<ResourceMetadata, OAuthError> {
        let probe = self
            .http
            .get(self.server_url.clone())
            .header("accept", "text/event-stream, application/json")
            .send()
            .await
            .map_err(|e| OAuthError::Discovery(format!("GET {}: {e}", self.server_url)))?;
        let named = probe
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| challenge_param(v, "resource_metadata"));
        let url = match named {
            Some(u) => self.server_url.join(&u).map_err(|e| {
                OAuthError::Discovery(format!("bad resource_metadata URL {u:?}: {e}"))
            })?,
            None => well_known(self.server_url.as_str(), "oauth-protected-resource")?,
        };
        // The metadata must be served by the server it describes.
        if url.origin() != self.server_url.origin() {
            return Err(OAuthError::Discovery(format!(
                "resource metadata {url} is not on the server's origin {}",
                self.server_url.origin().ascii_serialization()
            )));
        }
        let prm: ResourceMetadata = self.get_json(&url).await?;
        // RFC 9728 §3.3: the resource named must be the one asked about.
        let named = Url::parse(&prm.resource).map_err(|e| {
            OAuthError::Discovery(format!("{url}: bad resource {:?}: {e}", prm.resource))
        })?;
        if named.origin() != self.server_url.origin()
            || !self.server_url.path().starts_with(named.path())
        {
            return Err(OAuthError::Discovery(format!(
                "{url} describes resource {}, which does not cover {}",
                prm.resource, self.server_url
            )));
        }
        Ok(prm)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &Url) -> Result<T, OAuthError> {
        let response = self
            .http
            .get(url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| OAuthError::Discovery(format!("GET {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(OAuthError::Discovery(format!(
                "GET {url}: HTTP {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| OAuthError::Discovery(format!("GET {url}: not the expected JSON: {e}")))
    }

    /// A new access token: the client-credentials grant (RFC 6749 §4.4,
    /// secret in the body), or the person's refresh token (§6), whose
    /// successor is saved before the access token is used.
    async fn fetch(&self) -> Result<Held, OAuthError> {
        let endpoints = self.endpoints().await?;
        let scope = self.spec.scopes.join(" ");
        let client_id = self.spec.client_id.as_str();
        let mut form = vec![
            ("client_id", client_id),
            ("resource", endpoints.resource.as_str()),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        let refresh;
        match &self.proof {
            Proof::ClientSecret(secret) => {
                form.push(("grant_type", "client_credentials"));
                form.push(("client_secret", secret.expose_secret()));
            }
            Proof::SignedIn(store) => {
                refresh = store
                    .load(self.server_url.as_str(), client_id)
                    .map_err(OAuthError::Store)?
                    .ok_or_else(|| OAuthError::NotSignedIn(self.name.clone()))?;
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", refresh.expose_secret()));
            }
        }
        let asked = Instant::now();
        let answer = self.request_token(&endpoints.token, &form).await?;
        self.keep(answer, asked)
    }

    /// POSTs `form` to the token endpoint and reads a bearer token answer.
    pub(super) async fn request_token(
        &self,
        url: &Url,
        form: &[(&str, &str)],
    ) -> Result<TokenAnswer, OAuthError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .http
            .post(url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| OAuthError::Request {
                url: url.to_string(),
                reason: e.without_url().to_string(),
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| OAuthError::Request {
            url: url.to_string(),
            reason: e.without_url().to_string(),
        })?;
        if !status.is_success() {
            return Err(OAuthError::Refused(refusal(status, &body)));
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| OAuthError::Request {
                url: url.to_string(),
                // serde's message quotes no input for a missing field or wrong type.
                reason: format!("the answer is not a token response: {e}"),
            })?;
        if !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(OAuthError::Refused(format!(
                "token_type {:?}, expected Bearer",
                answer.token_type
            )));
        }
        Ok(answer)
    }

    /// Saves the rotated refresh token (a person's grant) and holds the
    /// access token of `answer`, asked for at `asked`.
    pub(super) fn keep(&self, answer: TokenAnswer, asked: Instant) -> Result<Held, OAuthError> {
        // Known as secrets from now on: a reply or a tool's arguments that
        // would carry one is stopped like one carrying an API key.
        let issued = crate::secrets::Issued::global();
        let slot = format!("{} {}", self.server_url, self.spec.client_id);
        issued.remember(&slot, &answer.access_token);
        if let Some(refresh) = &answer.refresh_token {
            issued.remember(&slot, refresh);
        }
        if let Proof::SignedIn(store) = &self.proof {
            // The old refresh token is spent: without the new one saved, the
            // next run would have to sign in again.
            let next = answer.refresh_token.ok_or_else(|| {
                OAuthError::Refused("the answer carries no refresh_token to keep signed in".into())
            })?;
            store
                .save(
                    self.server_url.as_str(),
                    &self.spec.client_id,
                    &SecretString::from(next),
                )
                .map_err(OAuthError::Store)?;
        }
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300));
        let margin = RENEW_MARGIN.min(lifetime / 2);
        tracing::info!(
            message = "OAuth access token obtained.",
            server = %self.server_url,
            client_id = %self.spec.client_id,
            expires_in_s = lifetime.as_secs(),
            scope = answer.scope.as_deref().unwrap_or(""),
        );
        Ok(Held {
            access: SecretString::from(answer.access_token),
            renew_at: asked + lifetime - margin,
        })
    }

    /// Holds `held` as the current token (after a sign-in).
    pub(super) async fn hold(&self, held: Held) {
        *self.held.lock().await = Some(held);
    }
}

/// RFC 6749 §5.2 error text of a refused token request (the server's own
/// words, bounded), or the HTTP status.
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(r) => {
            let text = match r.error_description {
                Some(d) => format!("{}: {d}", r.error),
                None => r.error,
            };
            format!(
                "HTTP {status}, {}",
                text.chars().take(MAX_ERROR_TEXT).collect::<String>()
            )
        }
        Err(_) => format!("HTTP {status}"),
    }
}

/// `issuer` with `/.well-known/NAME` put between its origin and its path
/// (RFC 8414 §3.1, RFC 9728 §3.1).
fn well_known(base: &str, name: &str) -> Result<Url, OAuthError> {
    let url =
        Url::parse(base).map_err(|e| OAuthError::Discovery(format!("bad URL {base:?}: {e}")))?;
    let path = url.path().trim_end_matches('/');
    let mut out = url.clone();
    out.set_path(&format!("/.well-known/{name}{path}"));
    out.set_query(None);
    out.set_fragment(None);
    Ok(out)
}

/// The value of `param` in a `Bearer` challenge (quoted or not).
pub fn challenge_param(header: &str, param: &str) -> Option<String> {
    let rest = header.trim();
    let rest = rest
        .strip_prefix("Bearer")
        .or_else(|| rest.strip_prefix("bearer"))?;
    for part in split_params(rest) {
        let (key, value) = part.split_once('=')?;
        if key.trim().eq_ignore_ascii_case(param) {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

/// Splits `a="x, y", b=z` at the commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

#[derive(Debug, Deserialize)]
struct ResourceMetadata {
    resource: String,
    #[serde(default)]
    authorization_servers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct AuthServerMetadata {
    issuer: String,
    token_endpoint: String,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    grant_types_supported: Option<Vec<String>>,
}

/// RFC 6749 §5.1. Not `Debug`: it holds the token in the clear.
#[derive(Deserialize)]
pub(super) struct TokenAnswer {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The secret or the person's code would go to the issuer in clear.
    #[tokio::test]
    async fn an_authorization_server_over_plain_http_elsewhere_is_refused() {
        let spec = OAuthSpec {
            grant: OAuthGrant::AuthorizationCode,
            client_id: "parlor".into(),
            client_secret_env: None,
            scopes: vec![],
            issuer: Some("http://auth.example.com/".into()),
        };
        // Nothing listens on port 9: no metadata, so the URL is the resource.
        let client = TokenSource::new("kb", "http://127.0.0.1:9/mcp", &spec).unwrap();
        let err = client.endpoints().await.unwrap_err().to_string();
        assert!(
            err.contains("authorization server") && err.contains("plain http"),
            "{err}"
        );
    }

    #[test]
    fn reads_challenge_parameters() {
        let h = r#"Bearer error="insufficient_scope", scope="knowledge:read", resource_metadata="http://h/.well-known/oauth-protected-resource""#;
        assert_eq!(
            challenge_param(h, "scope").as_deref(),
            Some("knowledge:read")
        );
        assert_eq!(
            challenge_param(h, "resource_metadata").as_deref(),
            Some("http://h/.well-known/oauth-protected-resource")
        );
        assert_eq!(challenge_param("Basic realm=x", "realm"), None);
    }

    #[test]
    fn well_known_goes_between_origin_and_path() {
        assert_eq!(
            well_known("http://a:1/mcp", "oauth-protected-resource")
                .unwrap()
                .as_str(),
            "http://a:1/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            well_known("http://a:1/", "oauth-authorization-server")
                .unwrap()
                .as_str(),
            "http://a:1/.well-known/oauth-authorization-server"
        );
    }
}
