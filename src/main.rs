//! The `parlor` command line.
//!
//! Exit codes: 0 success (silence is a success with no turns), 1 bad input
//! or a failed run, 2 a bad pipeline spec or command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use parlor::audio::{decode_file, DecodeLimits};
use parlor::mcp::McpPool;
use parlor::spec::PipelineSpec;
use parlor::transcribe::{listening_pipeline, transcribe, TurnTranscript};
use serde_json::json;

#[derive(Parser)]
#[command(name = "parlor", version, about = "A voice-agent pipeline service")]
struct Cli {
    /// Log format on stderr. Level from PARLOR_LOG (e.g. `info`,
    /// `parlor=debug`); default `warn`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Transcribe each turn spoken in an audio file (WAV, FLAC, MP3, Ogg).
    Transcribe {
        /// The audio file.
        file: PathBuf,
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// One JSON object per turn on stdout, nothing else.
        #[arg(long)]
        json: bool,
    },
    /// Validate a pipeline spec and list its stages.
    Check {
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
    },
    /// Ask the pipeline's planner one question; prints each tool call
    /// (server, tool, arguments, latency) and the answer.
    Ask {
        /// The question, as a caller would say it.
        question: String,
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// One JSON object on stdout (answer, tool calls, timings), nothing else.
        #[arg(long)]
        json: bool,
    },
    /// Play an audio file into the whole pipeline as a caller: prints what
    /// was heard, each tool call, the answer and the latencies, and saves
    /// the spoken answer.
    Turn {
        /// The caller's audio (WAV, FLAC, MP3, Ogg).
        file: PathBuf,
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Where to write the spoken answer (WAV); every turn's reply in order.
        #[arg(long, default_value = "answer.wav")]
        out: PathBuf,
        /// One JSON object per turn on stdout, nothing else.
        #[arg(long)]
        json: bool,
    },
    /// Play an audio file into a live call on a running `parlor serve`
    /// over its WebSocket, in real time as a caller would: prints what
    /// happens as it happens and saves the reply audio.
    Call {
        /// The caller's audio (WAV, FLAC, MP3, Ogg).
        file: PathBuf,
        /// The server's call route.
        #[arg(long, default_value = "ws://127.0.0.1:8080/v1/calls")]
        url: String,
        /// Where to write what parlor said (WAV).
        #[arg(long, default_value = "answer.wav")]
        out: PathBuf,
        /// Every event as one JSON line on stdout, nothing else.
        #[arg(long)]
        json: bool,
        /// Send the file as fast as the socket takes it, not in real time.
        #[arg(long)]
        fast: bool,
        /// Start a server for this call first (on a free local port, with
        /// `--pipeline`), instead of calling one already running at `--url`.
        #[arg(long)]
        serve: bool,
        /// With `--serve`: the pipeline spec (default: the embedded
        /// pipelines/local.toml).
        #[arg(long, requires = "serve")]
        pipeline: Option<PathBuf>,
        /// Approve every sensitive tool call parlor asks about
        /// (`tool.confirm`); without it each is declined at once.
        #[arg(long)]
        approve_tools: bool,
    },
    /// Serve OpenAI-compatible routes (`/v1/chat/completions`,
    /// `/v1/responses`, `/v1/models`) backed by the local planner model,
    /// and `/v1/audio/speech` spoken by the pipeline's tts voice, until
    /// ctrl-c or SIGTERM.
    Serve {
        /// Take the model from this pipeline's local planner stage.
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// GGUF model file (overrides the pipeline's planner model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Another name the served model answers to, e.g. gpt-4.1-mini, so
        /// a client or spec written for OpenAI works unchanged (with
        /// OPENAI_BASE_URL pointing here). Repeat for more.
        #[arg(long = "model-alias", value_name = "NAME")]
        model_alias: Vec<String>,
        /// MCP servers `/v1/responses` may connect to when a request names
        /// them (`mcp` tools): URL prefixes, e.g. http://127.0.0.1:8090/.
        /// Repeat for more. None by default.
        #[arg(long = "allow-mcp", value_name = "URL_PREFIX")]
        allow_mcp: Vec<String>,
        /// Serve only the text routes: do not load the pipeline's voice
        /// stages for `/v1/turns`.
        #[arg(long)]
        chat_only: bool,
        /// Turns `/v1/turns` runs at once; more get a 429.
        #[arg(long, default_value_t = parlor::server::DEFAULT_MAX_TURNS)]
        max_turns: usize,
        /// Live calls (`/v1/calls`) at once; more get a 429.
        #[arg(long, default_value_t = parlor::server::calls::CallLimits::default().max_calls)]
        max_calls: usize,
    },
    /// Compare pipelines on the spoken task dataset: each task is played
    /// as a live call at real-time pace into each pipeline, served
    /// in-process; writes report.md (also printed), report.json and SVG
    /// plots into `--out`.
    Bench {
        /// Pipeline specs to compare.
        #[arg(long, required = true, num_args = 1..)]
        pipelines: Vec<PathBuf>,
        /// The dataset directory (with tasks.json).
        #[arg(long, default_value = "benches/tasks")]
        tasks: PathBuf,
        /// Run only the first N tasks.
        #[arg(long)]
        limit: Option<usize>,
        /// Rounds over the tasks.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        repeat: u16,
        /// Calls at once against the same served pipeline (the tasks are
        /// dealt out to this many callers).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Also call each task a second time and talk over the reply (500 ms
        /// into it), for the barge-in reaction time.
        #[arg(long)]
        barge_in: bool,
        /// Load mode: ramp calls at once on one pipeline (1, 2, 4, ... up to
        /// --max-calls; --repeat waves a step) and report latency and memory
        /// per step (load.md, load.json, load.svg).
        #[arg(long)]
        load: bool,
        /// The most calls at once --load ramps to.
        #[arg(long, default_value_t = 16, requires = "load", value_parser = clap::value_parser!(u16).range(1..=256))]
        max_calls: u16,
        /// Where the report goes.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Peer frameworks to run the same tasks through, each a row of the
        /// report: `pipecat` (Pipecat 1.14 on the first pipeline's models
        /// and MCP servers; needs `bash benches/peers/setup.sh`).
        #[arg(long, num_args = 1.., conflicts_with = "load")]
        peers: Vec<Peer>,
        /// Also price every pipeline's mean turn at this spec's `[prices]`
        /// (e.g. pipelines/openai-chained.toml): what the same turn would
        /// cost on those APIs. A column of the table and cost.svg.
        #[arg(long, conflicts_with = "load")]
        price_as: Option<PathBuf>,
    },
    /// Rewrite a GGUF planner model in another quantization (once, at
    /// set-up: `bash models/setup.sh` makes the 0.5B's IQ4_NL copy this
    /// way). llama.cpp has fast repacked CPU kernels for IQ4_NL and q4_0
    /// but not for the q5_0 most of the 0.5B's "Q4_K_M" file is in.
    Requantize {
        /// The GGUF model to read.
        source: PathBuf,
        /// Where to write the new file (replaced when it exists).
        target: PathBuf,
        /// The quantization to write.
        #[arg(long = "type", value_enum, default_value_t = QuantizationArg::Iq4Nl)]
        quantization: QuantizationArg,
    },
    /// The MCP servers of a pipeline.
    Mcp {
        #[command(subcommand)]
        command: McpCommand,
    },
    /// The tool-call audit log (a spec's `[audit]` table).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// The quantizations `parlor requantize` writes.
#[derive(Clone, Copy, ValueEnum)]
enum QuantizationArg {
    #[value(name = "iq4_nl")]
    Iq4Nl,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q8_0")]
    Q8_0,
}

/// A framework `parlor bench --peers` compares with.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    Pipecat,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit log's hash chain and head: prints the record count,
    /// the last seq and hash, and OK or the first problem (exit code 1).
    Verify {
        /// The log file (its head is FILE.head).
        file: PathBuf,
        /// One JSON object on stdout, nothing else.
        #[arg(long)]
        json: bool,
    },
    /// For tests only: append records from 8 tasks as fast as the disk
    /// allows until killed (or `--count` records), so a test can SIGKILL a
    /// writer mid-write and verify the log.
    #[command(hide = true)]
    Stress {
        file: PathBuf,
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum McpCommand {
    /// Connect to every [mcp.*] server and list its tools, resources and
    /// prompts (tools under the `server__tool` names the planner sees).
    List {
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
    },
    /// Pin every server's tool definitions (description and input-schema
    /// hashes) in the spec's tool lock (`[trust] lock`, default the spec's
    /// path with `.mcp.lock`). A pinned tool that later changes is
    /// quarantined (not offered, calls refused) until trusted again. Tools
    /// with scan findings are refused unless `--accept-findings`; tools
    /// that shadow another server's tool are always refused. Exit code 1
    /// when any tool was refused (the others are still pinned).
    Trust {
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Trust tools with findings (hidden text, instructions to the
        /// model, secrets, references to other tools) after reviewing them.
        #[arg(long)]
        accept_findings: bool,
    },
    /// Sign in to a remote server whose `[mcp.NAME.oauth]` has
    /// `grant = "authorization_code"`: prints the address to open in a
    /// browser, waits for the sign-in to come back to a loopback port, and
    /// keeps the refresh token in the server's own credential file
    /// (`$PARLOR_CREDENTIALS/NAME.json`, default
    /// `~/.config/parlor/credentials`, owner-only). Later runs renew their
    /// tokens from it without a person.
    Login {
        /// The server's name in the spec (`[mcp.NAME]`).
        server: String,
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Seconds to wait for the browser.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// Call one tool by hand, as the planner would: through the gate (pins
    /// and scan), the access rules, the secret guard and the audit log
    /// (principal `cli`). Prints the tool's answer; exit code 1 when it is
    /// an error.
    Call {
        /// The tool as the planner sees it: `server__tool`.
        tool: String,
        /// Its arguments, a JSON object.
        #[arg(default_value = "{}")]
        arguments: String,
        /// The role the access rules see (whoever can run this can read
        /// the spec and its credentials, hence `admin` by default).
        #[arg(long, default_value = "admin")]
        role: String,
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
    },
    /// Report each server's tools: pin status (pinned, new, changed,
    /// quarantined), whether the planner would be offered the tool, and
    /// the poisoning scan's findings. Changes nothing.
    Scan {
        /// Pipeline spec (default: the embedded pipelines/local.toml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// One JSON object on stdout, nothing else.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Transcribe {
                file,
                pipeline,
                json,
            } => run_transcribe(&file, pipeline.as_deref(), json).await,
            Command::Check { pipeline } => run_check(pipeline.as_deref()),
            Command::Ask {
                question,
                pipeline,
                json,
            } => run_ask(&question, pipeline.as_deref(), json).await,
            Command::Turn {
                file,
                pipeline,
                out,
                json,
            } => run_turn(&file, pipeline.as_deref(), &out, json).await,
            Command::Serve {
                pipeline,
                addr,
                model,
                model_alias,
                allow_mcp,
                chat_only,
                max_turns,
                max_calls,
            } => {
                let options = ServerOptions {
                    model,
                    allow_mcp,
                    model_aliases: model_alias,
                    voice_turns: (!chat_only).then_some(max_turns),
                    max_calls,
                };
                run_serve(pipeline.as_deref(), addr, options).await
            }
            Command::Call {
                file,
                url,
                out,
                json,
                fast,
                serve,
                pipeline,
                approve_tools,
            } => {
                let call = CallArgs {
                    file: &file,
                    out: &out,
                    json,
                    fast,
                    approve_tools,
                };
                if serve {
                    run_call_served(call, pipeline.as_deref()).await
                } else {
                    run_call(call, &url).await
                }
            }
            Command::Bench {
                pipelines,
                tasks,
                limit,
                repeat,
                concurrency,
                barge_in,
                load,
                max_calls,
                out,
                peers,
                price_as,
            } => {
                let options = parlor::bench::RunOptions {
                    limit: limit.unwrap_or(usize::MAX),
                    repeat: usize::from(repeat),
                    concurrency: usize::from(concurrency),
                    barge_in,
                };
                if load {
                    run_bench_load(&pipelines, &tasks, options, usize::from(max_calls), &out).await
                } else {
                    run_bench(
                        &pipelines,
                        &tasks,
                        options,
                        &peers,
                        price_as.as_deref(),
                        &out,
                    )
                    .await
                }
            }
            Command::Mcp {
                command: McpCommand::List { pipeline },
            } => run_mcp_list(pipeline.as_deref()).await,
            Command::Mcp {
                command:
                    McpCommand::Trust {
                        pipeline,
                        accept_findings,
                    },
            } => run_mcp_trust(pipeline.as_deref(), accept_findings).await,
            Command::Mcp {
                command: McpCommand::Scan { pipeline, json },
            } => run_mcp_scan(pipeline.as_deref(), json).await,
            Command::Mcp {
                command:
                    McpCommand::Call {
                        tool,
                        arguments,
                        role,
                        pipeline,
                    },
            } => run_mcp_call(&tool, &arguments, &role, pipeline.as_deref()).await,
            Command::Mcp {
                command:
                    McpCommand::Login {
                        server,
                        pipeline,
                        wait,
                    },
            } => run_mcp_login(&server, pipeline.as_deref(), wait).await,
            Command::Audit {
                command: AuditCommand::Verify { file, json },
            } => run_audit_verify(&file, json),
            Command::Audit {
                command: AuditCommand::Stress { file, count },
            } => run_audit_stress(&file, count).await,
            Command::Requantize {
                source,
                target,
                quantization,
            } => run_requantize(&source, &target, quantization),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// A message for stderr and the exit code that goes with it.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn input(e: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: e.to_string(),
        }
    }
    fn usage(e: impl std::fmt::Display) -> Self {
        Self {
            code: 2,
            message: e.to_string(),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARLOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_spec(path: Option<&Path>) -> Result<PipelineSpec, Failure> {
    let cwd = std::env::current_dir().map_err(Failure::usage)?;
    match path {
        Some(p) => PipelineSpec::load(p, &cwd),
        None => PipelineSpec::local_default(&cwd),
    }
    .map_err(Failure::usage)
}

async fn run_ask(question: &str, path: Option<&Path>, json: bool) -> Result<(), Failure> {
    use parlor::planner::{History, PlannerEvent};
    use std::io::Write as _;

    let spec = load_spec(path)?;
    let cwd = std::env::current_dir().map_err(Failure::usage)?;
    let connected = parlor::planner::setup::connect(&spec, &cwd)
        .await
        .map_err(Failure::input)?;
    let started = std::time::Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        let mut stdout = std::io::stdout();
        let mut mid_line = false;
        while let Some(event) = rx.recv().await {
            if json {
                continue;
            }
            match event {
                PlannerEvent::Text(piece) => {
                    print!("{piece}");
                    mid_line = true;
                }
                PlannerEvent::ToolStarted(_) | PlannerEvent::Usage(_) => {}
                PlannerEvent::ToolFinished(r) => {
                    if mid_line {
                        println!();
                        mid_line = false;
                    }
                    println!("{}", tool_line(&r));
                }
            }
            let _ = stdout.flush();
        }
        if mid_line {
            println!();
        }
    });
    let mut history = History::default();
    let cancel = tokio_util::sync::CancellationToken::new();
    let result = connected
        .planner
        .run_turn(&mut history, question, &tx, &cancel)
        .await;
    drop(tx);
    let _ = printer.await;
    let model = connected.planner.model().describe();
    connected.shutdown().await;
    let outcome = result.map_err(Failure::input)?;
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    if json {
        println!(
            "{}",
            json!({
                "question": question,
                "answer": outcome.reply,
                "tools": outcome.tools,
                "steps": outcome.steps,
                "hit_step_limit": outcome.hit_step_limit,
                "model": model,
                "total_ms": (total_ms * 10.0).round() / 10.0,
            })
        );
    } else {
        eprintln!(
            "({model}: {} model request(s), {} tool call(s), {total_ms:.0} ms)",
            outcome.steps,
            outcome.tools.len()
        );
    }
    Ok(())
}

fn run_requantize(
    source: &Path,
    target: &Path,
    quantization: QuantizationArg,
) -> Result<(), Failure> {
    use parlor::llm::requantize::{requantize, Quantization};
    let quantization = match quantization {
        QuantizationArg::Iq4Nl => Quantization::Iq4Nl,
        QuantizationArg::Q4_0 => Quantization::Q4_0,
        QuantizationArg::Q8_0 => Quantization::Q8_0,
    };
    // IQ4_NL searches for its levels per block: about a minute for the
    // 0.5B on 2 cores, where q4_0 and q8_0 take seconds.
    let wait = if quantization == Quantization::Iq4Nl {
        ", about a minute"
    } else {
        ""
    };
    eprintln!(
        "re-quantizing {} as {}{wait}",
        source.display(),
        quantization.name()
    );
    let started = std::time::Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    requantize(source, target, quantization, threads).map_err(Failure::input)?;
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64;
    println!(
        "{}: {:.0} MiB -> {:.0} MiB in {:.1} s",
        target.display(),
        size(source),
        size(target),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_check(path: Option<&Path>) -> Result<(), Failure> {
    let spec = load_spec(path)?;
    println!(
        "{} ({}): valid, channel capacity {}",
        spec.name,
        spec.source.display(),
        spec.channel_capacity
    );
    for (i, stage) in spec.stages.iter().enumerate() {
        println!("  stage {}: {}", i + 1, stage.kind());
    }
    for name in spec.mcp.keys() {
        println!("  mcp server: {name}");
    }
    Ok(())
}

/// How `parlor serve` (and the servers `call --serve` and `bench` start
/// for themselves) serve a pipeline.
struct ServerOptions {
    /// GGUF file to serve instead of the pipeline's planner model.
    model: Option<PathBuf>,
    /// MCP URL prefixes `/v1/responses` may reach.
    allow_mcp: Vec<String>,
    /// Other model names the served model answers to.
    model_aliases: Vec<String>,
    /// `/v1/turns` at once; `None`: text routes only.
    voice_turns: Option<usize>,
    max_calls: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            model: None,
            allow_mcp: Vec::new(),
            model_aliases: Vec::new(),
            voice_turns: Some(parlor::server::DEFAULT_MAX_TURNS),
            max_calls: parlor::server::calls::CallLimits::default().max_calls,
        }
    }
}

/// A server's state as `parlor serve` builds it: the chat model, and the
/// pipeline (loaded and warmed) unless `options.voice_turns` is `None`.
async fn build_server(
    pipeline: Option<&Path>,
    options: ServerOptions,
) -> Result<
    (
        parlor::server::AppState,
        Option<Arc<parlor::loaded::LoadedPipeline>>,
    ),
    Failure,
> {
    use parlor::llm::{LocalLlm, LocalLlmOptions};
    use parlor::loaded::LoadedPipeline;
    use parlor::server::{AppState, ServedModel};
    use parlor::spec::{ModelBackend, StageSpec};

    let spec = load_spec(pipeline)?;
    // The pipeline's local planner model (the default pipeline's unless
    // --pipeline names another), or the bundled 0.5B.
    let from_spec = spec.stages.iter().find_map(|s| match s {
        StageSpec::Planner(p) if p.backend == ModelBackend::Local => Some(p.local_model()),
        _ => None,
    });
    let ServerOptions {
        model,
        allow_mcp,
        model_aliases,
        voice_turns,
        max_calls,
    } = options;
    let path = model
        .or(from_spec)
        .unwrap_or_else(|| parlor::spec::DEFAULT_LOCAL_PLANNER_MODEL.into());
    let llm_options = LocalLlmOptions {
        max_tokens: 512,
        prefix_store: parlor::llm::prefix_store::default_dir(),
        ..LocalLlmOptions::default()
    };
    let llm = LocalLlm::load(&path, llm_options).map_err(Failure::input)?;
    let served = ServedModel::new(llm, &path).with_aliases(model_aliases);
    let mut state = AppState::new(served)
        .with_mcp_allow(allow_mcp)
        .with_call_limits(parlor::server::calls::CallLimits {
            max_calls,
            ..Default::default()
        });
    // `[auth]`: keys from the environment; a server told to require keys
    // never starts open because they are missing.
    if let Some(auth) = &spec.auth {
        let keyring = parlor::access::Keyring::from_env(auth).map_err(Failure::input)?;
        state = state.with_keyring(keyring);
    }
    // The voice pipeline behind /v1/turns and the calls: a spec that
    // listens (a VAD, or a realtime model that finds turns itself).
    let listens = spec
        .stages
        .iter()
        .any(|s| matches!(s.kind(), "vad" | "realtime"));
    let mut loaded = None;
    if let Some(max_turns) = voice_turns.filter(|_| listens) {
        let cwd = std::env::current_dir().map_err(Failure::usage)?;
        let pipeline = std::sync::Arc::new(
            LoadedPipeline::load(&spec, &cwd)
                .await
                .map_err(Failure::input)?,
        );
        pipeline.warm_up().await;
        state = state.with_pipeline(pipeline.clone(), max_turns);
        loaded = Some(pipeline);
    }
    // /v1/responses records a client's MCP calls in the spec's audit log:
    // the pipeline's own (one chain) when it opened it, else opened here
    // (text routes only, or a pipeline without tools).
    if state.audit.is_none() {
        if let Some(audit) = &spec.audit {
            let cwd = std::env::current_dir().map_err(Failure::usage)?;
            let log = parlor::mcp::AuditLog::open(cwd.join(&audit.path)).map_err(Failure::input)?;
            state = state.with_audit(std::sync::Arc::new(log));
        }
    }
    state = state.with_secrets(std::sync::Arc::new(parlor::secrets::Secrets::of_spec(
        &spec,
    )));
    // The pipeline's voice speaks /v1/audio/speech: the loaded one, or
    // (chat only) the tts stage's, loaded alone. A voice that cannot load alone
    // (espeak-ng missing) costs only that route, not the server.
    let voice = match (&loaded, tts_stage(&spec)) {
        (Some(_), _) => None, // with_pipeline took the pipeline's voice
        (None, Some(t)) => {
            match tokio::task::spawn_blocking(move || parlor::stages::tts::load_voice(&t)).await {
                Ok(Ok(voice)) => Some(voice),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, message = "No voice: /v1/audio/speech will answer 503.");
                    None
                }
                Err(e) => return Err(Failure::input(format!("loading the voice panicked: {e}"))),
            }
        }
        (None, None) => None,
    };
    if let Some(voice) = voice {
        state = state.with_voice(voice);
    }
    Ok((state, loaded))
}

async fn run_serve(
    pipeline: Option<&Path>,
    addr: std::net::SocketAddr,
    options: ServerOptions,
) -> Result<(), Failure> {
    use parlor::server::{serve, shutdown_signal};

    let (state, loaded) = build_server(pipeline, options).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::input(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(Failure::input)?;
    let shutdown = shutdown_signal();
    let voice = match &loaded {
        Some(p) => format!(
            ", pipeline {} (live calls at ws://{local}/v1/calls)",
            p.spec().name
        ),
        None => String::new(),
    };
    println!(
        "parlor serve: model {}{voice} at http://{local}/v1 (ctrl-c to stop)",
        state.model.id()
    );
    let served = serve(listener, state, shutdown).await;
    // Close MCP sessions so stdio servers exit with us.
    if let Some(pipeline) = loaded.and_then(|p| std::sync::Arc::try_unwrap(p).ok()) {
        pipeline.shutdown().await;
    }
    served.map_err(Failure::input)
}

async fn run_mcp_call(
    tool: &str,
    arguments: &str,
    role: &str,
    path: Option<&Path>,
) -> Result<(), Failure> {
    let arguments: serde_json::Value = serde_json::from_str(arguments)
        .map_err(|e| Failure::input(format!("the arguments are not JSON: {e}")))?;
    if !arguments.is_object() {
        return Err(Failure::input("the arguments must be a JSON object"));
    }
    let spec = load_spec(path)?;
    let Some((server, _)) = tool.split_once("__") else {
        return Err(Failure::input(format!(
            "{tool}: name a tool as server__tool (see `parlor mcp list`)"
        )));
    };
    if !spec.mcp.contains_key(server) {
        return Err(Failure::input(format!(
            "no [mcp.{server}] in {}",
            spec.source.display()
        )));
    }
    let connected =
        parlor::planner::setup::connect_tools(&spec, &[server.to_string()], false, Path::new("."))
            .await
            .map_err(Failure::input)?;
    if connected.audit.is_none() {
        eprintln!(
            "warning: {} has no [audit] table: the call goes straight to the server, with no access rules, secret guard or audit record",
            spec.source.display()
        );
    }
    let operator = parlor::mcp::AuditContext {
        principal: "cli".into(),
        role: role.into(),
        session: None,
    };
    let tools = connected
        .tools
        .for_caller(&operator)
        .unwrap_or_else(|| connected.tools.clone());
    // Listing first, as the planner does each turn: the pool learns each
    // tool's route, and the gate checks the pins.
    let offered = tools.specs().await;
    if !offered.iter().any(|t| t.name == tool) {
        eprintln!("warning: {tool} is not offered (unknown, quarantined, or not for role {role}); calling it anyway to show why");
    }
    let answer = tools.call(tool, arguments).await;
    drop(tools);
    let connected_pool = connected.pool.clone();
    drop(connected);
    if let Ok(pool) = Arc::try_unwrap(connected_pool) {
        pool.shutdown().await;
    }
    println!("{}", answer.text);
    if answer.is_error {
        return Err(Failure::input(format!("{tool} answered with an error")));
    }
    Ok(())
}

async fn run_mcp_list(path: Option<&Path>) -> Result<(), Failure> {
    let spec = load_spec(path)?;
    if spec.mcp.is_empty() {
        println!("(no MCP servers in {})", spec.source.display());
        return Ok(());
    }
    let names: Vec<String> = spec.mcp.keys().cloned().collect();
    let pool = McpPool::connect(&spec.mcp, &names)
        .await
        .map_err(Failure::input)?;
    let mut rows = vec![[
        "SERVER".to_string(),
        "TRANSPORT".into(),
        "PROTOCOL".into(),
        "IMPLEMENTATION".into(),
        "TARGET".into(),
    ]];
    for s in pool.servers() {
        rows.push([
            s.name,
            s.transport.into(),
            s.protocol_version.unwrap_or_default(),
            s.server_info.unwrap_or_default(),
            s.target,
        ]);
    }
    for (name, server) in &spec.mcp {
        if let parlor::spec::McpServerSpec::Hosted(hosted) = server {
            rows.push([
                name.clone(),
                "hosted".into(),
                "-".into(),
                "(called by the model provider)".into(),
                hosted.url.clone(),
            ]);
        }
    }
    print_table(&rows);
    let tools = pool.tools().await;
    println!("\ntools ({}):", tools.len());
    let mut rows = vec![["NAME".to_string(), "DESCRIPTION".into()]];
    rows.extend(
        tools
            .into_iter()
            .map(|t| [t.name, one_line(t.description.as_deref())]),
    );
    print_table(&rows);
    let resources = pool.resources().await;
    println!("\nresources ({}):", resources.len());
    let mut rows = vec![[
        "SERVER".to_string(),
        "URI".into(),
        "MIME".into(),
        "DESCRIPTION".into(),
    ]];
    rows.extend(resources.into_iter().map(|r| {
        [
            r.server,
            r.uri,
            r.mime_type.unwrap_or_default(),
            one_line(r.description.as_deref().or(Some(&r.name))),
        ]
    }));
    print_table(&rows);
    let prompts = pool.prompts().await;
    println!("\nprompts ({}):", prompts.len());
    let mut rows = vec![[
        "SERVER".to_string(),
        "PROMPT(ARGS, *=required)".into(),
        "DESCRIPTION".into(),
    ]];
    rows.extend(prompts.into_iter().map(|p| {
        let args: Vec<String> = p
            .arguments
            .iter()
            .map(|a| format!("{}{}", a.name, if a.required { "*" } else { "" }))
            .collect();
        [
            p.server,
            format!("{}({})", p.name, args.join(", ")),
            one_line(p.description.as_deref()),
        ]
    }));
    print_table(&rows);
    pool.shutdown().await;
    Ok(())
}

/// The spec's connectable servers, connected without a gate (trust and
/// scan judge the raw definitions), and their tools.
async fn raw_tools(
    spec: &PipelineSpec,
) -> Result<(Option<McpPool>, Vec<parlor::mcp::ToolDef>), Failure> {
    let names: Vec<String> = spec
        .mcp
        .iter()
        .filter(|(_, s)| !matches!(s, parlor::spec::McpServerSpec::Hosted(_)))
        .map(|(n, _)| n.clone())
        .collect();
    if names.is_empty() {
        return Ok((None, Vec::new()));
    }
    let pool = McpPool::connect(&spec.mcp, &names)
        .await
        .map_err(Failure::input)?;
    let defs = pool.tool_defs().await;
    Ok((Some(pool), defs))
}

async fn run_mcp_trust(path: Option<&Path>, accept_findings: bool) -> Result<(), Failure> {
    use parlor::mcp::gate::approve;
    use parlor::mcp::pins::ToolLock;

    let spec = load_spec(path)?;
    let cwd = std::env::current_dir().map_err(Failure::usage)?;
    let lock_path = spec.lock_path(&cwd);
    let old = ToolLock::load(&lock_path).map_err(Failure::input)?;
    let (pool, defs) = raw_tools(&spec).await?;
    let targets = pool
        .as_ref()
        .map(|p| {
            p.servers()
                .into_iter()
                .map(|s| (s.name, s.target))
                .collect()
        })
        .unwrap_or_default();
    if let Some(pool) = pool {
        pool.shutdown().await;
    }
    let (lock, approvals) = approve(old.as_ref(), &defs, &targets, accept_findings);
    lock.save(&lock_path).map_err(Failure::input)?;
    let mut rows = vec![["SERVER".to_string(), "TOOL".into(), "RESULT".into()]];
    for a in &approvals {
        rows.push([
            a.server.clone(),
            a.tool.clone(),
            a.reason.clone().unwrap_or_else(|| "trusted".into()),
        ]);
    }
    print_table(&rows);
    let refused = approvals.iter().filter(|a| !a.trusted).count();
    println!(
        "\n{} tool(s) pinned in {}",
        approvals.len() - refused,
        lock_path.display()
    );
    if refused > 0 {
        return Err(Failure::input(format!(
            "{refused} tool(s) refused; they stay quarantined (see `parlor mcp scan`)"
        )));
    }
    Ok(())
}

async fn run_mcp_login(name: &str, path: Option<&Path>, wait: u64) -> Result<(), Failure> {
    let spec = load_spec(path)?;
    let server = spec.mcp.get(name).ok_or_else(|| {
        let names: Vec<_> = spec.mcp.keys().map(String::as_str).collect();
        Failure::usage(format!(
            "no MCP server \"{name}\" in {} (it has: {})",
            spec.name,
            names.join(", ")
        ))
    })?;
    let tokens = parlor::mcp::transport::token_source(name, server)
        .map_err(Failure::input)?
        .ok_or_else(|| {
            Failure::usage(format!(
                "MCP server \"{name}\" has no [mcp.{name}.oauth]: there is nothing to sign in to"
            ))
        })?;
    parlor::mcp::oauth_login::login(
        &tokens,
        |url| {
            eprintln!("To sign parlor in to \"{name}\", open this address in a browser:\n\n  {url}\n\nWaiting for the sign-in (up to {wait} s)...");
        },
        std::time::Duration::from_secs(wait),
    )
    .await
    .map_err(Failure::input)?;
    let saved = parlor::mcp::credentials::CredentialStore::for_server(name)
        .map(|s| s.path().display().to_string())
        .unwrap_or_default();
    eprintln!("Signed in to \"{name}\"; its refresh token is kept in {saved}.");
    Ok(())
}

async fn run_mcp_scan(path: Option<&Path>, json: bool) -> Result<(), Failure> {
    use parlor::mcp::gate::{assess, kind_name};
    use parlor::mcp::pins::ToolLock;

    let spec = load_spec(path)?;
    let cwd = std::env::current_dir().map_err(Failure::usage)?;
    let lock_path = spec.lock_path(&cwd);
    let lock = ToolLock::load(&lock_path).map_err(Failure::input)?;
    let (pool, defs) = raw_tools(&spec).await?;
    let servers = pool.as_ref().map(|p| p.servers()).unwrap_or_default();
    if let Some(pool) = pool {
        pool.shutdown().await;
    }
    let verdicts = assess(&defs, lock.as_ref(), &mut Default::default());
    if json {
        let servers: Vec<_> = spec
            .mcp
            .iter()
            .map(|(name, server)| {
                let status = servers.iter().find(|s| &s.name == name);
                let tools: Vec<_> = verdicts
                    .iter()
                    .filter(|v| &v.server == name)
                    .map(|v| {
                        json!({
                            "name": v.tool,
                            "qualified": parlor::mcp::pool::tool_name(&v.server, &v.tool),
                            "status": v.status,
                            "offered": v.offered,
                            "reason": v.reason,
                            "findings": v.findings,
                        })
                    })
                    .collect();
                json!({
                    "name": name,
                    "transport": parlor::mcp::transport::transport_name(server),
                    "target": parlor::mcp::transport::target(server),
                    "connected": status.is_some_and(|s| s.connected),
                    "tools": tools,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "pipeline": spec.name,
                "lock": lock_path.display().to_string(),
                "lock_exists": lock.is_some(),
                "servers": servers,
            })
        );
        return Ok(());
    }
    println!(
        "tool lock: {} ({})",
        lock_path.display(),
        if lock.is_some() {
            "pins checked against it"
        } else {
            "none yet: run `parlor mcp trust`"
        }
    );
    let mut rows = vec![[
        "SERVER".to_string(),
        "TOOL".into(),
        "STATUS".into(),
        "OFFERED".into(),
        "FINDINGS".into(),
    ]];
    for v in &verdicts {
        let findings = if v.findings.is_empty() {
            "-".to_string()
        } else {
            v.findings
                .iter()
                .map(|f| format!("{}: {}", kind_name(f.kind), f.detail))
                .collect::<Vec<_>>()
                .join("; ")
        };
        rows.push([
            v.server.clone(),
            v.tool.clone(),
            v.status.as_str().into(),
            if v.offered { "yes" } else { "no" }.into(),
            findings,
        ]);
    }
    for (name, server) in &spec.mcp {
        if let parlor::spec::McpServerSpec::Hosted(_) = server {
            rows.push([
                name.clone(),
                "*".into(),
                "hosted".into(),
                "-".into(),
                "(the model provider lists its tools; not pinned)".into(),
            ]);
        }
    }
    print_table(&rows);
    Ok(())
}

/// First line of `text`, at most 80 characters.
fn one_line(text: Option<&str>) -> String {
    let line = text.unwrap_or("").lines().next().unwrap_or("");
    if line.chars().count() > 80 {
        format!("{}…", line.chars().take(79).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Columns padded to their widest cell.
fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// One tool call as `parlor ask` and `parlor turn` print it.
fn tool_line(r: &parlor::planner::ToolRecord) -> String {
    let (server, tool) = r.name.split_once("__").unwrap_or(("", &r.name));
    let status = if r.is_error { "error" } else { "ok" };
    // The provider ran hosted calls; their latency is its own.
    let took = if r.hosted {
        "hosted".to_string()
    } else {
        format!("{:.1} ms", r.latency.as_secs_f64() * 1e3)
    };
    format!(
        "[tool] {server} {tool} {} -> {status}, {} bytes, {took}",
        r.arguments,
        r.output.len(),
    )
}

/// What `parlor call` plays and where the answer goes.
struct CallArgs<'a> {
    file: &'a Path,
    out: &'a Path,
    json: bool,
    fast: bool,
    approve_tools: bool,
}

/// `parlor call --serve`: a server of our own on a free port, the call over
/// its WebSocket, then the server stopped.
async fn run_call_served(call: CallArgs<'_>, pipeline: Option<&Path>) -> Result<(), Failure> {
    use parlor::server::serve;

    let (state, loaded) = build_server(pipeline, ServerOptions::default()).await?;
    if loaded.is_none() {
        return Err(Failure::usage(
            "the pipeline has no vad stage, so it cannot take calls",
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(Failure::input)?;
    let local = listener.local_addr().map_err(Failure::input)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(serve(listener, state, stop.clone().cancelled_owned()));
    let url = format!("ws://{local}/v1/calls");
    if !call.json {
        println!("[serve] pipeline listening at {url}");
    }
    let called = run_call(call, &url).await;
    stop.cancel();
    let _ = server.await;
    if let Some(pipeline) = loaded.and_then(|p| Arc::try_unwrap(p).ok()) {
        pipeline.shutdown().await;
    }
    called
}

/// `parlor bench`: each pipeline served in-process in turn (never two at
/// once, so they do not share the CPU), every task a live call to it.
/// A pipeline served in-process on 127.0.0.1 for the bench's calls.
struct BenchServer {
    /// `ws://…/v1/calls`.
    url: String,
    /// Where it listens (its HTTP routes are `http://{addr}/v1/...`).
    addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    loaded: Option<Arc<parlor::loaded::LoadedPipeline>>,
}

impl BenchServer {
    /// Serve the spec at `path`, taking at least `calls` calls at once.
    async fn start(path: &Path, calls: usize) -> Result<Self, Failure> {
        use parlor::server::serve;

        let defaults = ServerOptions::default();
        let options = ServerOptions {
            max_calls: defaults.max_calls.max(calls),
            ..defaults
        };
        let (state, loaded) = build_server(Some(path), options).await?;
        if loaded.is_none() {
            return Err(Failure::usage(format!(
                "{}: the pipeline has no vad stage, so it cannot take calls",
                path.display()
            )));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Failure::input)?;
        let addr = listener.local_addr().map_err(Failure::input)?;
        let url = format!("ws://{addr}/v1/calls");
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(listener, state, stop.clone().cancelled_owned()));
        Ok(Self {
            url,
            addr,
            stop,
            server,
            loaded,
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
        if let Some(pipeline) = self.loaded.and_then(|p| Arc::try_unwrap(p).ok()) {
            pipeline.shutdown().await;
        }
    }
}

/// `parlor bench --load`: ramp calls at once on one pipeline.
async fn run_bench_load(
    pipelines: &[PathBuf],
    tasks: &Path,
    options: parlor::bench::RunOptions,
    max_calls: usize,
    out: &Path,
) -> Result<(), Failure> {
    use parlor::bench::load::{run_load, total_calls, write_load_report, LoadReport};
    use parlor::bench::tasks::Dataset;

    let [path] = pipelines else {
        return Err(Failure::usage(format!(
            "--load ramps calls on one pipeline; {} were given",
            pipelines.len()
        )));
    };
    if options.concurrency > 1 || options.barge_in {
        return Err(Failure::usage(
            "--load sets its own calls at once and does not barge in: drop --concurrency and --barge-in",
        ));
    }
    let data = Dataset::load(tasks, true).map_err(Failure::usage)?;
    let limit = options.limit.min(data.tasks.len());
    if limit == 0 {
        return Err(Failure::usage("--load needs at least one task to deal out"));
    }
    let name = load_spec(Some(path))?.name;
    let progress = indicatif::ProgressBar::new(total_calls(max_calls, options.repeat) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .expect("a valid template"),
    );
    progress.set_prefix(name.clone());
    let served = BenchServer::start(path, max_calls).await?;
    let steps = run_load(
        &served.url,
        &data,
        limit,
        max_calls,
        options.repeat,
        &progress,
    )
    .await;
    served.stop().await;
    progress.finish_and_clear();
    let report = LoadReport {
        pipeline: name,
        spec: path.display().to_string(),
        tasks: limit,
        waves: options.repeat,
        steps,
    };
    write_load_report(out, &report).map_err(Failure::input)?;
    println!("{}", report.markdown());
    println!("load report, JSON and plot in {}", out.display());
    Ok(())
}

async fn run_bench(
    pipelines: &[PathBuf],
    tasks: &Path,
    options: parlor::bench::RunOptions,
    peers: &[Peer],
    price_as: Option<&Path>,
    out: &Path,
) -> Result<(), Failure> {
    use parlor::bench::peers::{PipecatPeer, PIPECAT, PIPECAT_SCRIPT};
    use parlor::bench::report::{PipelineReport, ReferencePrices, Report};
    use parlor::bench::{run::Hearer, tasks::Dataset};

    let data = Dataset::load(tasks, true).map_err(Failure::usage)?;
    let limit = options.limit.min(data.tasks.len());
    let options = parlor::bench::RunOptions { limit, ..options };
    let repeat = options.repeat;
    let reference_prices = match price_as {
        Some(path) => {
            let spec = load_spec(Some(path))?;
            let Some(prices) = spec.prices else {
                return Err(Failure::usage(format!(
                    "--price-as {}: the spec has no [prices] table to price turns with",
                    path.display()
                )));
            };
            Some(ReferencePrices {
                name: spec.name,
                prices,
            })
        }
        None => None,
    };
    let reference = reference_prices.as_ref().map(|r| &r.prices);
    // A peer stands beside the first pipeline (its model, its MCP
    // servers): checked before anything runs.
    let pipecat = if peers.contains(&Peer::Pipecat) {
        if options.concurrency > 1 {
            return Err(Failure::usage(
                "--peers plays the tasks one call at a time: drop --concurrency",
            ));
        }
        let spec = load_spec(Some(&pipelines[0]))?;
        Some(PipecatPeer::for_spec(&spec).map_err(Failure::usage)?)
    } else {
        None
    };
    // Whisper hears the replies back, as the voice tests do.
    let mut hearer = Hearer::load(Path::new("models/ggml-tiny.en.bin")).map_err(Failure::input)?;
    let rows = pipelines.len() + usize::from(pipecat.is_some());
    let progress = indicatif::ProgressBar::new((rows * limit * repeat) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .expect("a valid template"),
    );
    let mut reports = Vec::new();
    for path in pipelines {
        let spec = load_spec(Some(path))?;
        let name = spec.name;
        progress.set_prefix(name.clone());
        let served = BenchServer::start(path, options.concurrency).await?;
        let run =
            parlor::bench::run_pipeline(&served.url, &data, options, &mut hearer, &progress).await;
        served.stop().await;
        reports.push(
            PipelineReport::new(name, path.display().to_string(), run.results)
                .ran_at(options.concurrency, run.cpu_s)
                .priced(spec.prices)
                .priced_also_at(reference),
        );
    }
    if let Some(peer) = pipecat {
        progress.set_prefix(PIPECAT);
        // Pipecat's LLM is the first pipeline's model on parlor's chat route.
        let served = BenchServer::start(&pipelines[0], 1).await?;
        let chat_url = format!("http://{}", served.addr);
        let run = peer
            .run(&chat_url, &data, options, out, &mut hearer, &progress)
            .await;
        served.stop().await;
        let run = run.map_err(Failure::input)?;
        reports.push(
            PipelineReport::new(PIPECAT.into(), PIPECAT_SCRIPT.into(), run.results)
                .ran_at(1, run.cpu_s)
                .priced(None)
                .priced_also_at(reference),
        );
    }
    progress.finish_and_clear();
    let report = Report {
        tasks: limit,
        repeat,
        concurrency: options.concurrency,
        reference_prices,
        pipelines: reports,
    };
    parlor::bench::write_report(out, &report).map_err(Failure::input)?;
    println!("{}", report.markdown());
    println!("report, JSON and plots in {}", out.display());
    Ok(())
}

async fn run_call(call: CallArgs<'_>, url: &str) -> Result<(), Failure> {
    use parlor::live::client::{play_file, PlayOptions};
    use parlor::live::ServerEvent;

    let CallArgs {
        file,
        out,
        json,
        fast,
        approve_tools,
    } = call;

    let audio = decode_file(file, &DecodeLimits::default())
        .map_err(|e| Failure::input(format!("{}: {e}", file.display())))?;
    let options = PlayOptions {
        realtime: !fast,
        approve_tools: Some(approve_tools),
        ..PlayOptions::default()
    };
    let show = |event: &ServerEvent| {
        if json {
            println!("{}", serde_json::to_string(event).expect("serializable"));
            return;
        }
        match event {
            ServerEvent::CallStarted {
                call_id, pipeline, ..
            } => {
                println!("[call] {call_id} on pipeline {pipeline}")
            }
            ServerEvent::Transcript {
                text,
                is_final: true,
                ..
            } => println!("[caller] {text}"),
            ServerEvent::ToolCall {
                server,
                tool,
                arguments,
                is_error,
                latency_ms,
                ..
            } => println!(
                "[tool] {server} {tool} {arguments} -> {}{}",
                if *is_error { "error" } else { "ok" },
                latency_ms
                    .map(|ms| format!(", {ms} ms"))
                    .unwrap_or_default()
            ),
            ServerEvent::Filler { text, .. } => println!("[filler] {text}"),
            ServerEvent::ToolConfirm {
                tool, arguments, ..
            } => println!(
                "[confirm] {tool} {arguments}: {}",
                if approve_tools {
                    "approved (--approve-tools)"
                } else {
                    "declined (pass --approve-tools to approve)"
                }
            ),
            ServerEvent::BargeIn {
                played_ms, heard, ..
            } => println!("[barge-in] after {played_ms} ms; heard: {heard}"),
            ServerEvent::TurnError { stage, message, .. } => println!("[error] {stage}: {message}"),
            ServerEvent::TurnDone {
                reply,
                voice_to_voice_ms,
                ..
            } => {
                if !reply.is_empty() {
                    println!("[parlor] {}", reply.trim());
                }
                if let Some(ms) = voice_to_voice_ms {
                    println!("[latency] voice to voice {ms} ms");
                }
            }
            ServerEvent::Error { code, message } => println!("[error] {code}: {message}"),
            ServerEvent::CallEnded { reason } => println!("[call] ended: {reason}"),
            _ => {}
        }
    };
    let recording = play_file(url, &audio, &options, show)
        .await
        .map_err(Failure::input)?;
    if !recording.audio.is_empty() {
        let answer = recording.audio_chunk();
        parlor::audio::write_wav(out, &answer)
            .map_err(|e| Failure::input(format!("{}: {e}", out.display())))?;
        if !json {
            println!(
                "[audio] {} ({:.1} s)",
                out.display(),
                answer.duration().as_secs_f64()
            );
        }
    } else if !json {
        println!("[audio] (nothing was spoken)");
    }
    Ok(())
}

async fn run_turn(
    file: &Path,
    pipeline: Option<&Path>,
    out: &Path,
    json: bool,
) -> Result<(), Failure> {
    use parlor::file_call;
    use parlor::loaded::LoadedPipeline;

    let spec = load_spec(pipeline)?;
    let limits = DecodeLimits {
        rate: spec.input_rate(),
        ..DecodeLimits::default()
    };
    let audio = decode_file(file, &limits)
        .map_err(|e| Failure::input(format!("{}: {e}", file.display())))?;
    let cwd = std::env::current_dir().map_err(Failure::usage)?;
    let loaded = LoadedPipeline::load(&spec, &cwd)
        .await
        .map_err(Failure::input)?;
    let played = match loaded.call() {
        Ok(call) => file_call::play(call, audio).await,
        Err(e) => Err(e.into()),
    };
    loaded.shutdown().await;
    let turns = played.map_err(Failure::input)?;

    // Every reply, in order, with a short pause between turns.
    let mut answer: Option<parlor::frame::AudioChunk> = None;
    for audio in turns.iter().filter_map(|t| t.audio.as_ref()) {
        match &mut answer {
            Some(all) => {
                all.samples
                    .extend(std::iter::repeat_n(0.0, audio.sample_rate as usize / 4));
                all.samples.extend_from_slice(&audio.samples);
            }
            None => answer = Some(audio.clone()),
        }
    }
    if let Some(answer) = &answer {
        parlor::audio::write_wav(out, answer)
            .map_err(|e| Failure::input(format!("{}: {e}", out.display())))?;
    }
    if json {
        for turn in &turns {
            println!("{}", serde_json::to_string(turn).expect("serializable"));
        }
        return Ok(());
    }
    if turns.is_empty() {
        println!("(no speech detected)");
    }
    for t in &turns {
        println!(
            "[caller] {}",
            if t.transcript.is_empty() {
                "(no words)"
            } else {
                &t.transcript
            }
        );
        for record in &t.tools {
            println!("{}", tool_line(record));
        }
        if !t.reply.is_empty() {
            println!("[parlor] {}", t.reply.trim());
        }
        for error in &t.errors {
            println!("[error] {error}");
        }
        let ms = |d: Option<std::time::Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
        println!(
            "{}",
            json!({
                "turn": t.turn,
                "voice_to_voice_ms": ms(t.voice_to_voice()),
                "stages": t.metrics.stages,
            })
        );
    }
    match &answer {
        Some(a) => println!(
            "[audio] {} ({:.1} s)",
            out.display(),
            a.duration().as_secs_f64()
        ),
        None if has_tts(&spec) => println!("[audio] (nothing was spoken)"),
        None => {}
    }
    Ok(())
}

fn has_tts(spec: &PipelineSpec) -> bool {
    tts_stage(spec).is_some()
}

fn tts_stage(spec: &PipelineSpec) -> Option<parlor::spec::TtsSpec> {
    spec.stages.iter().find_map(|s| match s {
        parlor::spec::StageSpec::Tts(t) => Some(t.clone()),
        _ => None,
    })
}

async fn run_transcribe(file: &Path, pipeline: Option<&Path>, json: bool) -> Result<(), Failure> {
    let spec = load_spec(pipeline)?;
    let audio = decode_file(file, &DecodeLimits::default())
        .map_err(|e| Failure::input(format!("{}: {e}", file.display())))?;
    let built = listening_pipeline(&spec).await.map_err(Failure::input)?;
    let turns = transcribe(built, audio).await.map_err(Failure::input)?;
    if json {
        for turn in &turns {
            println!("{}", serde_json::to_string(turn).expect("serializable"));
        }
    } else {
        print_human(&turns);
    }
    Ok(())
}

fn print_human(turns: &[TurnTranscript]) {
    if turns.is_empty() {
        println!("(no speech detected)");
    }
    for t in turns {
        println!(
            "[{:>7.2}s +{:.2}s] {}",
            t.start_s,
            t.metrics.speech.as_secs_f64(),
            if t.text.is_empty() {
                "(no words)"
            } else {
                &t.text
            }
        );
    }
    let timings: Vec<_> = turns
        .iter()
        .map(|t| json!({ "turn": t.turn, "speech_ms": t.metrics.speech.as_secs_f64() * 1e3, "stages": t.metrics.stages }))
        .collect();
    println!("{}", json!({ "timings": timings }));
}

fn run_audit_verify(file: &Path, json: bool) -> Result<(), Failure> {
    let result = parlor::mcp::audit::verify(file);
    if json {
        let out = match &result {
            Ok(report) => json!({ "ok": true, "report": report }),
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        };
        println!("{out}");
    }
    match result {
        Ok(report) => {
            if !json {
                println!("records: {}", report.records);
                println!("last seq: {}", report.last_seq);
                println!("last hash: {}", report.last_hash);
                match report.head_seq {
                    Some(seq) => println!("head: seq {seq}"),
                    None => println!("head: none"),
                }
                if report.torn_tail_bytes > 0 {
                    println!(
                        "torn final record: unacknowledged tail, {} bytes (never reported \
                         as written; cut off when the log is next opened)",
                        report.torn_tail_bytes
                    );
                }
                println!("OK");
            }
            Ok(())
        }
        Err(e) => Err(Failure::input(format!("{}: {e}", file.display()))),
    }
}

/// Appends from 8 tasks until killed (or `count` records in all).
async fn run_audit_stress(file: &Path, count: Option<u64>) -> Result<(), Failure> {
    use parlor::mcp::{AuditContext, AuditEntry, AuditLog, Decision};
    let log = Arc::new(AuditLog::open(file).map_err(Failure::input)?);
    let left = Arc::new(std::sync::atomic::AtomicU64::new(count.unwrap_or(u64::MAX)));
    let tasks = (0..8).map(|task| {
        let (log, left) = (log.clone(), left.clone());
        tokio::spawn(async move {
            let context = AuditContext::default();
            let arguments = json!({ "task": task, "token": "stress-SECRET" });
            while left
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                let entry = AuditEntry {
                    context: &context,
                    decision: Decision::Allowed,
                    server: "stress",
                    tool: "append",
                    arguments: &arguments,
                    result: Some(b"ok"),
                    tool_error: false,
                    latency: std::time::Duration::ZERO,
                    reason: None,
                };
                log.append(&entry).await.map_err(Failure::input)?;
            }
            Ok::<(), Failure>(())
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.map_err(Failure::input)??;
    }
    Ok(())
}
