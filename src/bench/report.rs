//! The bench's results per pipeline: a summary of every turn, written as a
//! markdown table (`report.md`) and JSON (`report.json`, summaries and
//! every turn).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::barge::Outcome;
use super::metrics::{mean_usage, percentile, ToolScore, WordErrors};
use super::run::TurnResult;
use crate::frame::Usage;
use crate::prices::Prices;

/// Latency percentiles in ms (nearest rank, see [`percentile`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

impl Percentiles {
    pub fn of(values: &[f64]) -> Self {
        Self {
            p50: percentile(values, 50.0),
            p90: percentile(values, 90.0),
            p99: percentile(values, 99.0),
        }
    }
}

/// One pipeline's turns, summed up.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// The spec's `name`.
    pub pipeline: String,
    /// The spec file given to `--pipelines`.
    pub spec: String,
    pub turns: usize,
    /// Turns whose call failed or whose stages reported an error.
    pub errors: usize,
    /// Turns answered aloud with every fact present.
    pub successes: usize,
    pub voice_to_voice_ms: Percentiles,
    /// Every turn's voice-to-voice latency, sorted (for the CDF).
    pub voice_to_voice_all_ms: Vec<f64>,
    /// p50 of each stage's first output after the end of speech.
    pub stage_first_output_p50_ms: BTreeMap<String, f64>,
    /// Corpus WER: all edits over all reference words.
    pub wer: f64,
    pub word_errors: WordErrors,
    pub tool_precision: Option<f64>,
    pub tool_recall: Option<f64>,
    pub tools: ToolScore,
    /// CPU seconds per turn: each call's own when calls ran one at a time;
    /// with `--concurrency` above 1 the calls overlap, so it is the
    /// process's CPU over the whole run (hearing back included) per turn.
    pub cpu_s_per_turn: f64,
    pub peak_rss_mib: f64,
    /// Barge-in reaction times (`--barge-in`), over the attempts parlor
    /// reacted to.
    pub barge_in_ms: Percentiles,
    /// Each barge-in attempt's outcome, counted (empty without
    /// `--barge-in`).
    pub barge_in_outcomes: BTreeMap<Outcome, usize>,
    /// What a turn consumed on average: tokens, seconds of audio,
    /// characters (local stages count them too).
    pub usage_per_turn: Usage,
    /// The spec's `[prices]`; `None` for a local pipeline.
    pub prices: Option<Prices>,
    /// Estimated USD per turn: the mean of each turn's usage priced by
    /// `prices`; 0 for a local pipeline (nothing billed).
    pub cost_per_turn_usd: f64,
    /// The same split by what is billed ([`crate::prices::COST_PARTS`]); empty for a
    /// local pipeline.
    pub cost_parts_usd: BTreeMap<String, f64>,
    /// With `--price-as`: the mean turn priced at that spec's prices
    /// instead, split the same way (what these stages would cost as API
    /// calls at those list prices).
    pub cost_parts_at_reference_usd: Option<BTreeMap<String, f64>>,
    pub results: Vec<TurnResult>,
}

impl PipelineReport {
    pub fn new(pipeline: String, spec: String, results: Vec<TurnResult>) -> Self {
        let mut v2v: Vec<f64> = results.iter().filter_map(|r| r.voice_to_voice_ms).collect();
        v2v.sort_by(f64::total_cmp);
        let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut word_errors = WordErrors::default();
        let mut tools = ToolScore::default();
        for r in &results {
            for (stage, ms) in &r.stage_first_output_ms {
                stages.entry(stage.clone()).or_default().push(*ms);
            }
            word_errors.add(r.word_errors);
            tools.add(r.tools);
        }
        let turns = results.len();
        let mut barge_in_outcomes = BTreeMap::new();
        let mut reactions = Vec::new();
        for sample in results.iter().filter_map(|r| r.barge_in.as_ref()) {
            *barge_in_outcomes.entry(sample.outcome).or_default() += 1;
            reactions.extend(sample.reaction_ms);
        }
        Self {
            pipeline,
            spec,
            turns,
            errors: results.iter().filter(|r| r.error.is_some()).count(),
            successes: results.iter().filter(|r| r.success).count(),
            voice_to_voice_ms: Percentiles::of(&v2v),
            voice_to_voice_all_ms: v2v,
            stage_first_output_p50_ms: stages
                .into_iter()
                .filter_map(|(s, v)| Some((s, percentile(&v, 50.0)?)))
                .collect(),
            wer: word_errors.rate(),
            word_errors,
            tool_precision: tools.precision(),
            tool_recall: tools.recall(),
            tools,
            cpu_s_per_turn: results.iter().map(|r| r.cpu_s).sum::<f64>() / turns.max(1) as f64,
            peak_rss_mib: results.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max),
            barge_in_ms: Percentiles::of(&reactions),
            barge_in_outcomes,
            usage_per_turn: mean_usage(&results.iter().map(|r| r.usage).collect::<Vec<_>>()),
            prices: None,
            cost_per_turn_usd: 0.0,
            cost_parts_usd: BTreeMap::new(),
            cost_parts_at_reference_usd: None,
            results,
        }
    }

    /// Price the turns with the spec's `[prices]` (none: a local
    /// pipeline, which costs nothing per turn).
    pub fn priced(mut self, prices: Option<Prices>) -> Self {
        self.prices = prices;
        self.cost_parts_usd = prices.map(|p| self.mean_parts(&p)).unwrap_or_default();
        self.cost_per_turn_usd = match &prices {
            Some(p) => {
                self.results.iter().map(|r| p.cost(&r.usage)).sum::<f64>()
                    / self.turns.max(1) as f64
            }
            None => 0.0,
        };
        self
    }

    /// Also price the mean turn at `reference` (`--price-as`).
    pub fn priced_also_at(mut self, reference: Option<&Prices>) -> Self {
        self.cost_parts_at_reference_usd = reference.map(|p| self.mean_parts(p));
        self
    }

    /// Each part of [`Prices::parts`], averaged over the turns.
    fn mean_parts(&self, prices: &Prices) -> BTreeMap<String, f64> {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for r in &self.results {
            for (part, usd) in prices.parts(&r.usage) {
                *sums.entry(part.to_string()).or_default() += usd;
            }
        }
        let turns = self.turns.max(1) as f64;
        sums.values_mut().for_each(|v| *v /= turns);
        sums
    }

    /// The cost column: dollars, or "local" when nothing is billed.
    fn cost_label(&self) -> String {
        match self.prices {
            Some(_) => format!("${:.4}", self.cost_per_turn_usd),
            None => "local".into(),
        }
    }

    /// Correct the CPU figure for a run of `concurrency` calls at once that
    /// used `run_cpu_s` in all: overlapping calls each count the others'.
    pub fn ran_at(mut self, concurrency: usize, run_cpu_s: f64) -> Self {
        if concurrency > 1 {
            self.cpu_s_per_turn = run_cpu_s / self.turns.max(1) as f64;
        }
        self
    }
}

/// The whole run, as written to report.json.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tasks: usize,
    pub repeat: usize,
    /// Calls at once (`--concurrency`).
    pub concurrency: usize,
    /// `--price-as`: the spec whose `[prices]` every pipeline's mean turn
    /// is also priced at.
    pub reference_prices: Option<ReferencePrices>,
    pub pipelines: Vec<PipelineReport>,
}

/// The prices of `--price-as SPEC`.
#[derive(Debug, Clone, Serialize)]
pub struct ReferencePrices {
    /// The spec's `name`.
    pub name: String,
    pub prices: Prices,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

fn humantime(d: std::time::Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn ratio(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}"))
}

impl Report {
    /// One table, a row per pipeline, then each pipeline's stages.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# parlor bench\n\n{} tasks × {} round(s), {} call(s) at once, live calls at real-time pace. Latencies in ms (nearest-rank percentiles); voice to voice is the end of the caller's speech (the VAD's decision) to the first reply audio sent.{}\n",
            self.tasks,
            self.repeat,
            self.concurrency,
            if self.concurrency > 1 {
                " CPU s/turn is the process's CPU over the run per turn (calls overlap)."
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "| pipeline | turns | success | v2v p50 | v2v p90 | v2v p99 | barge-in p50 | barge-in p90 | WER | tool precision | tool recall | CPU s/turn | peak RSS MiB | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for p in &self.pipelines {
            let _ = writeln!(
                out,
                "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {:.2} | {:.0} | {} |",
                p.pipeline,
                p.turns,
                p.successes,
                p.turns,
                ms(p.voice_to_voice_ms.p50),
                ms(p.voice_to_voice_ms.p90),
                ms(p.voice_to_voice_ms.p99),
                ms(p.barge_in_ms.p50),
                ms(p.barge_in_ms.p90),
                p.wer,
                ratio(p.tool_precision),
                ratio(p.tool_recall),
                p.cpu_s_per_turn,
                p.peak_rss_mib,
                p.errors
            );
        }
        let _ = writeln!(
            out,
            "\nUsage per turn (mean) and estimated cost per turn: tokens a language model read and wrote (text; audio for a realtime model), seconds of speech transcribed, characters and seconds of speech synthesised, priced by the spec's `[prices]` (list prices; a pipeline with none is local and billed nothing). Cached input tokens (a prompt cache's hits; for a local model, its reused prefix) are part of the input and are priced at the cached rate where the table has one.{}\n\n| pipeline | text tokens in | of which cached | text tokens out | audio tokens in | audio tokens out | STT s | TTS chars | TTS s | est. cost/turn (USD) |{}\n|---|---|---|---|---|---|---|---|---|---|{}",
            self.reference_prices.as_ref().map_or(String::new(), |r| format!(
                " The last column prices the same mean turn at {}'s list prices (`--price-as`).",
                r.name
            )),
            self.reference_prices
                .as_ref()
                .map_or(String::new(), |r| format!(" at {} prices |", r.name)),
            if self.reference_prices.is_some() { "---|" } else { "" },
        );
        for p in &self.pipelines {
            let u = &p.usage_per_turn;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.1} | {} |{}",
                p.pipeline,
                u.input_text_tokens,
                u.cached_input_text_tokens,
                u.output_text_tokens,
                u.input_audio_tokens,
                u.output_audio_tokens,
                u.transcribed_seconds,
                u.spoken_characters,
                u.spoken_seconds,
                p.cost_label(),
                p.cost_parts_at_reference_usd
                    .as_ref()
                    .map_or(String::new(), |parts| format!(
                        " ${:.4} |",
                        parts.values().sum::<f64>()
                    )),
            );
        }
        for p in &self.pipelines {
            let _ = writeln!(
                out,
                "\n## {} ({})\n\n| stage | first output after end of speech, p50 (ms) |\n|---|---|",
                p.pipeline, p.spec
            );
            for (stage, ms) in &p.stage_first_output_p50_ms {
                let _ = writeln!(out, "| {stage} | {ms:.0} |");
            }
            if !p.barge_in_outcomes.is_empty() {
                let counts: Vec<String> = p
                    .barge_in_outcomes
                    .iter()
                    .map(|(outcome, n)| format!("{} {n}", outcome.label()))
                    .collect();
                let _ = writeln!(
                    out,
                    "\nBarge-in ({} after the first reply audio the caller talks over it; reaction is its first frame sent to the `barge_in` event; a reply already over is no sample): {}.",
                    humantime(super::barge::BARGE_IN_AFTER),
                    counts.join(", ")
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(task: &str, v2v: Option<f64>, success: bool) -> TurnResult {
        TurnResult {
            task: task.into(),
            round: 0,
            speech: "piper@1".into(),
            noise_snr_db: None,
            transcript: String::new(),
            word_errors: WordErrors {
                edits: 1,
                reference_words: 4,
            },
            calls: Vec::new(),
            tools: ToolScore {
                matched: 1,
                made: 2,
                expected: 1,
            },
            reply: String::new(),
            heard: String::new(),
            facts: Vec::new(),
            success,
            voice_to_voice_ms: v2v,
            stage_first_output_ms: [("stt".to_string(), 100.0)].into(),
            usage: Usage {
                input_text_tokens: 1_000,
                output_text_tokens: 20,
                transcribed_seconds: 2.0,
                ..Usage::default()
            },
            cpu_s: 1.0,
            peak_rss_mib: 10.0,
            error: None,
            barge_in: None,
        }
    }

    #[test]
    fn a_pipeline_summary_adds_up_its_turns() {
        let p = PipelineReport::new(
            "local".into(),
            "pipelines/local.toml".into(),
            vec![
                turn("a", Some(900.0), true),
                turn("b", Some(300.0), false),
                turn("c", None, false),
            ],
        );
        assert_eq!((p.turns, p.successes, p.errors), (3, 1, 0));
        assert_eq!(p.voice_to_voice_all_ms, [300.0, 900.0]);
        assert_eq!(p.voice_to_voice_ms.p50, Some(300.0));
        assert_eq!(p.wer, 0.25);
        assert_eq!((p.tool_precision, p.tool_recall), (Some(0.5), Some(1.0)));
        let md = Report {
            tasks: 3,
            repeat: 1,
            concurrency: 1,
            reference_prices: None,
            pipelines: vec![p],
        }
        .markdown();
        assert!(
            md.contains("| local | 3 | 1/3 | 300 | 900 | 900 | – | – | 0.250 | 0.50 | 1.00 |"),
            "{md}"
        );
        assert!(md.contains("| stt | 100 |"), "{md}");
        // No [prices]: local, and the usage is still shown.
        assert!(
            md.contains("| local | 1000 | 0 | 20 | 0 | 0 | 2.0 | 0 | 0.0 | local |"),
            "{md}"
        );
    }

    #[test]
    fn a_priced_pipeline_costs_the_mean_of_its_turns() {
        let mut turns = vec![turn("a", Some(900.0), true), turn("b", Some(300.0), true)];
        turns[1].usage.input_text_tokens = 3_000;
        let prices = Prices {
            input_text_per_1m_tokens: 0.40,
            output_text_per_1m_tokens: 1.60,
            transcription_per_minute: 0.006,
            ..Prices::default()
        };
        let p = PipelineReport::new("api".into(), "api.toml".into(), turns).priced(Some(prices));
        // a: 1000 × 0.40/1e6 + 20 × 1.60/1e6 + 2/60 × 0.006 = 0.000632
        // b: 3000 × 0.40/1e6 + 20 × 1.60/1e6 + 2/60 × 0.006 = 0.001432
        // mean 0.001032
        assert!(
            (p.cost_per_turn_usd - 0.001032).abs() < 1e-12,
            "{}",
            p.cost_per_turn_usd
        );
        assert_eq!(p.usage_per_turn.input_text_tokens, 2_000);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["prices"]["input_text_per_1m_tokens"], 0.40);
        assert_eq!(json["usage_per_turn"]["output_text_tokens"], 20);
        let md = Report {
            tasks: 2,
            repeat: 1,
            concurrency: 1,
            reference_prices: None,
            pipelines: vec![p],
        }
        .markdown();
        assert!(
            md.contains("| api | 2000 | 0 | 20 | 0 | 0 | 2.0 | 0 | 0.0 | $0.0010 |"),
            "{md}"
        );
    }

    #[test]
    fn a_local_pipeline_is_also_priced_at_the_reference_and_plotted() {
        let turns = vec![turn("a", Some(900.0), true), turn("b", Some(300.0), true)];
        let prices = Prices {
            input_text_per_1m_tokens: 0.40,
            transcription_per_minute: 0.006,
            ..Prices::default()
        };
        let p = PipelineReport::new("local".into(), "local.toml".into(), turns)
            .priced(None)
            .priced_also_at(Some(&prices));
        assert!(p.cost_parts_usd.is_empty());
        assert_eq!(p.cost_per_turn_usd, 0.0);
        // Each turn: 1000 × 0.40/1e6 = 0.0004 of text, 2/60 × 0.006 =
        // 0.0002 of transcription.
        let parts = p.cost_parts_at_reference_usd.clone().unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(parts["text tokens"], 0.0004), "{parts:?}");
        assert!(close(parts["transcription"], 0.0002), "{parts:?}");
        assert_eq!((parts["audio tokens"], parts["speech"]), (0.0, 0.0));
        let report = Report {
            tasks: 2,
            repeat: 1,
            concurrency: 1,
            reference_prices: Some(ReferencePrices {
                name: "openai-chained".into(),
                prices,
            }),
            pipelines: vec![p],
        };
        let md = report.markdown();
        assert!(
            md.contains("| est. cost/turn (USD) | at openai-chained prices |"),
            "{md}"
        );
        assert!(
            md.contains("| local | 1000 | 0 | 20 | 0 | 0 | 2.0 | 0 | 0.0 | local | $0.0006 |"),
            "{md}"
        );
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join(crate::bench::plots::COST);
        crate::bench::plots::cost(&svg, &report).unwrap();
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(svg.contains("local (not billed)"), "the x label");
        assert!(svg.contains("openai-chained"), "the caption");
        assert!(svg.contains("transcription"), "the legend");
    }

    #[test]
    fn barge_in_reactions_count_only_replies_that_were_stopped() {
        use crate::bench::barge::BargeInSample;
        let sample = |outcome, reaction_ms| BargeInSample {
            outcome,
            reaction_ms,
            error: None,
        };
        let mut turns = vec![
            turn("a", Some(900.0), true),
            turn("b", Some(300.0), true),
            turn("c", Some(300.0), true),
            turn("d", Some(300.0), true),
            turn("e", Some(300.0), true),
        ];
        turns[0].barge_in = Some(sample(Outcome::Reacted, Some(700.0)));
        turns[1].barge_in = Some(sample(Outcome::Reacted, Some(500.0)));
        turns[2].barge_in = Some(sample(Outcome::Reacted, Some(600.0)));
        turns[3].barge_in = Some(sample(Outcome::ReplyFinishedFirst, None));
        turns[4].barge_in = Some(sample(Outcome::Missed, None));
        let p = PipelineReport::new("local".into(), "local.toml".into(), turns);
        assert_eq!(p.barge_in_ms.p50, Some(600.0));
        assert_eq!(p.barge_in_ms.p90, Some(700.0));
        assert_eq!(
            p.barge_in_outcomes,
            [
                (Outcome::Reacted, 3),
                (Outcome::ReplyFinishedFirst, 1),
                (Outcome::Missed, 1)
            ]
            .into()
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["barge_in_outcomes"]["reply_finished_first"], 1);
        let md = Report {
            tasks: 5,
            repeat: 1,
            concurrency: 2,
            reference_prices: None,
            pipelines: vec![p],
        }
        .markdown();
        assert!(md.contains("| 300 | 900 | 900 | 600 | 700 |"), "{md}");
        assert!(md.contains("2 call(s) at once"), "{md}");
        assert!(
            md.contains("reacted 3, reply finished first 1, missed 1"),
            "{md}"
        );
    }
}
