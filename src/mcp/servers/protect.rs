//! An MCP server as an OAuth 2.1 protected resource (opt-in).
//!
//! [`Protector::layer`] puts every route of an app behind a bearer-token
//! check and adds the RFC 9728 protected-resource metadata at
//! `/.well-known/oauth-protected-resource` (and under it, the resource's
//! path), which tells a client which authorization server issues tokens for
//! this resource and which scopes it knows.
//!
//! A token is a JWT signed with a key from the issuer's JWKS (found through
//! its RFC 8414 metadata, fetched on first use and again when a token names
//! an unknown key), with `iss` = the issuer, `aud` = this resource, `exp` in
//! the future, and the required scope in `scope`. No token or a bad one: 401
//! with `WWW-Authenticate: Bearer resource_metadata="..."`; a good token
//! without the scope: 403 `insufficient_scope`. Tokens are never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

/// The well-known path of RFC 9728 metadata.
pub const RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// The shortest wait between two JWKS fetches caused by unknown key ids, so
/// tokens with made-up `kid`s cannot make the server hammer the issuer.
const REFETCH_COOLDOWN: Duration = Duration::from_secs(5);
/// Deadline of each request to the issuer.
const ISSUER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a protected server checks.
#[derive(Debug, Clone)]
pub struct ProtectConfig {
    /// The authorization server's issuer URL (`iss` of every token).
    pub issuer: String,
    /// This resource's URL, as clients name it in the RFC 8707 `resource`
    /// parameter (`aud` of every token).
    pub audience: String,
    /// The scope every request needs.
    pub scope: String,
}

/// Checks bearer tokens for one resource. Cheap to clone.
#[derive(Clone)]
pub struct Protector {
    inner: Arc<Inner>,
}

struct Inner {
    config: ProtectConfig,
    metadata_url: String,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

/// Why a request was refused.
enum Refusal {
    Missing,
    Invalid(String),
    Scope(String),
    Keys(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    sub: Option<String>,
}

impl Protector {
    /// # Errors
    /// When the audience is not an absolute URL.
    pub fn new(config: ProtectConfig) -> anyhow::Result<Self> {
        let audience = reqwest::Url::parse(&config.audience)
            .map_err(|e| anyhow::anyhow!("--auth-audience {:?}: {e}", config.audience))?;
        let path = audience.path().trim_end_matches('/');
        let metadata_url = format!(
            "{}{RESOURCE_METADATA_PATH}{path}",
            audience.origin().ascii_serialization()
        );
        let http = reqwest::Client::builder()
            .timeout(ISSUER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                metadata_url,
                http,
                keys: tokio::sync::Mutex::new(Keys::default()),
            }),
        })
    }

    /// The URL of this resource's metadata, as 401s name it.
    pub fn metadata_url(&self) -> &str {
        &self.inner.metadata_url
    }

    /// `app` with every route behind the token check, plus the metadata.
    pub fn layer(&self, app: axum::Router) -> axum::Router {
        let metadata = {
            let c = &self.inner.config;
            json!({
                "resource": c.audience,
                "authorization_servers": [c.issuer],
                "scopes_supported": [c.scope],
                "bearer_methods_supported": ["header"],
                "resource_name": "parlor MCP server",
            })
        };
        let serve_metadata = move || {
            let metadata = metadata.clone();
            async move { Json(metadata) }
        };
        app.layer(axum::middleware::from_fn_with_state(self.clone(), check))
            .route(RESOURCE_METADATA_PATH, get(serve_metadata.clone()))
            .route(
                &format!("{RESOURCE_METADATA_PATH}/{{*path}}"),
                get(serve_metadata),
            )
    }

    async fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refusal::Invalid(format!("not a JWT: {e}")))?;
        let kid = header
            .kid
            .clone()
            .ok_or_else(|| Refusal::Invalid("the token names no key (kid)".into()))?;
        let jwk = self.key(&kid).await?;
        if jwk
            .common
            .key_algorithm
            .is_some_and(|a| format!("{a:?}") != format!("{:?}", header.alg))
        {
            return Err(Refusal::Invalid(format!(
                "algorithm {:?} does not match key {kid}",
                header.alg
            )));
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| Refusal::Keys(format!("unusable key {kid}: {e}")))?;
        let c = &self.inner.config;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.set_issuer(&[c.issuer.as_str()]);
        let bare = c.audience.trim_end_matches('/');
        validation.set_audience(&[bare.to_string(), format!("{bare}/")]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Refusal::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".into(),
                ErrorKind::InvalidAudience => {
                    format!(
                        "the token is not for this resource (aud is not {})",
                        c.audience
                    )
                }
                ErrorKind::InvalidIssuer => {
                    format!("the token was not issued by {}", c.issuer)
                }
                ErrorKind::InvalidSignature => "bad signature".into(),
                _ => format!("invalid token: {e}"),
            })
        })?;
        let granted = data.claims.scope.as_deref().unwrap_or("");
        if !granted.split_whitespace().any(|s| s == c.scope) {
            return Err(Refusal::Scope(format!(
                "the token's scope \"{granted}\" lacks \"{}\"",
                c.scope
            )));
        }
        Ok(data.claims)
    }

    /// The issuer's key `kid`, fetching the JWKS when it is not known yet.
    async fn key(&self, kid: &str) -> Result<jsonwebtoken::jwk::Jwk, Refusal> {
        let mut keys = self.inner.keys.lock().await;
        if let Some(jwk) = keys.set.as_ref().and_then(|s| s.find(kid)) {
            return Ok(jwk.clone());
        }
        if keys
            .fetched
            .is_some_and(|at| at.elapsed() < REFETCH_COOLDOWN)
        {
            return Err(Refusal::Invalid(format!("unknown signing key {kid}")));
        }
        keys.fetched = Some(Instant::now());
        let set = self.fetch_jwks().await.map_err(Refusal::Keys)?;
        tracing::info!(
            message = "Issuer signing keys fetched.",
            issuer = %self.inner.config.issuer,
            keys = set.keys.len()
        );
        let found = set.find(kid).cloned();
        keys.set = Some(set);
        found.ok_or_else(|| Refusal::Invalid(format!("unknown signing key {kid}")))
    }

    async fn fetch_jwks(&self) -> Result<JwkSet, String> {
        #[derive(Deserialize)]
        struct Meta {
            issuer: String,
            jwks_uri: String,
        }
        let issuer = self.inner.config.issuer.trim_end_matches('/');
        let meta_url = format!("{issuer}/.well-known/oauth-authorization-server");
        let meta: Meta = self.get_json(&meta_url).await?;
        if meta.issuer.trim_end_matches('/') != issuer {
            return Err(format!(
                "{meta_url} describes issuer {:?}, not {issuer:?}",
                meta.issuer
            ));
        }
        self.get_json(&meta.jwks_uri).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| format!("GET {url}: {e}"))
    }

    fn refuse(&self, refusal: Refusal) -> Response {
        let meta = &self.inner.metadata_url;
        let scope = &self.inner.config.scope;
        let (status, challenge, text) = match refusal {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                format!(r#"Bearer resource_metadata="{meta}", scope="{scope}""#),
                "a bearer token is required".to_string(),
            ),
            Refusal::Invalid(why) => (
                StatusCode::UNAUTHORIZED,
                format!(
                    r#"Bearer error="invalid_token", error_description="{}", resource_metadata="{meta}""#,
                    quoted(&why)
                ),
                why,
            ),
            Refusal::Scope(why) => (
                StatusCode::FORBIDDEN,
                format!(
                    r#"Bearer error="insufficient_scope", scope="{scope}", error_description="{}", resource_metadata="{meta}""#,
                    quoted(&why)
                ),
                why,
            ),
            Refusal::Keys(why) => {
                tracing::warn!(message = "Cannot get the issuer's signing keys.", reason = %why);
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot check tokens now (the issuer's keys are unavailable)",
                )
                    .into_response();
            }
        };
        tracing::info!(message = "Request refused.", status = status.as_u16(), reason = %text);
        let mut response = (status, Json(json!({ "error": text }))).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// `s` safe inside a quoted header parameter.
fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
        .collect()
}

async fn check(State(protector): State<Protector>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let Some(token) = token else {
        return protector.refuse(Refusal::Missing);
    };
    match protector.verify(&token).await {
        Ok(claims) => {
            tracing::debug!(
                message = "Token accepted.",
                sub = claims.sub.as_deref().unwrap_or("")
            );
            next.run(request).await
        }
        Err(refusal) => protector.refuse(refusal),
    }
}
