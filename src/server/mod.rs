//! parlor's HTTP server: OpenAI-compatible routes backed by the local models
//! (DESIGN.md, "OpenAI-shaped on both sides"). The only module that knows
//! axum, apart from the MCP servers in `mcp::servers`.
//!
//! # Layout
//! - [`router`]: the routes; [`serve`]: run them until shutdown.
//! - [`chat_completions`]: `POST /v1/chat/completions`.
//! - [`chat_request`] / [`chat_response`]: the wire format in and out.
//! - [`responses`] / [`responses_request`]: `POST /v1/responses`, with MCP
//!   servers as tools (hosted MCP, parlor the host).
//! - [`served_model`]: the local model and the queue in front of it.
//! - [`turns`]: `POST /v1/turns`, a spoken turn through the voice pipeline.
//! - [`transcriptions`]: `POST /v1/audio/transcriptions` (whisper-1 shape)
//!   through the pipeline's vad and stt.
//! - [`upload`]: audio uploads (form or raw body) and their errors.
//! - [`audio_speech`]: `POST /v1/audio/speech`, spoken by the pipeline's
//!   voice.
//! - [`auth`]: API keys to callers on every `/v1/*` request (401 if bad).
//! - [`openai_error`]: every error in OpenAI's `{"error": …}` shape.
//! - [`metrics`]: `GET /metrics` (Prometheus) and the request counter.
//! - [`calls`]: `GET /v1/calls`, live calls over a WebSocket.
//! - [`realtime`]: `GET /v1/realtime`, the OpenAI Realtime protocol over
//!   the same live calls.
//! - [`page`]: `GET /`, the press-to-talk web page.
//!
//! Routes: `GET /`, `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /v1/models`, `POST /v1/chat/completions`,
//! `POST /v1/responses`, `POST /v1/turns`, `POST /v1/audio/speech`,
//! `POST /v1/audio/transcriptions`, `GET /v1/calls`, `GET /v1/realtime`.
//! Anything else gets a 404 or 405 in OpenAI's error shape.

pub mod audio_speech;
pub mod auth;
pub mod calls;
pub mod chat_completions;
pub mod chat_request;
pub mod chat_response;
pub mod metrics;
pub mod openai_error;
pub mod page;
pub mod realtime;
pub mod responses;
pub mod responses_request;
pub mod served_model;
pub mod transcriptions;
pub mod turns;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Json;
use serde_json::json;

use crate::loaded::LoadedPipeline;
pub use metrics::{CallGuard, ServerMetrics};
pub use openai_error::ApiError;

use crate::stages::tts::Voice;
pub use served_model::ServedModel;

/// Largest request body accepted; larger ones get a 413. A conversation
/// that fits the model's context is far smaller.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// How long shutdown waits for requests in flight (a queued request may wait
/// for others before its own generation starts).
pub const DRAIN: Duration = Duration::from_secs(30);

/// Turns `/v1/turns` runs at once by default; on 2 cores more only queue
/// behind each other for the same Whisper and LLM.
pub const DEFAULT_MAX_TURNS: usize = 2;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub model: Arc<ServedModel>,
    /// URL prefixes of the MCP servers `/v1/responses` may connect to for a
    /// client; none by default (a client-named URL is a way into the
    /// server's network).
    pub mcp_allow: Arc<Vec<String>>,
    /// The voice pipeline behind `/v1/turns`, if the server runs one.
    pub pipeline: Option<Arc<LoadedPipeline>>,
    /// Places for turns running at once; a turn that finds none gets a 429.
    pub turn_slots: Arc<tokio::sync::Semaphore>,
    /// The voice `/v1/audio/speech` speaks with; without one it answers 503.
    pub voice: Option<Arc<dyn Voice>>,
    /// Live calls (`/v1/calls`): who is on, and their limits.
    pub calls: Arc<calls::CallRegistry>,
    /// What `GET /metrics` shows; handlers count into it.
    pub metrics: Arc<ServerMetrics>,
    /// The API keys `/v1/*` requests must present; `None`: open, every
    /// caller anonymous (no `[auth]` in the spec).
    pub keyring: Option<Arc<crate::access::Keyring>>,
    /// Where `/v1/responses` records the MCP calls it makes for clients:
    /// the pipeline's audit log (one hash chain), if its spec has one.
    pub audit: Option<Arc<crate::mcp::AuditLog>>,
    /// The pipeline spec's secrets: a recorded `/v1/responses` MCP call
    /// whose arguments carry one is refused.
    pub secrets: Arc<crate::secrets::Secrets>,
}

/// By hand: a voice is not `Debug`, so it shows as its name.
impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.model)
            .field("mcp_allow", &self.mcp_allow)
            .field("pipeline", &self.pipeline)
            .field("voice", &self.voice.as_ref().map(|v| v.name()))
            .field("calls", &self.calls.active())
            .field("metrics", &self.metrics)
            .field("keyring", &self.keyring)
            .field("audit", &self.audit.is_some())
            .finish()
    }
}

impl AppState {
    pub fn new(model: ServedModel) -> Self {
        Self::shared(Arc::new(model))
    }

    /// State around a model the caller keeps a handle on too.
    pub fn shared(model: Arc<ServedModel>) -> Self {
        Self {
            model,
            mcp_allow: Arc::default(),
            pipeline: None,
            turn_slots: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_TURNS)),
            voice: None,
            calls: Arc::default(),
            metrics: Arc::new(ServerMetrics::new()),
            keyring: None,
            audit: None,
            secrets: Arc::default(),
        }
    }

    /// Require one of these keys on every `/v1/*` request.
    pub fn with_keyring(mut self, keyring: crate::access::Keyring) -> Self {
        self.keyring = Some(Arc::new(keyring));
        self
    }

    /// Limits for live calls (slots, timeouts, message size).
    pub fn with_call_limits(mut self, limits: calls::CallLimits) -> Self {
        self.calls = Arc::new(calls::CallRegistry::new(limits));
        self
    }

    /// Serve `/v1/turns` with this pipeline, at most `max_turns` at once;
    /// its voice speaks `/v1/audio/speech` unless one was given, and its
    /// audit log and secrets guard `/v1/responses`' MCP calls too.
    pub fn with_pipeline(mut self, pipeline: Arc<LoadedPipeline>, max_turns: usize) -> Self {
        if self.voice.is_none() {
            self.voice = pipeline.voice();
        }
        if let Some(log) = pipeline.audit_log() {
            self.audit = Some(log);
        }
        self.secrets = Arc::new(crate::secrets::Secrets::of_spec(pipeline.spec()));
        self.pipeline = Some(pipeline);
        self.turn_slots = Arc::new(tokio::sync::Semaphore::new(max_turns));
        self
    }

    /// Speak `/v1/audio/speech` requests with `voice`.
    pub fn with_voice(mut self, voice: Arc<dyn Voice>) -> Self {
        self.voice = Some(voice);
        self
    }

    /// Refuse `/v1/responses` MCP calls whose arguments carry one of
    /// `secrets` (recorded calls only: the refusal is an audit record).
    pub fn with_secrets(mut self, secrets: Arc<crate::secrets::Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Record `/v1/responses`' MCP calls in `log`.
    pub fn with_audit(mut self, log: Arc<crate::mcp::AuditLog>) -> Self {
        self.audit = Some(log);
        self
    }

    /// Let `/v1/responses` reach MCP servers under these URL prefixes.
    pub fn with_mcp_allow(mut self, prefixes: Vec<String>) -> Self {
        self.mcp_allow = Arc::new(prefixes);
        self
    }
}

/// Which of a loaded pipeline's stages a call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Every stage: a spoken question gets a spoken answer.
    Full,
    /// The vad and stt only, for transcription.
    Listening,
}

/// Fresh stages for one call of `caller`. Building them loads no weights but may
/// allocate model state (a Whisper context), so it runs off the async
/// threads; a failure is logged here and the caller sees a plain 500.
pub(crate) async fn start_call(
    pipeline: &Arc<LoadedPipeline>,
    kind: CallKind,
    caller: crate::access::Caller,
) -> Result<crate::runner::Pipeline, ApiError> {
    built(pipeline, kind, move |p| match kind {
        CallKind::Full => p.call_as(&caller),
        CallKind::Listening => p.listening_call(),
    })
    .await
}

/// [`start_call`] for a live call, whose caller confirms sensitive tool
/// calls through `confirmer`.
pub(crate) async fn start_live_call(
    pipeline: &Arc<LoadedPipeline>,
    caller: crate::access::Caller,
    confirmer: Arc<dyn crate::planner::Confirmer>,
) -> Result<crate::runner::Pipeline, ApiError> {
    built(pipeline, CallKind::Full, move |p| {
        p.call_with(&caller, confirmer)
    })
    .await
}

/// [`start_call`] for a Realtime session, whose client may declare
/// function tools it runs itself (see `realtime::tools`) and confirms
/// sensitive calls of the pipeline's tools through `confirmer`.
pub(crate) async fn start_realtime_call(
    pipeline: &Arc<LoadedPipeline>,
    caller: crate::access::Caller,
    tools: crate::realtime::tools::ClientToolsHandle,
    confirmer: Arc<dyn crate::planner::Confirmer>,
) -> Result<crate::runner::Pipeline, ApiError> {
    built(pipeline, CallKind::Full, move |p| {
        p.call_wrapped(&caller, &tools, confirmer)
    })
    .await
}

async fn built(
    pipeline: &Arc<LoadedPipeline>,
    kind: CallKind,
    build: impl FnOnce(&LoadedPipeline) -> Result<crate::runner::Pipeline, crate::loaded::LoadError>
        + Send
        + 'static,
) -> Result<crate::runner::Pipeline, ApiError> {
    let pipeline = pipeline.clone();
    tokio::task::spawn_blocking(move || build(&pipeline))
        .await
        .map_err(|_| ApiError::server_error())?
        .map_err(|e| {
            tracing::error!(message = "Cannot start a call.", kind = ?kind, error = %e);
            ApiError::server_error()
        })
}

/// The routes.
pub fn router(state: AppState) -> axum::Router {
    let counted = state.metrics.clone();
    let keys = state.clone();
    axum::Router::new()
        .route("/", get(page::page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/models", get(models))
        .route(
            "/v1/chat/completions",
            post(chat_completions::chat_completions),
        )
        .route("/v1/responses", post(responses::responses))
        .route(
            "/v1/turns",
            post(turns::turns).layer(DefaultBodyLimit::max(upload::UPLOAD_BODY_LIMIT)),
        )
        .route("/v1/audio/speech", post(audio_speech::audio_speech))
        .route("/v1/calls", get(calls::calls))
        .route("/v1/realtime", get(realtime::realtime))
        .route(
            "/v1/audio/transcriptions",
            post(transcriptions::transcriptions)
                .layer(DefaultBodyLimit::max(upload::UPLOAD_BODY_LIMIT)),
        )
        .fallback(unknown_url)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Before any handler reads a body or starts a pipeline.
        .layer(axum::middleware::from_fn_with_state(
            keys,
            auth::authenticate,
        ))
        // Outermost, so 413s, 404s and 405s are counted too.
        .layer(axum::middleware::from_fn_with_state(
            counted,
            metrics::count_requests,
        ))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves, then gives
/// requests in flight [`DRAIN`] to finish.
///
/// # Errors
/// When accepting connections fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let calls = state.calls.clone();
    let stop_calls = calls.clone();
    // No Nagle: a call's reply audio is small writes right after an event.
    // With Nagle the audio waits for the caller's ACK, which rides on its
    // next 20 ms frame: ~10 ms more on every turn's first audio (live_calls
    // showed arrivals bunched on the caller's frame clock).
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(message = "Cannot turn off Nagle on a connection.", %error);
        }
    });
    let graceful = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        // Live calls are upgraded connections axum no longer tracks: tell
        // each to end itself cleanly (a `call.ended` event and a close).
        stop_calls.stop_all();
        let _ = stopping_tx.send(true);
    });
    let drained = async {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(DRAIN).await;
    };
    let served = tokio::select! {
        served = graceful => served,
        () = drained => {
            tracing::warn!(drain_secs = DRAIN.as_secs(), message = "Requests still open after the drain; closing them.");
            Ok(())
        }
    };
    // Give the calls a moment to say goodbye before the runtime goes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while calls.active() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served
}

/// A future that resolves on ctrl-c or SIGTERM. The handlers are installed
/// by this call, not when the future is first polled, so a signal that
/// arrives once the caller has announced its address is never missed.
/// Call it inside the tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let (Ok(mut interrupt), Ok(mut terminate)) = (interrupt, terminate) else {
                tracing::warn!(
                    message = "Cannot install signal handlers; stop the server by killing it."
                );
                return std::future::pending().await;
            };
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when every part a request may need is loaded and every MCP
/// server of the pipeline is connected; a 503 names what is not.
async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    let servers = state
        .pipeline
        .as_ref()
        .map(|p| p.mcp_status())
        .unwrap_or_default();
    let down: Vec<&str> = servers
        .iter()
        .filter(|s| !s.connected)
        .map(|s| s.name.as_str())
        .collect();
    let body = json!({
        "status": if down.is_empty() { "ready" } else { "not_ready" },
        "model": state.model.id(),
        "pipeline": state.pipeline.as_ref().map(|p| p.spec().name.clone()),
        "voice": state.voice.as_ref().map(|v| v.name()),
        "mcp": servers.iter().map(|s| json!({"name": s.name, "transport": s.transport, "connected": s.connected})).collect::<Vec<_>>(),
    });
    let status = if down.is_empty() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn models(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model.id(),
            "object": "model",
            "created": 0,
            "owned_by": "parlor",
        }],
    }))
}

async fn unknown_url(method: Method, uri: Uri) -> ApiError {
    ApiError::unknown_url(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
