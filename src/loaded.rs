//! A pipeline spec with its models loaded once, making the stages of each
//! call on demand.
//!
//! Loading is the slow part (Whisper, the planner's LLM, the voice, MCP
//! sessions); a call's own state is small (the VAD's recurrent state, the
//! conversation). So the heavy parts are loaded here and shared, and
//! [`LoadedPipeline::call`] builds a fresh, cheap set of stages for every
//! upload or live call: calls never see each other's turns or history.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::access::Caller;
use crate::planner::setup::{self, ConnectedPlanner, ConnectedTools, SetupError};
use crate::planner::{Confirmer, NoPerson};
use crate::runner::Pipeline;
use crate::spec::{PipelineSpec, StageSpec, SttBackend, TtsSpec, VadSpec};
use crate::stages::planner::PlannerStage;
use crate::stages::realtime::{RealtimeSettings, RealtimeStage};
use crate::stages::stt::openai::OpenAiTranscriber;
use crate::stages::stt::{OpenAiStt, SttError, WhisperEngine, WhisperLocal, WhisperSettings};
use crate::stages::tts::{load_voice, TtsError, TtsStage, Voice};
use crate::stages::vad::{self, VadError, VadStage};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("stage {index} (vad): {source}")]
    Vad { index: usize, source: VadError },
    #[error("stage {index} (stt): {source}")]
    Stt { index: usize, source: SttError },
    #[error("stage {index} (planner): {source}")]
    Planner { index: usize, source: SetupError },
    #[error("stage {index} (tts): {source}")]
    Tts { index: usize, source: TtsError },
    #[error("stage {index} (realtime): {message}")]
    Realtime { index: usize, message: String },
}

/// One stage's loaded, shareable part.
enum Part {
    /// The model is shared; each call gets a detector with its own state.
    Vad {
        spec: VadSpec,
        model: vad::SharedModel,
    },
    Stt(Arc<Mutex<WhisperEngine>>),
    /// The `openai` stt backend's client.
    SttRemote(Arc<OpenAiTranscriber>),
    Planner(ConnectedPlanner),
    Tts {
        voice: Arc<dyn Voice>,
        rate: u32,
    },
    /// The speech-to-speech model's settings and the MCP tools it is
    /// offered; each call dials its own session.
    Realtime {
        settings: Arc<RealtimeSettings>,
        tools: ConnectedTools,
    },
}

/// A spec's stages, loaded.
pub struct LoadedPipeline {
    spec: PipelineSpec,
    parts: Vec<Part>,
}

impl std::fmt::Debug for LoadedPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPipeline")
            .field("name", &self.spec.name)
            .field("stages", &self.spec.stages.len())
            .finish()
    }
}

impl LoadedPipeline {
    /// Load every stage of a validated spec. `base_dir` resolves the
    /// planner's relative paths (instructions); model paths are relative to
    /// the working directory, as everywhere else.
    ///
    /// # Errors
    /// The first stage that cannot be loaded, named by position and kind.
    pub async fn load(spec: &PipelineSpec, base_dir: &Path) -> Result<Self, LoadError> {
        let mut parts = Vec::with_capacity(spec.stages.len());
        for (i, stage) in spec.stages.iter().enumerate() {
            let index = i + 1;
            let part = match stage {
                StageSpec::Vad(vad) => {
                    let spec = vad.clone();
                    let model = blocking(move || vad::SharedModel::load(&spec))
                        .await
                        .map_err(|source| LoadError::Vad { index, source })?;
                    Part::Vad {
                        spec: vad.clone(),
                        model,
                    }
                }
                StageSpec::Stt(stt) if stt.backend == SttBackend::WhisperLocal => {
                    let stt = stt.clone();
                    let engine = blocking(move || {
                        WhisperEngine::load(Path::new(&stt.model), WhisperSettings::from_spec(&stt))
                    })
                    .await
                    .map_err(|source| LoadError::Stt { index, source })?;
                    Part::Stt(Arc::new(Mutex::new(engine)))
                }
                StageSpec::Stt(stt) => Part::SttRemote(Arc::new(
                    OpenAiTranscriber::from_spec(stt)
                        .map_err(|source| LoadError::Stt { index, source })?,
                )),
                StageSpec::Planner(_) => Part::Planner(
                    setup::connect(spec, base_dir)
                        .await
                        .map_err(|source| LoadError::Planner { index, source })?,
                ),
                StageSpec::Tts(tts) => {
                    let spec: TtsSpec = tts.clone();
                    let voice = blocking(move || load_voice(&spec))
                        .await
                        .map_err(|source| LoadError::Tts { index, source })?;
                    Part::Tts {
                        voice,
                        rate: tts.sample_rate,
                    }
                }
                StageSpec::Realtime(rt) => {
                    let settings = RealtimeSettings::from_spec(rt, base_dir)
                        .map_err(|message| LoadError::Realtime { index, message })?;
                    let tools = setup::connect_tools(spec, &rt.mcp, false, base_dir)
                        .await
                        .map_err(|e| LoadError::Realtime {
                            index,
                            message: e.to_string(),
                        })?;
                    Part::Realtime {
                        settings: Arc::new(settings),
                        tools,
                    }
                }
            };
            parts.push(part);
        }
        Ok(Self {
            spec: spec.clone(),
            parts,
        })
    }

    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// Whether the spec has a stage of this kind ("tts", ...).
    pub fn has(&self, kind: &str) -> bool {
        self.spec.stages.iter().any(|s| s.kind() == kind)
    }

    /// The rate reply audio comes out at, if the pipeline speaks.
    /// The rate caller audio is taken at (see [`PipelineSpec::input_rate`]).
    pub fn input_rate(&self) -> u32 {
        self.spec.input_rate()
    }

    pub fn output_rate(&self) -> Option<u32> {
        self.parts.iter().find_map(|p| match p {
            Part::Tts { rate, .. } => Some(*rate),
            Part::Realtime { .. } => Some(crate::realtime::events::PCM_RATE),
            _ => None,
        })
    }

    /// The loaded voice, for routes that speak without a pipeline.
    pub fn voice(&self) -> Option<Arc<dyn Voice>> {
        self.parts.iter().find_map(|p| match p {
            Part::Tts { voice, .. } => Some(voice.clone()),
            _ => None,
        })
    }

    /// The loaded Whisper model, for routes that transcribe without a
    /// pipeline.
    pub fn whisper(&self) -> Option<Arc<Mutex<WhisperEngine>>> {
        self.parts.iter().find_map(|p| match p {
            Part::Stt(engine) => Some(engine.clone()),
            _ => None,
        })
    }

    /// Fresh stages for one call, sharing the loaded models. Blocking for a
    /// few milliseconds (a Silero VAD session per call).
    ///
    /// # Errors
    /// When the VAD cannot be built, which `load` already ruled out unless
    /// the model file changed since.
    pub fn call(&self) -> Result<Pipeline, LoadError> {
        self.call_as(&Caller::default())
    }

    /// [`Self::call`] for an authenticated caller: the planner's tools are
    /// bound to them (roles, rate limits, audit identity).
    ///
    /// # Errors
    /// As [`Self::call`].
    pub fn call_as(&self, caller: &Caller) -> Result<Pipeline, LoadError> {
        self.call_with(caller, Arc::new(NoPerson))
    }

    /// [`Self::call_as`] with a person on the line who confirms sensitive
    /// tool calls through `confirmer`.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub fn call_with(
        &self,
        caller: &Caller,
        confirmer: Arc<dyn Confirmer>,
    ) -> Result<Pipeline, LoadError> {
        self.stages(caller, &confirmer, None, |_| true)
    }

    /// [`Self::call_with`] with the planner's tools (bound to `caller`,
    /// confirmed through `confirmer`) behind `wrap`'s toolbox: a Realtime
    /// session's client tools.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub fn call_wrapped(
        &self,
        caller: &Caller,
        wrap: &crate::realtime::tools::ClientToolsHandle,
        confirmer: Arc<dyn Confirmer>,
    ) -> Result<Pipeline, LoadError> {
        self.stages(caller, &confirmer, Some(wrap), |_| true)
    }

    /// Fresh stages for transcribing only: the vad and stt of the spec.
    ///
    /// # Errors
    /// As [`Self::call`].
    pub fn listening_call(&self) -> Result<Pipeline, LoadError> {
        self.stages(
            &Caller::default(),
            &(Arc::new(NoPerson) as _),
            None,
            |part| matches!(part, Part::Vad { .. } | Part::Stt(_) | Part::SttRemote(_)),
        )
    }

    fn stages(
        &self,
        caller: &Caller,
        confirmer: &Arc<dyn Confirmer>,
        client_tools: Option<&crate::realtime::tools::ClientToolsHandle>,
        keep: impl Fn(&Part) -> bool,
    ) -> Result<Pipeline, LoadError> {
        let mut pipeline = Pipeline::new(self.spec.channel_capacity);
        if self
            .parts
            .iter()
            .any(|p| keep(p) && matches!(p, Part::Realtime { .. }))
        {
            pipeline = pipeline.input_rate(self.spec.input_rate());
        }
        for (i, part) in self.parts.iter().enumerate() {
            if !keep(part) {
                continue;
            }
            pipeline = pipeline.stage(match part {
                Part::Vad { spec, model } => {
                    let detector = model.detector().map_err(|source| LoadError::Vad {
                        index: i + 1,
                        source,
                    })?;
                    Box::new(VadStage::new(
                        vad::SegmenterConfig::from_spec(spec),
                        detector,
                    ))
                }
                Part::Stt(engine) => Box::new(WhisperLocal::shared(engine.clone())),
                Part::SttRemote(client) => Box::new(OpenAiStt::shared(client.clone())),
                Part::Planner(connected) => {
                    let planner = connected.planner.for_session(caller, confirmer.clone());
                    let planner = match client_tools {
                        Some(handle) => planner.with_tools(|inner| handle.wrap(inner)),
                        None => planner,
                    };
                    Box::new(PlannerStage::new(planner))
                }
                Part::Tts { voice, rate } => Box::new(TtsStage::new(voice.clone(), *rate)),
                Part::Realtime { settings, tools } => {
                    let toolbox = tools
                        .tools
                        .for_session(caller, confirmer.clone())
                        .unwrap_or_else(|| tools.tools.clone());
                    Box::new(RealtimeStage::new(
                        settings.clone(),
                        toolbox,
                        tools.secrets.clone(),
                    ))
                }
            });
        }
        Ok(pipeline)
    }

    /// The MCP servers the planner (or realtime stage) uses, and whether
    /// each is connected now.
    pub fn mcp_status(&self) -> Vec<crate::mcp::ServerStatus> {
        self.parts
            .iter()
            .find_map(|p| match p {
                Part::Planner(connected) => Some(connected.pool.servers()),
                Part::Realtime { tools, .. } => Some(tools.pool.servers()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The audit log the pipeline's tool calls are recorded in, if its
    /// spec has one: anything else the server runs tools for records into
    /// the same hash chain.
    pub fn audit_log(&self) -> Option<Arc<crate::mcp::AuditLog>> {
        self.parts.iter().find_map(|p| match p {
            Part::Planner(connected) => connected.audit.clone(),
            Part::Realtime { tools, .. } => tools.audit.clone(),
            _ => None,
        })
    }

    /// Run the planner's prompt through its model once (see
    /// [`crate::planner::Planner::warm_up`]): a server does this before it
    /// takes calls, so the first caller hears an answer as fast as later ones.
    pub async fn warm_up(&self) {
        for part in &self.parts {
            if let Part::Planner(connected) = part {
                connected.planner.warm_up().await;
            }
        }
    }

    /// Close MCP sessions (stdio children exit).
    pub async fn shutdown(self) {
        for part in self.parts {
            match part {
                Part::Planner(connected) => connected.shutdown().await,
                Part::Realtime { tools, .. } => {
                    drop(tools.tools);
                    if let Ok(pool) = Arc::try_unwrap(tools.pool) {
                        pool.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    }
}

async fn blocking<T: Send + 'static, E: Send + 'static>(
    job: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(job)
        .await
        .expect("model loading panicked")
}
