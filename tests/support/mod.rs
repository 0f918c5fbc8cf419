//! Set-up shared by the integration tests: where the models script put
//! things, and MCP peers to connect to.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parlor::spec::McpServerSpec;

/// The project root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `$PARLOR_CACHE`, or `~/.cache/parlor`: the set-up script's cache.
pub fn cache() -> PathBuf {
    std::env::var_os("PARLOR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/parlor")
        })
}

/// The set-up script's Python (with the `mcp` and `openai` packages).
pub fn python() -> String {
    let p = cache().join("venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run bash models/setup.sh",
        p.display()
    );
    p.display().to_string()
}

/// A fresh directory for the audit and log files a test writes, kept after
/// the run under `<target>/tmp/test-logs/` so tests/run.sh can grep every
/// one of them for the test secrets (a tempdir would be gone by then).
///
/// The first call in a test binary also sends parlor's in-process tracing
/// to a file there ([`trace_to_file`]), so what the tests' own process
/// logged is grepped too.
pub fn log_dir(name: &str) -> PathBuf {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| stem.split('-').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| "tests".into());
    trace_to_file(&binary);
    fresh_dir(name)
}

/// [`log_dir`] without the tracing (for a binary that captures its own).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("test-logs")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test log directory");
    dir
}

/// parlor's in-process tracing output (parlor at debug, the rest at info)
/// for this whole test binary, written to
/// `<target>/tmp/test-logs/tracing-BINARY/tracing.log`: without a
/// subscriber nothing is logged, and the secrets check after the suite
/// would read nothing of what parlor itself would have logged. The first
/// call in a binary wins.
pub fn trace_to_file(binary: &str) {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let path = fresh_dir(&format!("tracing-{binary}")).join("tracing.log");
        let file = std::fs::File::create(&path).expect("create the tracing log");
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,parlor=debug")
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    });
}

/// A model file under `models/`, which must exist.
pub fn model(name: &str) -> PathBuf {
    let path = root().join("models").join(name);
    assert!(
        path.exists(),
        "{} is missing: run bash models/setup.sh",
        path.display()
    );
    path
}

/// The Python `mcp` SDK test server (tests/peers/py_mcp_server.py) over stdio.
pub fn py_stdio_server() -> McpServerSpec {
    McpServerSpec::Stdio {
        command: python(),
        args: vec![root()
            .join("tests/peers/py_mcp_server.py")
            .display()
            .to_string()],
        env: BTreeMap::new(),
    }
}

/// parlor's orders server over stdio, on a fresh copy of the demo data in `dir`.
pub fn orders_server(dir: &Path) -> McpServerSpec {
    McpServerSpec::Stdio {
        command: env!("CARGO_BIN_EXE_parlor-mcp-orders").into(),
        args: vec!["--db".into(), dir.join("orders.db").display().to_string()],
        env: BTreeMap::new(),
    }
}

/// parlor's knowledge server over stdio.
pub fn knowledge_server() -> McpServerSpec {
    McpServerSpec::Stdio {
        command: env!("CARGO_BIN_EXE_parlor-mcp-knowledge").into(),
        args: vec!["--stdio".into()],
        env: BTreeMap::new(),
    }
}

/// parlor's OpenAI-compatible server on the local model `model_file`
/// (under `models/`), in-process on 127.0.0.1:0 on a runtime of its own
/// that lives as long as the test process. Returns its root URL
/// (`http://127.0.0.1:PORT`; the API is under `/v1`) and its state.
pub fn start_chat_server(
    model_file: &str,
    options: parlor::llm::LocalLlmOptions,
) -> (String, parlor::server::AppState) {
    start_server(model_file, options, Vec::new())
}

/// [`start_chat_server`], letting `/v1/responses` reach the MCP servers
/// under `mcp_allow` (URL prefixes).
pub fn start_server(
    model_file: &str,
    options: parlor::llm::LocalLlmOptions,
    mcp_allow: Vec<String>,
) -> (String, parlor::server::AppState) {
    start_server_with(model_file, options, mcp_allow, None)
}

/// [`start_server`], with `voice` speaking `/v1/audio/speech`.
pub fn start_server_with(
    model_file: &str,
    options: parlor::llm::LocalLlmOptions,
    mcp_allow: Vec<String>,
    voice: Option<std::sync::Arc<dyn parlor::stages::tts::Voice>>,
) -> (String, parlor::server::AppState) {
    use parlor::llm::LocalLlm;
    use parlor::server::{AppState, ServedModel};

    let path = model(model_file);
    let llm = LocalLlm::load(&path, options).expect("load the model");
    let mut state = AppState::new(ServedModel::new(llm, &path)).with_mcp_allow(mcp_allow);
    if let Some(voice) = voice {
        state = state.with_voice(voice);
    }
    (serve_state(state.clone()), state)
}

/// Serve `state` on 127.0.0.1:0 from a runtime of its own; the base URL.
pub fn serve_state(state: parlor::server::AppState) -> String {
    use parlor::server::serve;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let served = state;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            serve(listener, served, std::future::pending()).await
        })
    });
    format!("http://{addr}")
}

/// parlor's knowledge server over HTTP (Streamable HTTP at `/mcp`),
/// in-process on 127.0.0.1:0 on a runtime of its own that lives as long as
/// the test process (a child process held in a static would outlive it).
pub struct KnowledgeHttp {
    pub addr: std::net::SocketAddr,
}

impl KnowledgeHttp {
    pub fn start() -> Self {
        use parlor::mcp::servers::knowledge::{self, KnowledgeBase, KnowledgeServer};

        let kb = KnowledgeBase::build(knowledge::bundled_documents()).expect("index the docs");
        let server = KnowledgeServer::new(std::sync::Arc::new(kb));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                knowledge::serve(listener, server, std::future::pending()).await
            })
        });
        Self { addr }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// What the local Whisper (tiny.en) hears in `audio` (any rate): how tests
/// check that spoken output says what it should.
pub fn hear(audio: &parlor::frame::AudioChunk) -> String {
    use parlor::stages::stt::{WhisperEngine, WhisperSettings};

    let samples = parlor::audio::resample(&audio.samples, audio.sample_rate, 16_000)
        .expect("resample to 16 kHz");
    let settings = WhisperSettings {
        threads: 2,
        language: "en".into(),
        audio_ctx: None,
    };
    let mut engine = WhisperEngine::load(&root().join("models/ggml-tiny.en.bin"), settings)
        .expect("load whisper");
    engine.transcribe(&samples, None).expect("transcribe")
}

/// Facts of order 1042 (pipelines/data/orders.sql) a spoken answer may say.
pub const ORDER_1042_FACTS: &[&str] = &[
    "ups",
    "shipped",
    "on its way",
    "28",
    "twenty-eighth",
    "november",
];

/// Whether `text` mentions any of `facts` (case-insensitive).
pub fn mentions_any(text: &str, facts: &[&str]) -> bool {
    let text = text.to_lowercase();
    facts.iter().any(|f| text.contains(f))
}

/// Where the default pipeline keeps the orders database (relative to the
/// root), as pipelines/local.toml names it.
pub const ORDERS_DB: &str = "pipelines/data/orders.db";

/// The default pipeline with `orders__cancel_order` marked sensitive, the
/// shop's settings resource in the prompt (untrusted text from the first
/// turn), an audit log at `dir/audit/tools.jsonl`, and its own orders
/// database at `dir/orders.db` (created from the demo data).
pub fn sensitive_spec(dir: &Path) -> parlor::spec::PipelineSpec {
    let db = dir.join("orders.db");
    let local = std::fs::read_to_string(root().join("pipelines/local.toml")).unwrap();
    let mcp_line = r#"mcp = ["orders", "knowledge"]"#;
    assert!(local.contains(mcp_line) && local.contains(ORDERS_DB));
    let text = format!(
        "{}\n[audit]\npath = {:?}\n\n[[access.tool]]\ntool = \"orders__cancel_order\"\nsensitive = true\n",
        local.replace(ORDERS_DB, &db.display().to_string()).replace(
            mcp_line,
            &format!("{mcp_line}\nresources = [\"knowledge:config://settings\"]")
        ),
        dir.join("audit/tools.jsonl").display().to_string(),
    );
    parlor::spec::PipelineSpec::parse(&text, &root().join("pipelines/local.toml"), root()).unwrap()
}

/// The audit records of `tool` in `dir/audit/tools.jsonl` (see
/// [`sensitive_spec`]).
pub fn audited(dir: &Path, tool: &str) -> Vec<serde_json::Value> {
    let audit = std::fs::read_to_string(dir.join("audit/tools.jsonl")).unwrap_or_default();
    audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["tool"] == tool)
        .collect()
}

/// parlor serving the local default pipeline (and the small chat model) on
/// 127.0.0.1:0, on the caller's runtime so its tasks can be counted.
pub struct VoiceServer {
    pub addr: std::net::SocketAddr,
    pub state: parlor::server::AppState,
    /// Cancel to shut the server down gracefully.
    pub stop: tokio_util::sync::CancellationToken,
    pub pipeline: std::sync::Arc<parlor::loaded::LoadedPipeline>,
}

impl VoiceServer {
    pub async fn start(limits: parlor::server::calls::CallLimits) -> Self {
        let spec = parlor::spec::PipelineSpec::local_default(root()).expect("the default spec");
        Self::start_with(spec, limits).await
    }

    /// [`Self::start`] on another spec (paths resolved from the root).
    pub async fn start_with(
        spec: parlor::spec::PipelineSpec,
        limits: parlor::server::calls::CallLimits,
    ) -> Self {
        Self::start_keyed(spec, limits, None).await
    }

    /// [`Self::start_with`], requiring the keys of `keyring` if given.
    pub async fn start_keyed(
        spec: parlor::spec::PipelineSpec,
        limits: parlor::server::calls::CallLimits,
        keyring: Option<parlor::access::Keyring>,
    ) -> Self {
        use parlor::llm::{LocalLlm, LocalLlmOptions};
        use parlor::server::{serve, AppState, ServedModel};

        let pipeline = std::sync::Arc::new(
            parlor::loaded::LoadedPipeline::load(&spec, root())
                .await
                .expect("load"),
        );
        // As `parlor serve` does before it takes calls: the first turn does
        // not pay for the system prompt (~30 s of the 1.5B model on a slow
        // two-core machine, which a turn's 60 s timeout does not cover).
        pipeline.warm_up().await;
        let path = model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
        let llm = LocalLlm::load(&path, LocalLlmOptions::default()).unwrap();
        let mut state = AppState::new(ServedModel::new(llm, &path))
            .with_pipeline(pipeline.clone(), 2)
            .with_call_limits(limits);
        if let Some(keyring) = keyring {
            state = state.with_keyring(keyring);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(serve(
            listener,
            state.clone(),
            stop.clone().cancelled_owned(),
        ));
        Self {
            addr,
            state,
            stop,
            pipeline,
        }
    }
}
