//! The scores `parlor bench` gives a turn: word error rate, tool-call
//! precision and recall, fact presence, latency percentiles, and the mean
//! usage a cost per turn is priced from.
//!
//! Everything here is pure (text and numbers in, numbers out) so the unit
//! tests below check each against examples worked by hand.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::frame::Usage;

/// Text as Whisper and a reference transcript are compared:
///
/// 1. lowercase;
/// 2. separators inside numbers go: `1,042`, `1-0-4-2` and `10.42` read as
///    `1042` (Whisper writes a spoken order number any of these ways);
/// 3. every other character that is not a letter or digit becomes a space
///    (apostrophes vanish: `what's` is `whats`);
/// 4. the words `zero` to `nine` become digits, and a run of single digits joins into one number:
///    `one zero four two` and `1 0 4 2` are both `1042`.
///
/// Larger number words (`forty-two`) are kept as words: the references
/// are written the way Whisper writes numbers, in digits, and this stays
/// simple rather than complete.
pub fn normalize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut cleaned = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let digit_before = i > 0 && chars[i - 1].is_ascii_digit();
        let digit_after = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c.is_alphanumeric() {
            cleaned.push(c);
        } else if matches!(c, ',' | '-' | '.') && digit_before && digit_after {
            // A separator inside a number: drop it.
        } else if c == '\'' {
            // what's -> whats
        } else {
            cleaned.push(' ');
        }
    }
    let mut words: Vec<String> = Vec::new();
    let mut single_digits = false; // the last word is a run of single digits
    for word in cleaned.split_whitespace() {
        let word = digit_word(word).unwrap_or(word);
        let is_digit = word.len() == 1 && word.as_bytes()[0].is_ascii_digit();
        match words.last_mut() {
            Some(last) if is_digit && single_digits => last.push_str(word),
            _ => words.push(word.to_string()),
        }
        // A joined run ends at the first word that is not a single digit.
        single_digits = is_digit;
    }
    words
}

fn digit_word(word: &str) -> Option<&'static str> {
    Some(match word {
        "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        _ => return None,
    })
}

/// Word-level edit counts between a reference and a hypothesis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordErrors {
    /// Substitutions + deletions + insertions (the Levenshtein distance
    /// over words).
    pub edits: usize,
    /// Words in the reference.
    pub reference_words: usize,
}

impl WordErrors {
    /// Both texts are [`normalize`]d first.
    pub fn between(reference: &str, hypothesis: &str) -> Self {
        let r = normalize(reference);
        let h = normalize(hypothesis);
        // One row of the Levenshtein table at a time.
        let mut row: Vec<usize> = (0..=h.len()).collect();
        for (i, rw) in r.iter().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, hw) in h.iter().enumerate() {
                let substitute = diagonal + usize::from(rw != hw);
                diagonal = row[j + 1];
                row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
            }
        }
        Self {
            edits: row[h.len()],
            reference_words: r.len(),
        }
    }

    /// edits / reference words. It can pass 1 when the hypothesis has many
    /// extra words; an empty reference gives 0 for an empty hypothesis and
    /// 1 otherwise.
    pub fn rate(&self) -> f64 {
        match (self.reference_words, self.edits) {
            (0, 0) => 0.0,
            (0, _) => 1.0,
            (n, e) => e as f64 / n as f64,
        }
    }

    /// Sums counts, so a corpus WER weighs each turn by its length.
    pub fn add(&mut self, other: WordErrors) {
        self.edits += other.edits;
        self.reference_words += other.reference_words;
    }
}

/// The word error rate of `hypothesis` against `reference` (see [`WordErrors`]).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    WordErrors::between(reference, hypothesis).rate()
}

/// How an expected argument is checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ArgumentCheck {
    /// The value (a string, or a number written out) equals this, ignoring
    /// case and surrounding space.
    Equals(String),
    /// The value contains any of these, ignoring case.
    ContainsAny(Vec<String>),
}

impl ArgumentCheck {
    pub fn accepts(&self, value: &Value) -> bool {
        let text = match value {
            Value::String(s) => s.trim().to_lowercase(),
            Value::Null => return false,
            other => other.to_string().to_lowercase(),
        };
        match self {
            ArgumentCheck::Equals(want) => text == want.trim().to_lowercase(),
            ArgumentCheck::ContainsAny(any) => {
                any.iter().any(|w| text.contains(&w.trim().to_lowercase()))
            }
        }
    }
}

/// A tool call a task expects: the server, the tool, and the arguments
/// that matter (others may be anything).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCall {
    pub server: String,
    pub tool: String,
    #[serde(default)]
    pub arguments: BTreeMap<String, ArgumentCheck>,
}

/// A tool call the planner made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MadeCall {
    pub server: String,
    pub tool: String,
    pub arguments: Value,
}

impl ExpectedCall {
    pub fn matches(&self, call: &MadeCall) -> bool {
        self.server == call.server
            && self.tool == call.tool
            && self
                .arguments
                .iter()
                .all(|(name, check)| call.arguments.get(name).is_some_and(|v| check.accepts(v)))
    }
}

/// True positives among a turn's calls, and the counts they are out of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolScore {
    /// Made calls that matched an expected call (each expected call can be
    /// matched once: a repeated call counts against precision).
    pub matched: usize,
    pub made: usize,
    pub expected: usize,
}

impl ToolScore {
    /// Pairs each expected call with the first unused made call that
    /// matches it.
    pub fn score(expected: &[ExpectedCall], made: &[MadeCall]) -> Self {
        let mut used = vec![false; made.len()];
        let mut matched = 0;
        for want in expected {
            if let Some(i) = (0..made.len()).find(|&i| !used[i] && want.matches(&made[i])) {
                used[i] = true;
                matched += 1;
            }
        }
        Self {
            matched,
            made: made.len(),
            expected: expected.len(),
        }
    }

    /// matched / made; `None` when no call was made.
    pub fn precision(&self) -> Option<f64> {
        (self.made > 0).then(|| self.matched as f64 / self.made as f64)
    }

    /// matched / expected; `None` when no call was expected.
    pub fn recall(&self) -> Option<f64> {
        (self.expected > 0).then(|| self.matched as f64 / self.expected as f64)
    }

    /// Sums counts: precision and recall over many turns are micro-averages.
    pub fn add(&mut self, other: ToolScore) {
        self.matched += other.matched;
        self.made += other.made;
        self.expected += other.expected;
    }
}

/// A fact an answer must contain: any one of its spellings. Both are
/// [`normalize`]d, and a spelling is found when its words appear in order
/// with the first starting a word (so `28` finds `28th`, `378` finds
/// `$378.98`, `cancel` finds `cancelled`, but `shipped` does not find
/// `unshipped`).
pub type Fact = Vec<String>;

/// The usage of a mean turn: each count summed over `turns` and divided
/// by how many there are (so a mean token count may be fractional, and is
/// rounded to the nearest token). Zero for no turns.
pub fn mean_usage(turns: &[Usage]) -> Usage {
    let mut total = Usage::default();
    for u in turns {
        total += *u;
    }
    let n = turns.len().max(1) as f64;
    let mean = |count: u64| (count as f64 / n).round() as u64;
    Usage {
        input_text_tokens: mean(total.input_text_tokens),
        cached_input_text_tokens: mean(total.cached_input_text_tokens),
        cached_input_audio_tokens: mean(total.cached_input_audio_tokens),
        output_text_tokens: mean(total.output_text_tokens),
        input_audio_tokens: mean(total.input_audio_tokens),
        output_audio_tokens: mean(total.output_audio_tokens),
        transcribed_seconds: total.transcribed_seconds / n,
        spoken_characters: mean(total.spoken_characters),
        spoken_seconds: total.spoken_seconds / n,
    }
}

/// Which of `facts` `answer` contains, in order.
pub fn facts_present(answer: &str, facts: &[Fact]) -> Vec<bool> {
    let heard = format!(" {} ", normalize(answer).join(" "));
    facts
        .iter()
        .map(|spellings| {
            spellings.iter().any(|s| {
                let words = normalize(s).join(" ");
                !words.is_empty() && heard.contains(&format!(" {words}"))
            })
        })
        .collect()
}

/// The nearest-rank percentile `p` (0 to 100) of `values` (any order): the
/// smallest value with at least p% of the values at or below it, always one
/// of the values (no interpolation). `None` for no values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// How many times `base` `value` is (a load step's latency over the
/// 1-call step's): `None` when either is missing or `base` is not above 0.
pub fn ratio_to(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

/// The load ramp: 1, 2, 4, ... doubling while at most `max`, then `max`
/// itself if the doubling skipped it. Empty for 0.
pub fn doubling_steps(max: usize) -> Vec<usize> {
    let mut steps: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
        .take_while(|&n| n <= max)
        .collect();
    if steps.last().is_some_and(|&last| last < max) {
        steps.push(max);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalising_lowercases_strips_punctuation_and_joins_digits() {
        assert_eq!(
            normalize("Where is my order 1042?"),
            ["where", "is", "my", "order", "1042"]
        );
        assert_eq!(
            normalize("Where is my order one zero four two?"),
            ["where", "is", "my", "order", "1042"]
        );
        assert_eq!(
            normalize("order 1-0-4-2, please"),
            ["order", "1042", "please"]
        );
        assert_eq!(normalize("order 1 0 4 2"), ["order", "1042"]);
        assert_eq!(normalize("It's $1,042.50!"), ["its", "104250"]);
        assert_eq!(normalize("Hello,world"), ["hello", "world"]);
        // Two separate single digits in different places stay apart.
        assert_eq!(normalize("3 to 5 days"), ["3", "to", "5", "days"]);
        assert!(normalize(" ... ").is_empty());
    }

    #[test]
    fn wer_counts_substitutions_deletions_and_insertions() {
        // Identical after normalisation.
        assert_eq!(
            wer(
                "Where is my order 1042?",
                "where is my order one zero four two"
            ),
            0.0
        );
        // 1 substitution in 5 words.
        assert_eq!(wer("where is my order 1042", "where is my order 1043"), 0.2);
        // 1 deletion ("my") in 5 words.
        assert_eq!(wer("where is my order 1042", "where is order 1042"), 0.2);
        // 2 insertions in 2 words.
        assert_eq!(wer("hello there", "oh hello there friend"), 1.0);
        // Edits count, not positions: "a b c" -> "b c d" is 1 del + 1 ins.
        let e = WordErrors::between("a b c", "b c d");
        assert_eq!((e.edits, e.reference_words), (2, 3));
        // Many insertions push past 1.
        assert_eq!(wer("yes", "yes yes yes"), 2.0);
        assert_eq!(wer("", ""), 0.0);
        assert_eq!(wer("", "something"), 1.0);
        assert_eq!(wer("two words", ""), 1.0);
    }

    #[test]
    fn corpus_wer_weighs_turns_by_length() {
        let mut total = WordErrors::default();
        total.add(WordErrors::between("a b c d", "a b c x")); // 1 of 4
        total.add(WordErrors::between("e f", "")); // 2 of 2
        assert_eq!(total.rate(), 0.5); // 3 of 6, not the mean of 0.25 and 1
    }

    fn expected(server: &str, tool: &str, args: Value) -> ExpectedCall {
        ExpectedCall {
            server: server.into(),
            tool: tool.into(),
            arguments: serde_json::from_value(args).unwrap(),
        }
    }

    fn made(server: &str, tool: &str, args: Value) -> MadeCall {
        MadeCall {
            server: server.into(),
            tool: tool.into(),
            arguments: args,
        }
    }

    #[test]
    fn argument_checks() {
        let eq = ArgumentCheck::Equals("1042".into());
        assert!(eq.accepts(&json!(1042)));
        assert!(eq.accepts(&json!(" 1042 ")));
        assert!(!eq.accepts(&json!(10420)));
        assert!(!eq.accepts(&Value::Null));
        let any = ArgumentCheck::ContainsAny(vec!["Sunday".into(), "hours".into()]);
        assert!(any.accepts(&json!("store opening HOURS")));
        assert!(!any.accepts(&json!("returns")));
    }

    #[test]
    fn precision_and_recall_by_hand() {
        let want = [expected(
            "orders",
            "get_order",
            json!({"order_id": {"equals": "1042"}}),
        )];
        // The right call: 1/1, 1/1.
        let s = ToolScore::score(
            &want,
            &[made("orders", "get_order", json!({"order_id": 1042}))],
        );
        assert_eq!((s.precision(), s.recall()), (Some(1.0), Some(1.0)));
        // Right tool, wrong order, then the right call: 1 of 2 made, 1 of 1 expected.
        let s = ToolScore::score(
            &want,
            &[
                made("orders", "get_order", json!({"order_id": 1024})),
                made("orders", "get_order", json!({"order_id": 1042})),
            ],
        );
        assert_eq!((s.precision(), s.recall()), (Some(0.5), Some(1.0)));
        // The same call twice: the repeat is not a second match.
        let twice = made("orders", "get_order", json!({"order_id": "1042"}));
        let s = ToolScore::score(&want, &[twice.clone(), twice]);
        assert_eq!((s.matched, s.made, s.expected), (1, 2, 1));
        // Wrong server: nothing matches.
        let s = ToolScore::score(
            &want,
            &[made("knowledge", "get_order", json!({"order_id": 1042}))],
        );
        assert_eq!((s.precision(), s.recall()), (Some(0.0), Some(0.0)));
        // No call made, none expected: both undefined.
        let s = ToolScore::score(&[], &[]);
        assert_eq!((s.precision(), s.recall()), (None, None));
        // A missing key argument does not match; extra arguments do not matter.
        let want = [expected(
            "knowledge",
            "search_knowledge",
            json!({"query": {"contains_any": ["return"]}}),
        )];
        let s = ToolScore::score(
            &want,
            &[made("knowledge", "search_knowledge", json!({"limit": 3}))],
        );
        assert_eq!(s.matched, 0);
        let s = ToolScore::score(
            &want,
            &[made(
                "knowledge",
                "search_knowledge",
                json!({"query": "Return policy", "limit": 3}),
            )],
        );
        assert_eq!(s.matched, 1);
    }

    #[test]
    fn micro_averaged_tool_scores() {
        let mut total = ToolScore::default();
        total.add(ToolScore {
            matched: 1,
            made: 1,
            expected: 1,
        });
        total.add(ToolScore {
            matched: 0,
            made: 2,
            expected: 1,
        });
        total.add(ToolScore {
            matched: 0,
            made: 0,
            expected: 0,
        });
        assert_eq!(total.precision(), Some(1.0 / 3.0));
        assert_eq!(total.recall(), Some(0.5));
    }

    #[test]
    fn facts_are_found_by_normalised_words() {
        let facts: Vec<Fact> = vec![
            vec!["shipped".into(), "on its way".into()],
            vec!["28".into(), "twenty-eighth".into()],
        ];
        assert_eq!(
            facts_present(
                "Your order has shipped with UPS and arrives November 28th.",
                &facts
            ),
            [true, true] // a spelling matches the start of a word: "28" finds "28th"
        );
        assert_eq!(
            facts_present("It's on its way, arriving on the twenty-eighth.", &facts),
            [true, true]
        );
        // Words, not substrings of words: "unshipped" is not "shipped".
        assert_eq!(facts_present("It is unshipped.", &facts[..1]), [false]);
        // Prefixes of words count ("cancel" finds "cancelled").
        assert_eq!(
            facts_present("It was cancelled.", &[vec!["cancel".into()]]),
            [true]
        );
        // Numbers as Whisper writes them.
        assert_eq!(
            facts_present("That came to $378.98.", &[vec!["378".into()]]),
            [true]
        );
        assert!(facts_present("anything", &[]).is_empty());
    }

    #[test]
    fn mean_usage_by_hand() {
        let a = Usage {
            input_text_tokens: 1_000,
            output_text_tokens: 11,
            transcribed_seconds: 2.0,
            spoken_characters: 40,
            ..Usage::default()
        };
        let b = Usage {
            input_text_tokens: 3_000,
            output_text_tokens: 20,
            transcribed_seconds: 3.0,
            spoken_seconds: 5.0,
            ..Usage::default()
        };
        let mean = mean_usage(&[a, b]);
        assert_eq!(mean.input_text_tokens, 2_000);
        // 31 / 2 = 15.5 rounds to 16.
        assert_eq!(mean.output_text_tokens, 16);
        assert_eq!(mean.transcribed_seconds, 2.5);
        assert_eq!(mean.spoken_characters, 20);
        assert_eq!(mean.spoken_seconds, 2.5);
        assert_eq!(mean.input_audio_tokens, 0);
        assert_eq!(mean_usage(&[]), Usage::default());
    }

    #[test]
    fn nearest_rank_percentiles_by_hand() {
        let v = [15.0, 20.0, 35.0, 40.0, 50.0];
        // rank = ceil(p/100 * 5): p50 -> 3rd, p90 -> 5th, p99 -> 5th, p20 -> 1st.
        assert_eq!(percentile(&v, 50.0), Some(35.0));
        assert_eq!(percentile(&v, 90.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(50.0));
        assert_eq!(percentile(&v, 20.0), Some(15.0));
        assert_eq!(percentile(&v, 0.0), Some(15.0));
        // Order does not matter.
        assert_eq!(
            percentile(&[50.0, 15.0, 40.0, 20.0, 35.0], 50.0),
            Some(35.0)
        );
        // Ten values: p90 is the 9th.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 90.0), Some(9.0));
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn ratios_to_a_baseline_by_hand() {
        assert_eq!(ratio_to(Some(1500.0), Some(1000.0)), Some(1.5));
        assert_eq!(ratio_to(Some(1000.0), Some(1000.0)), Some(1.0));
        assert_eq!(ratio_to(Some(500.0), Some(1000.0)), Some(0.5));
        assert_eq!(ratio_to(None, Some(1000.0)), None);
        assert_eq!(ratio_to(Some(1000.0), None), None);
        assert_eq!(ratio_to(Some(1000.0), Some(0.0)), None);
    }

    #[test]
    fn the_load_ramp_doubles_up_to_the_maximum() {
        assert_eq!(doubling_steps(16), [1, 2, 4, 8, 16]);
        assert_eq!(doubling_steps(2), [1, 2]);
        assert_eq!(doubling_steps(1), [1]);
        assert_eq!(doubling_steps(6), [1, 2, 4, 6]);
        assert!(doubling_steps(0).is_empty());
    }
}
