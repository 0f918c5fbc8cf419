//! `parlor-mcp-auth`: a small OAuth 2.1 authorization server for parlor's
//! remote MCP servers.
//!
//! It issues short-lived JWT access tokens (EdDSA, a key generated at start
//! and published at `/jwks`) to registered clients: service accounts with
//! the `client_credentials` grant, and people with the `authorization_code`
//! grant and PKCE (the consent page and codes are in [`super::auth_code`]),
//! kept signed in with rotating `refresh_token`s. Every token names the resource it is for
//! (`aud`, from the RFC 8707 `resource` parameter, which is required) and
//! its `scope` (a subset of what the client is registered for). RFC 8414
//! metadata is at `/.well-known/oauth-authorization-server`.
//!
//! Clients and people come from a TOML file with the SHA-256 of each secret
//! and password, never the secret itself:
//!
//! ```toml
//! [[client]]
//! id = "parlor"
//! secret_sha256 = "9f86d0..."      # printf %s "$SECRET" | sha256sum
//! scopes = ["knowledge:read"]
//! # token_ttl_secs = 300            # this client's token lifetime
//!
//! [[client]]                        # a public client: no secret, PKCE
//! id = "parlor-cli"
//! redirect_uris = ["http://127.0.0.1/callback"]   # any port on loopback
//! scopes = ["knowledge:read"]
//!
//! [[user]]
//! name = "alice"
//! password_sha256 = "..."
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aws_lc_rs::rand::SecureRandom as _;
use aws_lc_rs::signature::KeyPair as _;
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Default listen address of `parlor-mcp-auth`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8930";
/// Token lifetime when the client's entry sets none: short, so a leaked
/// token is useful for minutes, not days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// One registered client, as written in the clients file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub id: String,
    /// Hex SHA-256 of the client secret. Secrets are random and long, so a
    /// plain hash is enough; it keeps the file from being a key ring.
    /// None: a public client (a CLI on someone's machine cannot keep a
    /// secret), which may only use the authorization code grant with PKCE.
    #[serde(default)]
    pub secret_sha256: Option<String>,
    /// Where the authorization code may be sent. A loopback URI matches on
    /// any port (RFC 8252 §7.3: the client picks a free one each time).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// The scopes this client may be granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// This client's token lifetime in seconds (default 300).
    #[serde(default)]
    pub token_ttl_secs: Option<u64>,
}

/// A person who may sign in on the consent page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    /// Hex SHA-256 of the password. Fine for an example server's test
    /// accounts; a real deployment puts a real identity provider here.
    pub password_sha256: String,
}

/// What a clients file registers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientEntry>,
    #[serde(default, rename = "user")]
    pub users: Vec<UserEntry>,
}

/// A registered client, ready to check.
pub(super) struct Client {
    /// None for a public client.
    secret_sha256: Option<[u8; 32]>,
    pub(super) scopes: Vec<String>,
    pub(super) redirect_uris: Vec<String>,
    ttl: Duration,
}

impl Client {
    pub(super) fn is_public(&self) -> bool {
        self.secret_sha256.is_none()
    }
}

/// Reads and checks a clients file.
///
/// # Errors
/// When the file cannot be read or parsed.
pub fn load_clients(path: &std::path::Path) -> anyhow::Result<Registry> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the clients file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: not a clients file", path.display()))
}

/// A hex SHA-256 from a clients file, or an error naming its entry.
fn digest(hex_digest: &str, whose: &str, field: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(hex_digest)
        .ok()
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
        .with_context(|| {
            format!("{whose}: {field} must be 64 hex digits (printf %s \"$SECRET\" | sha256sum)")
        })
}

/// SHA-256 of a secret in hex, as the clients file wants it.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The authorization server's state.
pub struct AuthServer {
    issuer: String,
    clients: BTreeMap<String, Client>,
    /// Password digests by user name.
    users: BTreeMap<String, [u8; 32]>,
    /// Codes and refresh tokens in flight (authorization code grant).
    pub(super) grants: std::sync::Mutex<super::auth_code::Grants>,
    key: EncodingKey,
    kid: String,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServer")
            .field("issuer", &self.issuer)
            .field("clients", &self.clients.keys().collect::<Vec<_>>())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AuthServer {
    /// A server for `issuer` (its own base URL, e.g. `http://127.0.0.1:8930`)
    /// with a fresh Ed25519 signing key.
    ///
    /// # Errors
    /// A hash that is not 64 hex digits, a client id or user name that
    /// repeats, a public client without redirect URIs, or a failed key
    /// generation.
    pub fn new(issuer: &str, registry: Registry) -> anyhow::Result<Self> {
        let mut by_id = BTreeMap::new();
        for c in registry.clients {
            let whose = format!("client {:?}", c.id);
            let hash = c
                .secret_sha256
                .as_deref()
                .map(|h| digest(h, &whose, "secret_sha256"))
                .transpose()?;
            anyhow::ensure!(
                hash.is_some() || !c.redirect_uris.is_empty(),
                "{whose}: a client without a secret signs people in, so it needs redirect_uris"
            );
            for uri in &c.redirect_uris {
                let parsed = url::Url::parse(uri)
                    .with_context(|| format!("{whose}: redirect URI {uri:?}"))?;
                anyhow::ensure!(
                    parsed.fragment().is_none()
                        && (parsed.scheme() == "https" || super::auth_code::is_loopback(&parsed)),
                    "{whose}: redirect URI {uri:?} must be https or http on a loopback address, without a fragment"
                );
            }
            let client = Client {
                secret_sha256: hash,
                scopes: c.scopes,
                redirect_uris: c.redirect_uris,
                ttl: c
                    .token_ttl_secs
                    .map_or(DEFAULT_TTL, Duration::from_secs)
                    .max(Duration::from_secs(1)),
            };
            anyhow::ensure!(
                by_id.insert(c.id.clone(), client).is_none(),
                "client {:?} is registered twice",
                c.id
            );
        }
        let mut users = BTreeMap::new();
        for u in registry.users {
            let hash = digest(
                &u.password_sha256,
                &format!("user {:?}", u.name),
                "password_sha256",
            )?;
            anyhow::ensure!(
                users.insert(u.name.clone(), hash).is_none(),
                "user {:?} is registered twice",
                u.name
            );
        }
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("cannot generate a signing key"))?;
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("cannot read the generated signing key"))?;
        let public = pair.public_key().as_ref().to_vec();
        // The key id is the key's own digest: stable for the key, new per key.
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(&public)[..12]);
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
            "kid": kid, "x": URL_SAFE_NO_PAD.encode(&public),
        });
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_string(),
            clients: by_id,
            users,
            grants: std::sync::Mutex::default(),
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            kid,
            jwk,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn metadata(&self) -> serde_json::Value {
        let i = &self.issuer;
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "jwks_uri": format!("{i}/jwks"),
            "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "none"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": self.clients.values().flat_map(|c| c.scopes.iter()).collect::<std::collections::BTreeSet<_>>(),
        })
    }

    /// Checks the client's secret in constant time; unknown ids and wrong
    /// secrets look the same to the caller.
    fn authenticate(&self, id: &str, secret: &str) -> Option<&Client> {
        let client = self.clients.get(id)?;
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        bool::from(presented.ct_eq(&client.secret_sha256?)).then_some(client)
    }

    pub(super) fn client(&self, id: &str) -> Option<&Client> {
        self.clients.get(id)
    }

    /// Checks a person's password in constant time; an unknown name and a
    /// wrong password look the same.
    pub(super) fn sign_in(&self, name: &str, password: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let known = self.users.get(name).copied().unwrap_or([0xff; 32]);
        bool::from(presented.ct_eq(&known)) && self.users.contains_key(name)
    }

    /// A signed access token for `subject` (the client itself, or the
    /// person who signed in) and its lifetime.
    pub(super) fn issue(
        &self,
        subject: &str,
        client_id: &str,
        client: &Client,
        resource: &str,
        scopes: &[String],
    ) -> Result<(String, Duration), TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| TokenError::server("no randomness"))?;
        let claims = AccessClaims {
            iss: &self.issuer,
            sub: subject,
            aud: resource,
            iat: now,
            exp: now + client.ttl.as_secs(),
            jti: URL_SAFE_NO_PAD.encode(jti),
            scope: scopes.join(" "),
            client_id,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError::server(&format!("cannot sign: {e}")))?;
        Ok((token, client.ttl))
    }
}

/// RFC 9068 access-token claims.
#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
    scope: String,
    client_id: &'a str,
}

/// An RFC 6749 §5.2 error answer.
pub(super) struct TokenError {
    pub(super) status: StatusCode,
    pub(super) error: &'static str,
    pub(super) description: String,
}

impl TokenError {
    pub(super) fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
        }
    }
    pub(super) fn server(description: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
            description: description.into(),
        }
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(r#"Basic realm="parlor-mcp-auth""#),
            );
        }
        response
    }
}

/// The `/token` form. Not `Debug`: it holds secrets.
#[derive(Deserialize)]
pub(super) struct TokenForm {
    grant_type: Option<String>,
    pub(super) client_id: Option<String>,
    client_secret: Option<String>,
    pub(super) scope: Option<String>,
    resource: Option<String>,
    // authorization_code
    pub(super) code: Option<String>,
    pub(super) redirect_uri: Option<String>,
    pub(super) code_verifier: Option<String>,
    // refresh_token
    pub(super) refresh_token: Option<String>,
}

/// The routes: metadata, JWKS, the consent page and the token endpoint.
pub fn router(server: Arc<AuthServer>) -> axum::Router {
    axum::Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(|State(s): State<Arc<AuthServer>>| async move { Json(s.metadata()) }),
        )
        .route(
            "/jwks",
            get(|State(s): State<Arc<AuthServer>>| async move {
                Json(json!({ "keys": [s.jwk.clone()] }))
            }),
        )
        .route(
            "/authorize",
            get(super::auth_code::consent_page).post(super::auth_code::consent_answer),
        )
        .route("/token", post(token))
        .with_state(server)
}

async fn token(
    State(server): State<Arc<AuthServer>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    match grant(&server, &headers, form) {
        Ok(body) => ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response(),
        Err(e) => {
            tracing::info!(message = "Token request refused.", error = e.error, reason = %e.description);
            e.into_response()
        }
    }
}

fn grant(
    server: &AuthServer,
    headers: &HeaderMap,
    form: TokenForm,
) -> Result<serde_json::Value, TokenError> {
    match form.grant_type.as_deref() {
        Some("client_credentials") => {}
        Some("authorization_code") => {
            let client_id = token_client(server, headers, &form)?;
            return super::auth_code::exchange(server, &client_id, &form);
        }
        Some("refresh_token") => {
            let client_id = token_client(server, headers, &form)?;
            return super::auth_code::refresh(server, &client_id, &form);
        }
        Some(other) => {
            return Err(TokenError::bad(
                "unsupported_grant_type",
                format!(
                    "grant_type {other:?} is not supported; use client_credentials, \
                     authorization_code or refresh_token"
                ),
            ))
        }
        None => return Err(TokenError::bad("invalid_request", "grant_type is missing")),
    }
    let (client_id, secret) = client_credentials(headers, &form)?;
    let client = authenticated(server, &client_id, &secret)?;
    let resource = form.resource.as_deref().ok_or_else(|| {
        TokenError::bad(
            "invalid_target",
            "resource is missing (RFC 8707: name the MCP server the token is for)",
        )
    })?;
    let parsed = url::Url::parse(resource)
        .map_err(|e| TokenError::bad("invalid_target", format!("resource {resource:?}: {e}")))?;
    if parsed.fragment().is_some() || !matches!(parsed.scheme(), "http" | "https") {
        return Err(TokenError::bad(
            "invalid_target",
            format!("resource {resource:?} must be an http(s) URL without a fragment"),
        ));
    }
    let scopes: Vec<String> = match form.scope.as_deref() {
        Some(s) if !s.trim().is_empty() => s.split_whitespace().map(str::to_owned).collect(),
        _ => client.scopes.clone(),
    };
    if let Some(bad) = scopes.iter().find(|s| !client.scopes.contains(s)) {
        return Err(TokenError::bad(
            "invalid_scope",
            format!(
                "client {client_id:?} may not have scope {bad:?} (registered: {})",
                client.scopes.join(" ")
            ),
        ));
    }
    let (token, ttl) = server.issue(&client_id, &client_id, client, resource, &scopes)?;
    tracing::info!(message = "Access token issued.", client_id = %client_id, aud = %resource, scope = %scopes.join(" "), ttl_s = ttl.as_secs());
    Ok(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "scope": scopes.join(" "),
    }))
}

/// The client `id` if `secret` is its secret; unknown ids, public clients
/// and wrong secrets get the same answer.
fn authenticated<'a>(
    server: &'a AuthServer,
    id: &str,
    secret: &str,
) -> Result<&'a Client, TokenError> {
    server.authenticate(id, secret).ok_or_else(|| {
        tracing::info!(message = "Client authentication failed.", client_id = %id);
        TokenError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: format!("client {id:?}: unknown client or wrong secret"),
        }
    })
}

/// Who asks for a token with a person's grant: a public client names
/// itself (PKCE or the refresh token proves the rest), a confidential one
/// must also authenticate.
fn token_client(
    server: &AuthServer,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<String, TokenError> {
    let public = form
        .client_id
        .as_deref()
        .filter(|id| server.client(id).is_some_and(Client::is_public));
    match public {
        Some(id) if form.client_secret.is_none() => Ok(id.to_string()),
        _ => {
            let (id, secret) = client_credentials(headers, form)?;
            authenticated(server, &id, &secret).map(|_| id)
        }
    }
}

/// The client's id and secret from HTTP Basic or the form, not both.
fn client_credentials(
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<(String, String), TokenError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    match (basic, &form.client_secret) {
        (Some(_), Some(_)) => Err(TokenError::bad(
            "invalid_request",
            "the client authenticated twice (HTTP Basic and client_secret); use one",
        )),
        (Some(encoded), None) => {
            let decoded = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| TokenError::bad("invalid_request", "bad HTTP Basic credentials"))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| TokenError::bad("invalid_request", "bad HTTP Basic credentials"))?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded.
            let unescape = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Ok((unescape(id), unescape(secret)))
        }
        (None, Some(secret)) => {
            let id = form
                .client_id
                .clone()
                .ok_or_else(|| TokenError::bad("invalid_request", "client_id is missing"))?;
            Ok((id, secret.clone()))
        }
        (None, None) => Err(TokenError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: "no client authentication (client_secret or HTTP Basic)".into(),
        }),
    }
}
