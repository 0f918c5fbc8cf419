//! The in-process planner: a GGUF model run by llama.cpp (`llama-cpp-2`).
//!
//! Two things make a 0.5B model usable as a planner on two cores:
//!
//! - **Grammar-constrained decoding.** Left alone, small models write tool
//!   calls as loose JSON text and pick a tool even for small talk. Every
//!   decision is decoded under [`grammar::tool_choice_grammar`], which only
//!   admits `{"name": <tool or "say">, "arguments": <matching object>}`, so
//!   the output always parses and "say" is always on offer. With no tools
//!   at all there is nothing to decide: the planner asks for plain text
//!   ([`LocalLlm::complete`]), which starts speaking ~5× sooner than a
//!   `say` decision (`cargo bench --bench llm`).
//! - **Prefix KV-cache reuse.** The system prompt and tool schemas are the
//!   same on every turn and are most of the prompt. The context keeps the
//!   tokens it has evaluated; a new request drops only what follows the
//!   longest common prefix and evaluates just the new suffix. A follow-up
//!   turn reuses the whole previous conversation, including the model's own
//!   decision.
//!
//! The prompt is Qwen2.5's ChatML with its tool layout, written by hand so
//! that past decisions are rendered exactly as the grammar makes the model
//! write them (which keeps the cache valid across turns).

use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use serde_json::json;

use super::chat::{ChatMessage, Decision, ToolChoice, ToolSpec, SAY};
use super::grammar::{self, SayStream};
use super::prefix_store::PrefixStore;
use super::LlmError;
use crate::first_audio::FirstAudio;

/// The system prompt when the conversation brings none.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful voice assistant. Your words are spoken aloud: keep answers short.";

/// How to run the model.
#[derive(Debug, Clone)]
pub struct LocalLlmOptions {
    /// CPU threads for generation and prompt evaluation.
    pub threads: usize,
    /// Context window in tokens: prompt plus output must fit.
    pub context_len: u32,
    /// Prompt tokens evaluated per llama.cpp batch.
    pub batch: u32,
    /// Sampled output tokens per request at most (text a grammar forces
    /// comes on top); a decision cut short is an error.
    pub max_tokens: usize,
    /// Keep the evaluated prompt in the KV cache and reuse its longest
    /// common prefix with the next request. Off only to measure without it.
    pub prefix_cache: bool,
    /// Feed the text the tool-choice grammar forces in batches instead of
    /// sampling it ([`grammar::ForcedText`]). Off only to measure without.
    pub forced_text: bool,
    /// A directory where the system turn's keys and values outlive the
    /// process ([`PrefixStore`]), so a cold context reads them instead of
    /// evaluating them. `None` (the default): every cold context evaluates.
    /// Needs `prefix_cache`.
    pub prefix_store: Option<PathBuf>,
}

impl Default for LocalLlmOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(8),
            context_len: 4096,
            batch: 512,
            max_tokens: 192,
            prefix_cache: true,
            forced_text: true,
            prefix_store: None,
        }
    }
}

/// What the last request cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: usize,
    /// Of those, how many were already in the KV cache.
    pub reused_tokens: usize,
    /// From the call to the first output token being chosen: prompt
    /// rendering, tokenizing, evaluating the uncached suffix, sampling.
    pub time_to_first_token: Duration,
    /// Output tokens (not counting the end-of-turn token).
    pub generated_tokens: usize,
    /// Output tokens the grammar forced, fed in batches instead of sampled
    /// (not in `generated_tokens`).
    pub forced_tokens: usize,
    /// From the first output token to the end of the output.
    pub generation_time: Duration,
    /// The output stopped at `max_tokens`, not at the model's end of turn:
    /// it is cut off, likely mid-sentence.
    pub hit_token_limit: bool,
}

impl GenerationStats {
    /// Output tokens per second after the first.
    pub fn tokens_per_second(&self) -> f64 {
        let secs = self.generation_time.as_secs_f64();
        if self.generated_tokens < 2 || secs == 0.0 {
            return 0.0;
        }
        (self.generated_tokens - 1) as f64 / secs
    }
}

/// A loaded model with one context (one conversation at a time) and the
/// tokens its KV cache holds. Blocking: run it on a thread of its own or in
/// `spawn_blocking`.
pub struct LocalLlm {
    model: &'static LlamaModel,
    ctx: LlamaContext<'static>,
    /// The tokens whose keys and values are in `ctx`'s cache, in order
    /// (sequence 0, positions 0..len).
    cached: Vec<LlamaToken>,
    options: LocalLlmOptions,
    stats: GenerationStats,
    store: Option<PrefixStore>,
}

// SAFETY: a llama.cpp context has no thread affinity; it must only not be
// used from two threads at once, which `&mut self` on every method that
// touches it guarantees. The model it borrows is `Send + Sync`.
unsafe impl Send for LocalLlm {}

impl std::fmt::Debug for LocalLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLlm")
            .field("cached_tokens", &self.cached.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// llama.cpp's backend may be initialised once per process.
pub(crate) fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlmError::Backend(format!("cannot initialise llama.cpp: {e}")))
}

/// Weights are loaded once per file and kept for the life of the process,
/// shared by every [`LocalLlm`] made from them (each has its own context
/// and cache). A process loads one or two planner models, so keeping them
/// is cheaper than reloading hundreds of megabytes per pipeline.
fn shared_model(path: &Path) -> Result<&'static LlamaModel, LlmError> {
    static MODELS: Mutex<Vec<(PathBuf, &'static LlamaModel)>> = Mutex::new(Vec::new());
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, model)) = models.iter().find(|(p, _)| *p == key) {
        return Ok(*model);
    }
    let model = LlamaModel::load_from_file(backend()?, &key, &LlamaModelParams::default())
        .map_err(|e| LlmError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let model: &'static LlamaModel = Box::leak(Box::new(model));
    models.push((key, model));
    Ok(model)
}

impl LocalLlm {
    /// Load a GGUF model (or reuse it if this process already has) and make
    /// a context for it.
    pub fn load(path: impl AsRef<Path>, options: LocalLlmOptions) -> Result<Self, LlmError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(LlmError::ModelMissing(path.to_path_buf()));
        }
        let model = shared_model(path)?;
        let threads = i32::try_from(options.threads.max(1)).unwrap_or(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(options.context_len))
            .with_n_batch(options.batch)
            .with_n_ubatch(options.batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .new_context(backend()?, params)
            .map_err(|e| LlmError::Load {
                path: path.to_path_buf(),
                message: format!("cannot create a context: {e}"),
            })?;
        let store = options
            .prefix_store
            .clone()
            .filter(|_| options.prefix_cache)
            .and_then(|dir| PrefixStore::new(dir, model, path, options.context_len));
        Ok(Self {
            model,
            ctx,
            cached: Vec::new(),
            options,
            stats: GenerationStats::default(),
            store,
        })
    }

    pub fn options(&self) -> &LocalLlmOptions {
        &self.options
    }

    /// Change the token limit (or switch prefix caching) for later requests.
    pub fn options_mut(&mut self) -> &mut LocalLlmOptions {
        &mut self.options
    }

    /// What the last request cost.
    pub fn last_stats(&self) -> &GenerationStats {
        &self.stats
    }

    /// How many tokens the KV cache holds.
    pub fn cached_tokens(&self) -> usize {
        self.cached.len()
    }

    /// Forget the KV cache: the next request evaluates its whole prompt.
    pub fn clear_cache(&mut self) {
        self.ctx.clear_kv_cache();
        self.cached.clear();
    }

    /// Tokens `text` makes for this model (special tokens like
    /// `<|im_start|>` parsed as such).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), true, true)
            .len()
    }

    /// Decide what to do with the conversation's last turn: call one of
    /// `tools` or say something. `on_text` receives the text of a `say`
    /// decision as it is written (nothing for a call). Greedy, so the same
    /// conversation gives the same decision.
    pub fn decide(
        &mut self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        mut on_text: impl FnMut(&str),
    ) -> Result<Decision, LlmError> {
        self.decide_with(messages, tools, ToolChoice::Auto, |t| {
            on_text(t);
            ControlFlow::Continue(())
        })
    }

    /// [`Self::decide`] with a [`ToolChoice`], and a callback that may stop
    /// the request ([`ControlFlow::Break`] gives [`LlmError::Cancelled`],
    /// e.g. on barge-in). The tools stay in the prompt whatever `choice`
    /// says, so the cached prefix stays valid.
    pub fn decide_with(
        &mut self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        choice: ToolChoice,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Decision, LlmError> {
        let started = Instant::now();
        let grammar = grammar::tool_choice_grammar(tools, choice)?;
        let prompt = render_prompt(messages, Some((tools, choice)));
        let forced = self
            .options
            .forced_text
            .then(|| grammar::ForcedText::new(tools, choice));
        let mut say = SayStream::default();
        let constraint = Constraint {
            grammar: &grammar,
            forced: forced.as_ref(),
        };
        let output = self.generate(started, &prompt, Some(constraint), &mut |piece: &str| {
            let text = say.push(piece);
            if text.is_empty() {
                ControlFlow::Continue(())
            } else {
                on_text(&text)
            }
        })?;
        Ok(grammar::parse_decision(&output, tools)?)
    }

    /// Plain text for the conversation (no tools, no grammar), streamed to
    /// `on_text`: the planner's answer when it has no tools to offer, and
    /// the served chat route's. Output cut off at `max_tokens` is returned
    /// as it is, with `last_stats().hit_token_limit` set.
    pub fn complete(
        &mut self,
        messages: &[ChatMessage],
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<String, LlmError> {
        let started = Instant::now();
        let prompt = render_prompt(messages, None);
        self.generate(started, &prompt, None, &mut on_text)
    }

    /// Evaluate `prompt` (reusing the cached prefix) and generate greedily
    /// until end of turn, under `constraint` if given.
    fn generate(
        &mut self,
        started: Instant,
        prompt: &str,
        constraint: Option<Constraint<'_>>,
        on_piece: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<String, LlmError> {
        let model = self.model;
        let vocab = model.vocab();
        let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
        let max_tokens = self.options.max_tokens;
        let context_len = self.ctx.n_ctx() as usize;
        if tokens.is_empty() || tokens.len() + max_tokens + grammar::FORCED_TOKENS_MAX > context_len
        {
            return Err(LlmError::ContextFull {
                prompt: tokens.len(),
                max_tokens,
                context_len,
            });
        }
        let mut sampler = match constraint {
            Some(c) => Some(
                LlamaSampler::grammar(self.model, c.grammar, "root")
                    .map_err(|e| LlmError::Backend(format!("grammar rejected: {e}")))?,
            ),
            None => None,
        };
        let forced = constraint.and_then(|c| c.forced);
        self.stats = GenerationStats {
            prompt_tokens: tokens.len(),
            ..GenerationStats::default()
        };

        let result = self.generate_inner(started, &tokens, sampler.as_mut(), forced, on_piece);
        if let Err(LlmError::Backend(_)) = &result {
            // The cache may be half-written: start the next request afresh.
            self.clear_cache();
        }
        result
    }

    fn generate_inner(
        &mut self,
        started: Instant,
        tokens: &[LlamaToken],
        mut grammar: Option<&mut LlamaSampler>,
        forced: Option<&grammar::ForcedText>,
        on_piece: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<String, LlmError> {
        if !self.options.prefix_cache {
            self.clear_cache();
        }
        // Keep the longest common prefix, but always evaluate at least the
        // last prompt token: its logits choose the first output token.
        let keep = common_prefix(&self.cached, tokens).min(tokens.len() - 1);
        if keep < self.cached.len() {
            let removed = self
                .ctx
                .clear_kv_cache_seq(Some(0), Some(keep as u32), None)
                .map_err(|e| LlmError::Backend(e.to_string()))?;
            if !removed {
                self.clear_cache();
            }
            self.cached.truncate(keep.min(self.cached.len()));
        }
        let n_batch = self.options.batch.max(1) as usize;
        let mut batch = LlamaBatch::new(n_batch, 1);
        // A cold context may read the system turn from disk instead.
        let reused = self.cached.len();
        let restored = if reused == 0 {
            self.restore_or_store_head(&mut batch, tokens)?
        } else {
            0
        };
        self.stats.reused_tokens = reused + restored;
        let keep = self.cached.len();

        let model = self.model;
        let vocab = model.vocab();
        let mut bytes = Vec::new();
        let mut output = String::new();
        let mut first_at = None;

        // A forced opening goes in with the prompt: one batch, not two.
        let mut suffix = tokens[keep..].to_vec();
        if let Some(text) = forced.and_then(|f| f.after("")) {
            let run = force(model, grammar.as_deref_mut(), text);
            self.stats.forced_tokens += run.len();
            suffix.extend_from_slice(&run);
            output.push_str(text);
        }
        self.evaluate(&mut batch, &suffix)?;
        if !output.is_empty() && on_piece(&output).is_break() {
            return Err(LlmError::Cancelled);
        }

        for _ in 0..self.options.max_tokens {
            // Text only one way can continue is fed in one batch instead of
            // being sampled token by token (see `grammar::ForcedText`).
            if let Some(text) = forced.and_then(|f| f.after(&output)) {
                let run = force(model, grammar.as_deref_mut(), text);
                self.evaluate(&mut batch, &run)?;
                self.stats.forced_tokens += run.len();
                output.push_str(text);
                if on_piece(text).is_break() {
                    return Err(LlmError::Cancelled);
                }
            }
            let logits_index = batch.n_tokens() - 1;
            let token = {
                let logits = self.ctx.get_logits_ith(logits_index);
                match grammar.as_deref_mut() {
                    Some(g) => sample_constrained(g, logits),
                    None => argmax(logits),
                }
            };
            let now = Instant::now();
            if first_at.is_none() {
                first_at = Some(now);
                self.stats.time_to_first_token = now - started;
            }
            if vocab.is_eog(token) {
                break;
            }
            if let Some(g) = grammar.as_deref_mut() {
                g.accept(token);
            }
            self.stats.generated_tokens += 1;
            bytes.extend(vocab.token_to_piece(token, false, None));
            let piece = take_utf8(&mut bytes);
            output.push_str(&piece);
            // Handed on before the next token is computed, not after: the
            // token that ends the first clause then reaches the voice one
            // decode (~20 ms of the 0.5B model on 2 cores) sooner. The
            // cache holds only decoded tokens, so stopping here leaves it
            // whole.
            if !piece.is_empty() && on_piece(&piece).is_break() {
                self.stats.generation_time = first_at.map(|t| t.elapsed()).unwrap_or_default();
                return Err(LlmError::Cancelled);
            }
            // Text already out may be a first piece the voice is making
            // now: the cores are its until then.
            if !output.is_empty() {
                FirstAudio::global().wait_blocking();
            }

            batch.clear();
            batch
                .add(token, self.cached.len() as i32, &[0], true)
                .map_err(|e| LlmError::Backend(e.to_string()))?;
            self.ctx
                .decode(&mut batch)
                .map_err(|e| LlmError::Backend(format!("generation: {e}")))?;
            self.cached.push(token);
        }
        self.stats.generation_time = first_at.map(|t| t.elapsed()).unwrap_or_default();
        let finished = self.stats.generated_tokens < self.options.max_tokens;
        self.stats.hit_token_limit = !finished;
        if grammar.is_some() && !finished {
            return Err(LlmError::TokenLimit {
                max_tokens: self.options.max_tokens,
                output,
            });
        }
        Ok(output)
    }
}

/// What a grammar-constrained request decodes under.
#[derive(Clone, Copy)]
struct Constraint<'a> {
    grammar: &'a str,
    forced: Option<&'a grammar::ForcedText>,
}

impl LocalLlm {
    /// On an empty context, put `prompt`'s system turn in the KV cache from
    /// the prefix store, or evaluate it and store it for the next process.
    /// Returns how many tokens were read rather than evaluated (0 without a
    /// store, or when the turn is short or new).
    fn restore_or_store_head(
        &mut self,
        batch: &mut LlamaBatch,
        prompt: &[LlamaToken],
    ) -> Result<usize, LlmError> {
        let Some(store) = self.store.clone() else {
            return Ok(0);
        };
        let Some(head) = store.head(prompt) else {
            return Ok(0);
        };
        let path = store.path(head);
        match store.load(&mut self.ctx, &path, head) {
            Ok(true) => {
                self.cached = head.to_vec();
                return Ok(head.len());
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "a stored system prompt could not be read; evaluating it again"
                );
                self.clear_cache();
            }
        }
        self.evaluate(batch, head)?;
        if let Err(e) = store.save(&self.ctx, &path, head) {
            // Only the next start is slower for it.
            tracing::warn!(file = %path.display(), error = %e, "cannot store the system prompt");
        }
        Ok(0)
    }

    /// Feed `tokens` to the context after what it holds, in batches, with
    /// logits for the last one only (it chooses the next token).
    fn evaluate(&mut self, batch: &mut LlamaBatch, tokens: &[LlamaToken]) -> Result<(), LlmError> {
        let n_batch = self.options.batch.max(1) as usize;
        for (c, chunk) in tokens.chunks(n_batch).enumerate() {
            batch.clear();
            let last_chunk = (c + 1) * n_batch >= tokens.len();
            for (i, &token) in chunk.iter().enumerate() {
                let pos = (self.cached.len() + i) as i32;
                let logits = last_chunk && i == chunk.len() - 1;
                batch
                    .add(token, pos, &[0], logits)
                    .map_err(|e| LlmError::Backend(e.to_string()))?;
            }
            self.ctx
                .decode(batch)
                .map_err(|e| LlmError::Backend(format!("prompt evaluation: {e}")))?;
            self.cached.extend_from_slice(chunk);
        }
        Ok(())
    }
}

/// The tokens of forced `text`, with the grammar advanced past them.
fn force(model: &LlamaModel, grammar: Option<&mut LlamaSampler>, text: &str) -> Vec<LlamaToken> {
    let run = model.vocab().tokenize(text.as_bytes(), false, false);
    if let Some(g) = grammar {
        for &token in &run {
            g.accept(token);
        }
    }
    run
}

/// The greedy choice among the tokens the grammar admits. Checks the
/// unconstrained best token first (llama.cpp's own shortcut): the grammar
/// usually admits it, and checking one token is far cheaper than masking
/// all ~150k.
fn sample_constrained(grammar: &mut LlamaSampler, logits: &[f32]) -> LlamaToken {
    let best = argmax(logits);
    let mut one = LlamaTokenDataArray::new(
        vec![LlamaTokenData::new(best, logits[best.0 as usize], 0.0)],
        false,
    );
    one.apply_sampler(grammar);
    if one.data[0].logit().is_finite() {
        return best;
    }
    let mut all = LlamaTokenDataArray::new(
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0))
            .collect(),
        false,
    );
    all.apply_sampler(grammar);
    all.data
        .iter()
        .filter(|d| d.logit().is_finite())
        .max_by(|a, b| a.logit().total_cmp(&b.logit()))
        .map(|d| d.id())
        // Nothing admitted: the grammar is complete; end the turn.
        .unwrap_or(best)
}

fn argmax(logits: &[f32]) -> LlamaToken {
    let (i, _) = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap_or((0, &0.0));
    LlamaToken(i as i32)
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The complete UTF-8 text at the front of `bytes`, leaving an unfinished
/// character (split across tokens) for the next piece.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let s = s.to_string();
            bytes.clear();
            s
        }
        Err(e) if e.error_len().is_none() => {
            let n = e.valid_up_to();
            let s = String::from_utf8_lossy(&bytes[..n]).into_owned();
            bytes.drain(..n);
            s
        }
        Err(_) => {
            let s = String::from_utf8_lossy(bytes).into_owned();
            bytes.clear();
            s
        }
    }
}

/// The model's prompt for `messages`: Qwen2.5 ChatML. With `tools` (even
/// none), the system turn lists them, with [`SAY`], in Qwen's tool layout,
/// and the assistant's past turns appear as the decisions the grammar makes
/// it write; without, it is a plain chat. Ends with the assistant's turn
/// opened. The choice only decides whether tool results end with a nudge
/// to call again or answer.
pub fn render_prompt(
    messages: &[ChatMessage],
    tools_and_choice: Option<(&[ToolSpec], ToolChoice)>,
) -> String {
    let tools = tools_and_choice.map(|(t, _)| t);
    let may_call = tools_and_choice.is_some_and(|(_, c)| c != ToolChoice::SayOnly);
    // The system messages that open the conversation make the system turn.
    // Later ones (a client's mid-conversation developer note, e.g.
    // Pipecat's prompt after an empty user turn) stay where they were sent,
    // as Qwen2.5's own template places them: folded into the system turn
    // they would change the prompt's first tokens, and the cached prefix of
    // the whole conversation would have to be evaluated again.
    let leading = messages
        .iter()
        .take_while(|m| matches!(m, ChatMessage::System { .. }))
        .count();
    let system: Vec<&str> = messages[..leading]
        .iter()
        .filter_map(|m| match m {
            ChatMessage::System { content } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    let mut out = String::from("<|im_start|>system\n");
    if system.is_empty() {
        out.push_str(DEFAULT_SYSTEM_PROMPT);
    } else {
        out.push_str(&system.join("\n\n"));
    }
    if let Some(tools) = tools {
        out.push_str(
            "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
        );
        for tool in tools {
            out.push('\n');
            out.push_str(&function_json(
                &tool.name,
                &tool.description,
                &tool.parameters,
            ));
        }
        out.push('\n');
        out.push_str(&function_json(
            SAY,
            "Say something to the user: greetings, small talk, questions none of the other \
             functions is for, and the answer once a function has returned what the user \
             asked for. One or two short spoken sentences.",
            &json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
        ));
        out.push_str(
            "\n</tools>\n\nEach reply is exactly one JSON object: \
             {\"name\": <function-name>, \"arguments\": <args-json-object>}. \
             Take argument values from the conversation; never invent them.",
        );
    }
    out.push_str("<|im_end|>\n");

    let mut in_tool_results = false;
    for message in &messages[leading..] {
        let is_result = matches!(message, ChatMessage::ToolResult { .. });
        if in_tool_results && !is_result {
            out.push_str("<|im_end|>\n");
        }
        match message {
            ChatMessage::System { content } => {
                out.push_str("<|im_start|>system\n");
                out.push_str(content);
                out.push_str("<|im_end|>\n");
            }
            ChatMessage::User { content } => {
                out.push_str("<|im_start|>user\n");
                out.push_str(content);
                out.push_str("<|im_end|>\n");
            }
            ChatMessage::Assistant { content } => {
                out.push_str("<|im_start|>assistant\n");
                if tools.is_some() {
                    out.push_str(&grammar::render_decision(SAY, &json!({ "text": content })));
                } else {
                    out.push_str(content);
                }
                out.push_str("<|im_end|>\n");
            }
            ChatMessage::ToolCall(call) => {
                out.push_str("<|im_start|>assistant\n");
                out.push_str(&grammar::render_decision(&call.name, &call.arguments));
                out.push_str("<|im_end|>\n");
            }
            ChatMessage::ToolResult { content, .. } => {
                // Qwen's layout: consecutive results share one user turn.
                out.push_str(if in_tool_results {
                    "\n<tool_response>\n"
                } else {
                    "<|im_start|>user\n<tool_response>\n"
                });
                out.push_str(content);
                out.push_str("\n</tool_response>");
            }
        }
        in_tool_results = is_result;
    }
    if in_tool_results {
        // When another call is allowed, small models otherwise answer a
        // two-part question after its first part (measured on the 1.5B).
        // Words-only requests get no nudge: it made the 0.5B say it had no
        // information. It sits at the very end, so the cached prefix holds.
        if may_call {
            out.push_str(AFTER_TOOL_RESULTS);
        }
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

/// Appended after the tool results that end a prompt.
const AFTER_TOOL_RESULTS: &str =
    "\nIf the user asked something this result does not cover yet, call the \
     function for that part now. Otherwise say the answer to the user in one or two short \
     sentences.";

fn function_json(name: &str, description: &str, parameters: &serde_json::Value) -> String {
    json!({
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_system_message_stays_in_place_and_keeps_the_prefix() {
        let opening = vec![
            ChatMessage::system("Be brief."),
            ChatMessage::system("Use the tools."),
            ChatMessage::user("Hello?"),
        ];
        let mut later = opening.clone();
        later.push(ChatMessage::assistant("Hi."));
        later.push(ChatMessage::system("The user said nothing; ask again."));

        for tools in [None, Some((&[][..], ToolChoice::Auto))] {
            let first = render_prompt(&opening, tools);
            let second = render_prompt(&later, tools);
            // The opening system messages make one system turn, in order.
            assert!(first.starts_with("<|im_start|>system\nBe brief.\n\nUse the tools."));
            // The later note is its own system turn after the assistant's,
            // and everything before it is the first prompt unchanged (less
            // the opened assistant turn), so the cache holds.
            let common = first.trim_end_matches("<|im_start|>assistant\n");
            assert!(second.starts_with(common), "{second}");
            assert!(second.ends_with(
                "<|im_end|>\n<|im_start|>system\nThe user said nothing; ask again.<|im_end|>\n\
                 <|im_start|>assistant\n"
            ));
            assert_eq!(second.matches("<|im_start|>system").count(), 2);
        }
    }
}
