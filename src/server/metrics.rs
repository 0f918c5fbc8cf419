//! `GET /metrics`: what the server has done, in the OpenMetrics text format
//! Prometheus scrapes.
//!
//! [`ServerMetrics`] owns one registry. Handlers feed it a finished turn at
//! a time ([`ServerMetrics::turn_finished`]), a call's lifetime
//! ([`ServerMetrics::call_opened`]) and, through [`count_requests`], every
//! HTTP request. Labels take only bounded values (route templates, stage
//! and tool names from the spec), never a raw URL or an error message, so
//! a scanner or a chatty failure cannot grow the series without end.
//!
//! Families (all prefixed `parlor_`): `turns_total{route}`,
//! `voice_to_voice_seconds`, `stage_first_output_seconds{stage}`,
//! `tool_calls_total{server,tool,outcome}`, `tool_call_seconds{server}`,
//! `turn_errors_total{stage}`, `active_calls`, `calls_total`,
//! `http_requests_total{route,status}`.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::AppState;
use crate::file_call::TurnReport;

/// What prometheus-client's text encoder writes.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Route label of requests no route matched (a scanner's guesses).
pub const UNMATCHED: &str = "unmatched";

/// Stage label of a turn error without a `stage: ` prefix.
const UNKNOWN_STAGE: &str = "unknown";

/// Seconds from end of speech to output: a fast local turn answers in a
/// few hundred ms, a slow planner with tools in tens of seconds.
const TURN_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
];

/// Seconds per tool call: a local SQLite lookup takes milliseconds, a
/// remote MCP server up to its timeout.
const TOOL_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    server: String,
    tool: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

/// A histogram family needs a constructor to give each new label set its
/// buckets; plain `fn`s keep the family's type nameable.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn turn_histogram() -> Histogram {
    Histogram::new(TURN_BUCKETS)
}

fn tool_histogram() -> Histogram {
    Histogram::new(TOOL_BUCKETS)
}

/// The server's metrics. Shared as `Arc<ServerMetrics>` in [`AppState`];
/// every method takes `&self` (the metric types are atomics inside).
pub struct ServerMetrics {
    registry: Registry,
    turns: Family<RouteLabels, Counter>,
    voice_to_voice: Histogram,
    stage_first_output: HistogramFamily<StageLabels>,
    tool_calls: Family<ToolLabels, Counter>,
    tool_call_seconds: HistogramFamily<ServerLabels>,
    turn_errors: Family<StageLabels, Counter>,
    active_calls: Gauge,
    calls: Counter,
    http_requests: Family<HttpLabels, Counter>,
}

/// By hand: the registry's `Debug` prints every metric.
impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics")
            .field("active_calls", &self.active_calls.get())
            .field("calls", &self.calls.get())
            .finish_non_exhaustive()
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("parlor");
        let turns = Family::<RouteLabels, Counter>::default();
        // Counters get `_total` and unit-registered metrics `_seconds`
        // from the encoder, so the names here are bare; it also ends each
        // help text with a period.
        registry.register("turns", "Turns finished, by route", turns.clone());
        let voice_to_voice = turn_histogram();
        registry.register_with_unit(
            "voice_to_voice",
            "From the end of the caller's speech to the first reply audio",
            Unit::Seconds,
            voice_to_voice.clone(),
        );
        let stage_first_output: HistogramFamily<StageLabels> =
            Family::new_with_constructor(turn_histogram);
        registry.register_with_unit(
            "stage_first_output",
            "From the end of the caller's speech to a stage's first output, by stage",
            Unit::Seconds,
            stage_first_output.clone(),
        );
        let tool_calls = Family::<ToolLabels, Counter>::default();
        registry.register(
            "tool_calls",
            "Tool calls made by the planner, by MCP server, tool and outcome (ok or error)",
            tool_calls.clone(),
        );
        let tool_call_seconds: HistogramFamily<ServerLabels> =
            Family::new_with_constructor(tool_histogram);
        registry.register_with_unit(
            "tool_call",
            "Latency of tool calls parlor ran itself (not hosted ones), by MCP server",
            Unit::Seconds,
            tool_call_seconds.clone(),
        );
        let turn_errors = Family::<StageLabels, Counter>::default();
        registry.register(
            "turn_errors",
            "Things a stage could not do within a turn, by stage",
            turn_errors.clone(),
        );
        let active_calls = Gauge::default();
        registry.register("active_calls", "Calls open right now", active_calls.clone());
        let calls = Counter::default();
        registry.register("calls", "Calls opened", calls.clone());
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by matched route (or `unmatched`) and status",
            http_requests.clone(),
        );
        Self {
            registry,
            turns,
            voice_to_voice,
            stage_first_output,
            tool_calls,
            tool_call_seconds,
            turn_errors,
            active_calls,
            calls,
            http_requests,
        }
    }

    /// Count one finished turn of `route` ("turns", "transcriptions",
    /// "calls") with its latencies, tool calls and errors.
    pub fn turn_finished(&self, route: &'static str, report: &TurnReport) {
        self.turns
            .get_or_create(&RouteLabels {
                route: route.into(),
            })
            .inc();
        if let Some(v2v) = report.voice_to_voice() {
            self.voice_to_voice.observe(v2v.as_secs_f64());
        }
        for timing in &report.metrics.stages {
            if let Some(after) = timing.first_output_after_speech_end {
                self.stage_first_output
                    .get_or_create(&StageLabels {
                        stage: timing.stage.clone(),
                    })
                    .observe(after.as_secs_f64());
            }
        }
        for call in &report.tools {
            let (server, tool) = split_tool_name(&call.name);
            self.tool_calls
                .get_or_create(&ToolLabels {
                    server: server.into(),
                    tool: tool.into(),
                    outcome: if call.is_error { "error" } else { "ok" },
                })
                .inc();
            // A hosted call ran at the provider; its latency is a zero
            // placeholder that would drag the histogram down.
            if !call.hosted {
                self.tool_call_seconds
                    .get_or_create(&ServerLabels {
                        server: server.into(),
                    })
                    .observe(call.latency.as_secs_f64());
            }
        }
        for error in &report.errors {
            self.turn_errors
                .get_or_create(&StageLabels {
                    stage: error_stage(error).into(),
                })
                .inc();
        }
    }

    /// Count a call as open until the returned guard drops. A guard rather
    /// than a `call_closed()` so a call whose task panics or is cancelled
    /// still counts down.
    #[must_use = "the call counts as open only while the guard lives"]
    pub fn call_opened(&self) -> CallGuard {
        self.calls.inc();
        self.active_calls.inc();
        CallGuard {
            active: self.active_calls.clone(),
        }
    }

    /// Count one answered HTTP request; `route` is the matched route
    /// template or [`UNMATCHED`].
    pub fn http_request(&self, route: &str, status: StatusCode) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.into(),
                status: status.as_u16(),
            })
            .inc();
    }

    /// Every metric in the OpenMetrics text format
    /// ([`CONTENT_TYPE_OPENMETRICS`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here could only come
        // from a metric's own encoder, and a partial page is still useful.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(message = "Cannot encode the metrics.", error = %e);
        }
        out
    }
}

/// One open call; dropping it counts the call as closed.
#[derive(Debug)]
pub struct CallGuard {
    active: Gauge,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// `server__tool` → (`server`, `tool`); a name without the separator is a
/// tool of no named server.
fn split_tool_name(name: &str) -> (&str, &str) {
    name.split_once("__").unwrap_or(("", name))
}

/// The stage a turn error names: errors read `"stage: message"`. A prefix
/// that does not look like a stage name (empty, long or with spaces) is
/// part of a message, and would make the label unbounded: "unknown".
fn error_stage(error: &str) -> &str {
    match error.split_once(": ") {
        Some((stage, _))
            if !stage.is_empty() && stage.len() <= 32 && !stage.contains(char::is_whitespace) =>
        {
            stage
        }
        _ => UNKNOWN_STAGE,
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)],
        state.metrics.render(),
    )
        .into_response()
}

/// Middleware counting every request by matched route template and status.
/// The template (`/v1/turns`), never the raw path, so the label has as many
/// values as the router has routes.
pub async fn count_requests(
    State(metrics): State<Arc<ServerMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    metrics.http_request(&route, response.status());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use crate::frame::{StageTiming, TurnId, TurnMetrics};
    use crate::planner::ToolRecord;

    #[test]
    fn error_stage_is_the_part_before_the_colon() {
        assert_eq!(error_stage("tts: could not speak: voice gone"), "tts");
        assert_eq!(error_stage("stt: transcription server unreachable"), "stt");
        assert_eq!(error_stage("no prefix at all"), "unknown");
        assert_eq!(error_stage(": empty stage"), "unknown");
        assert_eq!(
            error_stage("the planner said: something odd"),
            "unknown",
            "a sentence before the colon is not a stage"
        );
    }

    #[test]
    fn a_call_counts_down_when_its_guard_drops_even_on_panic() {
        let metrics = ServerMetrics::new();
        let first = metrics.call_opened();
        let second = metrics.call_opened();
        assert_eq!(metrics.active_calls.get(), 2);
        drop(first);
        assert_eq!(metrics.active_calls.get(), 1);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = second;
            panic!("the call's task dies");
        }));
        assert!(panicked.is_err());
        assert_eq!(metrics.active_calls.get(), 0);
        assert_eq!(metrics.calls.get(), 2, "calls_total never counts down");
        let text = metrics.render();
        assert!(text.contains("parlor_active_calls 0\n"), "{text}");
        assert!(text.contains("parlor_calls_total 2\n"), "{text}");
    }

    fn tool(name: &str, is_error: bool, latency_ms: u64, hosted: bool) -> ToolRecord {
        ToolRecord {
            id: "call_1".into(),
            name: name.into(),
            arguments: serde_json::json!({}),
            is_error,
            output: String::new(),
            latency: Duration::from_millis(latency_ms),
            hosted,
        }
    }

    fn timing(stage: &str, after_ms: Option<u64>) -> StageTiming {
        StageTiming {
            stage: stage.into(),
            time_to_first_output: None,
            first_output_after_speech_end: after_ms.map(Duration::from_millis),
            busy: Duration::ZERO,
        }
    }

    #[test]
    fn a_turn_report_fills_every_family() {
        let mut turn_metrics = TurnMetrics::new(TurnId(1), Duration::from_secs(1), Instant::now());
        turn_metrics.stages = vec![
            timing("vad", None),
            timing("stt", Some(300)),
            timing("planner", Some(900)),
            timing("tts", Some(1200)),
        ];
        let report = TurnReport {
            turn: turn_metrics.turn,
            start_s: 0.0,
            transcript: "where is my order".into(),
            tools: vec![
                tool("orders__get_order", false, 20, false),
                tool("orders__get_order", true, 40, false),
                tool("docs__search", false, 0, true),
            ],
            reply: String::new(),
            audio: None,
            errors: vec!["tts: could not speak".into(), "odd message".into()],
            metrics: turn_metrics,
        };
        let metrics = ServerMetrics::new();
        metrics.turn_finished("turns", &report);
        let text = metrics.render();
        for line in [
            "parlor_turns_total{route=\"turns\"} 1\n",
            "parlor_voice_to_voice_seconds_count 1\n",
            "parlor_voice_to_voice_seconds_bucket{le=\"1.5\"} 1\n",
            "parlor_voice_to_voice_seconds_bucket{le=\"1.0\"} 0\n",
            "parlor_stage_first_output_seconds_count{stage=\"planner\"} 1\n",
            "parlor_tool_calls_total{server=\"orders\",tool=\"get_order\",outcome=\"ok\"} 1\n",
            "parlor_tool_calls_total{server=\"orders\",tool=\"get_order\",outcome=\"error\"} 1\n",
            "parlor_tool_calls_total{server=\"docs\",tool=\"search\",outcome=\"ok\"} 1\n",
            "parlor_tool_call_seconds_count{server=\"orders\"} 2\n",
            "parlor_turn_errors_total{stage=\"tts\"} 1\n",
            "parlor_turn_errors_total{stage=\"unknown\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("stage=\"vad\""),
            "a stage without a latency is not observed:\n{text}"
        );
        assert!(
            !text.contains("server=\"docs\"}"),
            "a hosted call has no latency to observe:\n{text}"
        );
        assert!(
            text.contains("# HELP parlor_turns Turns finished, by route.\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
