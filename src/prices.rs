//! A pipeline's `[prices]` table and the cost of a turn under it.
//!
//! API providers bill by the token, the minute of audio and the character;
//! each stage counts what it consumed in those units ([`Usage`]), and the
//! spec says what a unit costs. No table (a local pipeline) means the
//! pipeline costs nothing to run per turn, shown as "local".

use serde::{Deserialize, Serialize};

use crate::frame::Usage;

/// USD list prices for the units a pipeline's API stages consume. Every
/// field defaults to 0 (a unit the pipeline's provider does not bill).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Per 1M text tokens a model reads (planner prompt, realtime text in).
    #[serde(default)]
    pub input_text_per_1m_tokens: f64,
    /// Per 1M cached input text tokens (a prompt cache's hit). Unset: they
    /// cost what other input tokens cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_text_per_1m_tokens: Option<f64>,
    /// Per 1M text tokens a model writes.
    #[serde(default)]
    pub output_text_per_1m_tokens: f64,
    /// Per 1M audio tokens a realtime model hears.
    #[serde(default)]
    pub input_audio_per_1m_tokens: f64,
    /// Per 1M cached input audio tokens. Unset: the input audio price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_audio_per_1m_tokens: Option<f64>,
    /// Per 1M audio tokens a realtime model speaks.
    #[serde(default)]
    pub output_audio_per_1m_tokens: f64,
    /// Per minute of speech sent to speech-to-text.
    #[serde(default)]
    pub transcription_per_minute: f64,
    /// Per 1M characters of text sent to text-to-speech.
    #[serde(default)]
    pub speech_per_1m_characters: f64,
    /// Per minute of speech text-to-speech produced (models billed by the
    /// audio they write, not the text they read).
    #[serde(default)]
    pub speech_per_minute: f64,
}

impl Prices {
    /// Each price the table sets, with its field name, for validation and
    /// reports.
    pub fn fields(&self) -> Vec<(&'static str, f64)> {
        let cached = [
            (
                "cached_input_text_per_1m_tokens",
                self.cached_input_text_per_1m_tokens,
            ),
            (
                "cached_input_audio_per_1m_tokens",
                self.cached_input_audio_per_1m_tokens,
            ),
        ];
        let mut fields = vec![
            ("input_text_per_1m_tokens", self.input_text_per_1m_tokens),
            ("output_text_per_1m_tokens", self.output_text_per_1m_tokens),
            ("input_audio_per_1m_tokens", self.input_audio_per_1m_tokens),
            (
                "output_audio_per_1m_tokens",
                self.output_audio_per_1m_tokens,
            ),
            ("transcription_per_minute", self.transcription_per_minute),
            ("speech_per_1m_characters", self.speech_per_1m_characters),
            ("speech_per_minute", self.speech_per_minute),
        ];
        fields.extend(
            cached
                .into_iter()
                .filter_map(|(field, price)| price.map(|p| (field, p))),
        );
        fields
    }

    /// The fields that are not a usable price: (field, why).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        self.fields()
            .into_iter()
            .filter_map(|(field, price)| {
                if !price.is_finite() {
                    Some((
                        field,
                        format!("must be a number of US dollars, got {price}"),
                    ))
                } else if price < 0.0 {
                    Some((field, format!("must not be negative, got {price}")))
                } else {
                    None
                }
            })
            .collect()
    }

    /// What `usage` costs, in US dollars.
    pub fn cost(&self, usage: &Usage) -> f64 {
        self.parts(usage).iter().map(|(_, usd)| usd).sum()
    }

    /// What `usage` costs, in US dollars, split by what is billed: the
    /// language model's text tokens, a realtime model's audio tokens,
    /// transcription, and speech (characters and minutes).
    pub fn parts(&self, usage: &Usage) -> [(&'static str, f64); 4] {
        let per_1m = |count: u64, price: f64| count as f64 * price / 1e6;
        // Input tokens at the input price, less the cached ones (counted in
        // the input, as OpenAI counts them) at the cached price.
        let input = |all: u64, cached: u64, price: f64, cached_price: Option<f64>| {
            let cached = cached.min(all);
            per_1m(all - cached, price) + per_1m(cached, cached_price.unwrap_or(price))
        };
        [
            (
                COST_PARTS[0],
                input(
                    usage.input_text_tokens,
                    usage.cached_input_text_tokens,
                    self.input_text_per_1m_tokens,
                    self.cached_input_text_per_1m_tokens,
                ) + per_1m(usage.output_text_tokens, self.output_text_per_1m_tokens),
            ),
            (
                COST_PARTS[1],
                input(
                    usage.input_audio_tokens,
                    usage.cached_input_audio_tokens,
                    self.input_audio_per_1m_tokens,
                    self.cached_input_audio_per_1m_tokens,
                ) + per_1m(usage.output_audio_tokens, self.output_audio_per_1m_tokens),
            ),
            (
                COST_PARTS[2],
                usage.transcribed_seconds / 60.0 * self.transcription_per_minute,
            ),
            (
                COST_PARTS[3],
                per_1m(usage.spoken_characters, self.speech_per_1m_characters)
                    + usage.spoken_seconds / 60.0 * self.speech_per_minute,
            ),
        ]
    }
}

/// The names of [`Prices::parts`], in order.
pub const COST_PARTS: [&str; 4] = ["text tokens", "audio tokens", "transcription", "speech"];

/// The estimated cost of a turn under a pipeline's prices, `None` for a
/// pipeline with no `[prices]` table (local: nothing billed).
pub fn turn_cost(prices: Option<&Prices>, usage: &Usage) -> Option<f64> {
    prices.map(|p| p.cost(usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn a_chained_turn_costs_its_tokens_minutes_and_characters() {
        // gpt-4.1-mini at $0.40 / $1.60 per 1M tokens, transcription at
        // $0.006 a minute, speech at $0.60 per 1M characters and $0.015 a
        // minute.
        let prices = Prices {
            input_text_per_1m_tokens: 0.40,
            output_text_per_1m_tokens: 1.60,
            transcription_per_minute: 0.006,
            speech_per_1m_characters: 0.60,
            speech_per_minute: 0.015,
            ..Prices::default()
        };
        let usage = Usage {
            input_text_tokens: 2_000, // 2000 × 0.40 / 1e6 = 0.0008
            output_text_tokens: 50,   //   50 × 1.60 / 1e6 = 0.00008
            transcribed_seconds: 3.0, // 3 / 60 × 0.006   = 0.0003
            spoken_characters: 100,   //  100 × 0.60 / 1e6 = 0.00006
            spoken_seconds: 6.0,      // 6 / 60 × 0.015   = 0.0015
            ..Usage::default()
        };
        assert!(
            close(prices.cost(&usage), 0.00274),
            "{}",
            prices.cost(&usage)
        );
    }

    #[test]
    fn a_turns_cost_splits_into_what_is_billed() {
        let prices = Prices {
            input_text_per_1m_tokens: 0.40,
            output_text_per_1m_tokens: 1.60,
            transcription_per_minute: 0.006,
            speech_per_1m_characters: 0.60,
            speech_per_minute: 0.015,
            ..Prices::default()
        };
        let usage = Usage {
            input_text_tokens: 2_000,
            output_text_tokens: 50,
            transcribed_seconds: 3.0,
            spoken_characters: 100,
            spoken_seconds: 6.0,
            ..Usage::default()
        };
        let parts = prices.parts(&usage);
        let want = [0.00088, 0.0, 0.0003, 0.00156]; // hand-added from the test above
        for ((name, usd), (expected_name, expected)) in
            parts.iter().zip(COST_PARTS.iter().zip(want))
        {
            assert_eq!(name, expected_name);
            assert!(close(*usd, expected), "{name}: {usd}");
        }
        assert!(close(parts.iter().map(|p| p.1).sum(), prices.cost(&usage)));
    }

    #[test]
    fn a_realtime_turn_prices_text_and_audio_tokens_apart() {
        // gpt-realtime: text $4 / $16, audio $32 / $64 per 1M tokens.
        let prices = Prices {
            input_text_per_1m_tokens: 4.0,
            output_text_per_1m_tokens: 16.0,
            input_audio_per_1m_tokens: 32.0,
            output_audio_per_1m_tokens: 64.0,
            ..Prices::default()
        };
        let usage = Usage {
            input_text_tokens: 1_000, // 0.004
            output_text_tokens: 30,   // 0.00048
            input_audio_tokens: 30,   // 0.00096
            output_audio_tokens: 100, // 0.0064
            ..Usage::default()
        };
        assert!(
            close(prices.cost(&usage), 0.01184),
            "{}",
            prices.cost(&usage)
        );
    }

    #[test]
    fn cached_input_costs_the_cached_price_or_the_input_price_if_unset() {
        // gpt-4.1-mini: $0.40 input, $0.10 cached input per 1M tokens.
        let mut prices = Prices {
            input_text_per_1m_tokens: 0.40,
            cached_input_text_per_1m_tokens: Some(0.10),
            input_audio_per_1m_tokens: 32.0,
            cached_input_audio_per_1m_tokens: Some(0.40),
            ..Prices::default()
        };
        let usage = Usage {
            input_text_tokens: 3_000,        // 1000 × 0.40 / 1e6 = 0.0004
            cached_input_text_tokens: 2_000, // 2000 × 0.10 / 1e6 = 0.0002
            input_audio_tokens: 100,         //   50 × 32 / 1e6   = 0.0016
            cached_input_audio_tokens: 50,   //   50 × 0.40 / 1e6 = 0.00002
            ..Usage::default()
        };
        let parts = prices.parts(&usage);
        assert!(close(parts[0].1, 0.0006), "{parts:?}");
        assert!(close(parts[1].1, 0.00162), "{parts:?}");
        // Unset: cached tokens cost what the rest of the input costs.
        prices.cached_input_text_per_1m_tokens = None;
        assert!(close(prices.parts(&usage)[0].1, 0.0012));
        // A count above the input (a server's mistake) is capped.
        let odd = Usage {
            input_text_tokens: 10,
            cached_input_text_tokens: 50,
            ..Usage::default()
        };
        assert!(close(prices.parts(&odd)[0].1, 10.0 * 0.40 / 1e6));
    }

    #[test]
    fn no_table_is_local_and_zero_usage_costs_nothing() {
        let usage = Usage {
            input_text_tokens: 500,
            ..Usage::default()
        };
        assert_eq!(turn_cost(None, &usage), None);
        let prices = Prices {
            input_text_per_1m_tokens: 4.0,
            ..Prices::default()
        };
        assert_eq!(turn_cost(Some(&prices), &Usage::default()), Some(0.0));
    }

    #[test]
    fn negative_and_non_finite_prices_are_named() {
        let prices = Prices {
            input_text_per_1m_tokens: -1.0,
            speech_per_minute: f64::NAN,
            output_text_per_1m_tokens: 2.0,
            cached_input_text_per_1m_tokens: Some(-0.1),
            ..Prices::default()
        };
        let problems = prices.problems();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "input_text_per_1m_tokens",
                "speech_per_minute",
                "cached_input_text_per_1m_tokens"
            ]
        );
        assert!(problems[0].1.contains("negative"), "{problems:?}");
    }
}
