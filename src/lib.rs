//! parlor: a voice-agent pipeline service.
//!
//! A caller speaks; the VAD finds the turn, Whisper transcribes it, a planner
//! answers with tools from MCP servers, and TTS speaks the answer. Stages are
//! declared in `pipelines/*.toml` and connected by bounded channels.
//!
//! # Layout
//! - [`spec`]: pipeline specs, parsed and validated up front.
//! - [`access`]: callers (API keys to principal and role) and the
//!   `[auth]`/`[access]` tables the policy layer enforces.
//! - [`bench`]: `parlor bench`: the spoken task dataset, its metrics, the run and the report.
//! - [`frame`]: what flows between stages, and per-turn metrics.
//! - [`stages`]: the stage contract ([`stages::Stage`]) and one folder per kind.
//! - [`runner`]: wires stages with bounded channels; shutdown and drain.
//! - [`turns`]: turn ids and per-turn cancellation (barge-in).
//! - [`audio`]: decode, resample, WAV (the only module that knows symphonia).
//! - [`mcp`]: the MCP client pool (the only module that knows rmcp).
//! - [`llm`]: planner models: chat types, tool-choice grammar, local llama.cpp,
//!   OpenAI-compatible servers.
//! - [`planner`]: the tool loop (parallel calls, limits, history) and its set-up.
//! - [`realtime`]: the OpenAI Realtime protocol, and a session of it served
//!   by a live call (`GET /v1/realtime`).
//! - [`loaded`]: a spec's models loaded once; fresh stages per call.
//! - [`file_call`]: an audio file played into a pipeline; a report per turn.
//! - [`transcribe`]: the `parlor transcribe` job, as a library call.
//! - [`server`]: OpenAI-compatible HTTP routes (the only module that knows axum).
//! - [`secrets`]: the secrets parlor holds, kept out of replies and tool
//!   arguments.
//! - [`untrusted`]: text from outside (tool results, resources, descriptions)
//!   cleaned of hidden characters and fenced as data for the model.

pub mod access;
pub mod audio;
pub mod bench;
mod dial;
pub mod file_call;
pub mod first_audio;
pub mod frame;
pub mod live;
pub mod llm;
pub mod loaded;
pub mod mcp;
pub mod planner;
pub mod prices;
pub mod realtime;
pub mod runner;
pub mod secrets;
pub mod server;
pub mod spec;
pub mod stages;
pub mod transcribe;
pub mod turns;
pub mod untrusted;
