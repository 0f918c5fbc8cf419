//! Text to Piper phoneme ids, as piper-phonemize does it.
//!
//! piper-phonemize calls `espeak_TextToPhonemes` (IPA) one clause at a
//! time, appends the clause's punctuation (`.` `?` `!`, or `,` `:` `;`
//! followed by a space), starts a new sentence after `.` `?` `!`, then
//! decomposes the result (NFD) and maps each codepoint through the voice's
//! `phoneme_id_map`: BOS `^`, then every phoneme followed by the pad `_`
//! (the pad follows BOS too), then EOS `$` (`phoneme_ids.cpp`,
//! `interspersePad`).
//!
//! parlor calls the same function in process ([`super::espeak_ipa`]). It
//! gives one line per clause but drops the punctuation, so the text is
//! split into clauses here the way espeak-ng splits them (at `.,;:?!`
//! followed by a space or the end) and each line gets its clause's
//! punctuation back. When the counts differ (espeak-ng also breaks very
//! long clauses) the lines are joined with spaces and only the final
//! punctuation is kept: the voice then pauses less at commas, nothing worse.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;

use super::voice::TtsError;

const BOS: char = '^';
const EOS: char = '$';
const PAD: char = '_';

/// A voice's `phoneme_id_map`: one codepoint to one or more ids.
#[derive(Debug, Clone)]
pub struct PhonemeIdMap {
    map: HashMap<char, Vec<i64>>,
}

impl PhonemeIdMap {
    /// From the `phoneme_id_map` object of a Piper `.onnx.json`.
    ///
    /// # Errors
    /// A message when BOS, EOS or the pad is missing or a key is not one
    /// codepoint.
    pub fn from_json(map: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let mut out = HashMap::with_capacity(map.len());
        for (key, ids) in map {
            let mut chars = key.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return Err(format!("phoneme_id_map key {key:?} is not one codepoint"));
            };
            let ids: Vec<i64> = serde_json::from_value(ids.clone())
                .map_err(|e| format!("phoneme_id_map[{key:?}]: {e}"))?;
            out.insert(c, ids);
        }
        for needed in [BOS, EOS, PAD] {
            if !out.contains_key(&needed) {
                return Err(format!("phoneme_id_map has no {needed:?}"));
            }
        }
        Ok(Self { map: out })
    }

    /// The ids of one sentence's phonemes, BOS and EOS added and the pad
    /// interspersed. Phonemes the voice does not know are skipped and
    /// returned, so the caller can log them.
    pub fn ids(&self, phonemes: &str) -> (Vec<i64>, Vec<char>) {
        let pad = &self.map[&PAD];
        let mut ids = Vec::with_capacity(2 * phonemes.len() + 4);
        let mut unknown = Vec::new();
        ids.extend_from_slice(&self.map[&BOS]);
        ids.extend_from_slice(pad);
        for c in phonemes.nfd() {
            match self.map.get(&c) {
                Some(mapped) => {
                    ids.extend_from_slice(mapped);
                    ids.extend_from_slice(pad);
                }
                None => unknown.push(c),
            }
        }
        ids.extend_from_slice(&self.map[&EOS]);
        (ids, unknown)
    }
}

fn is_clause_end(c: char) -> bool {
    matches!(c, '.' | ',' | ';' | ':' | '?' | '!')
}

/// `text` split where espeak-ng ends a clause: after `. , ; : ? !` followed
/// by whitespace or the end of the text. Each clause comes with its
/// punctuation (`None` for a last clause without any). Clauses of nothing
/// but punctuation (`...`) are dropped: espeak-ng prints no line for them.
pub fn clauses(text: &str) -> Vec<(String, Option<char>)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let speakable = |s: &str| s.chars().any(|c| !c.is_whitespace() && !is_clause_end(c));
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let ends = is_clause_end(c) && chars.peek().is_none_or(|n| n.is_whitespace());
        if ends {
            if speakable(&current) {
                out.push((current.trim().to_string(), Some(c)));
            }
            current.clear();
        } else {
            current.push(c);
        }
    }
    if speakable(&current) {
        out.push((current.trim().to_string(), None));
    }
    out
}

/// Sentences of phonemes from espeak-ng's IPA output (one line per clause)
/// and the clauses of the text it was given, as piper-phonemize would
/// build them.
pub fn sentences(ipa: &str, clauses: &[(String, Option<char>)]) -> Vec<String> {
    let lines: Vec<String> = ipa
        .lines()
        .map(|l| strip_language_switches(l.trim()))
        .filter(|l| !l.is_empty())
        .collect();
    let mut sentences = Vec::new();
    if lines.len() == clauses.len() {
        let mut sentence = String::new();
        for (line, (_, punct)) in lines.iter().zip(clauses) {
            sentence.push_str(line);
            match punct {
                Some(p @ ('.' | '?' | '!')) => {
                    sentence.push(*p);
                    sentences.push(std::mem::take(&mut sentence));
                }
                Some(p) => {
                    sentence.push(*p);
                    sentence.push(' ');
                }
                None => sentence.push(' '),
            }
        }
        let rest = sentence.trim_end();
        if !rest.is_empty() {
            sentences.push(rest.to_string());
        }
    } else if !lines.is_empty() {
        tracing::debug!(
            message =
                "espeak-ng clauses differ from the text's; keeping only the final punctuation.",
            lines = lines.len(),
            clauses = clauses.len()
        );
        let mut sentence = lines.join(" ");
        if let Some((_, Some(p))) = clauses.last() {
            sentence.push(*p);
        }
        sentences.push(sentence);
    }
    sentences
}

/// Removes espeak-ng's language-switch marks (`(fr)`, `(en)`) around
/// foreign words: they are annotations, not phonemes.
fn strip_language_switches(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('(') {
        match rest[open..].find(')') {
            Some(close)
                if rest[open + 1..open + close]
                    .chars()
                    .all(|c| c.is_ascii_alphabetic() || c == '-') =>
            {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `text` as sentences of IPA phonemes in espeak-ng's `voice`.
///
/// Microseconds of work: call it from async code directly.
///
/// # Errors
/// [`TtsError::Espeak`]: the library is missing or the voice unknown.
pub fn phonemize(text: &str, voice: &str) -> Result<Vec<String>, TtsError> {
    let clauses = clauses(text);
    if clauses.is_empty() {
        return Ok(Vec::new());
    }
    let ipa = super::espeak_ipa::ipa(text, voice)?;
    Ok(sentences(&ipa, &clauses))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few entries of en_US-joe-medium.onnx.json's map (checked by hand
    /// against the file).
    fn joe_map() -> PhonemeIdMap {
        let json = serde_json::json!({
            "_": [0], "^": [1], "$": [2], " ": [3], "!": [4], ",": [8], ".": [10],
            "?": [13], "a": [14], "d": [17], "h": [20], "l": [24], "o": [27],
            "w": [35], "ɜ": [62], "ə": [59], "ʊ": [100], "ˈ": [120], "ː": [122]
        });
        PhonemeIdMap::from_json(json.as_object().unwrap()).unwrap()
    }

    #[test]
    fn ids_start_with_bos_pad_and_pad_after_every_phoneme() {
        let (ids, unknown) = joe_map().ids("həlˈoʊ");
        // ^ _ h _ ə _ l _ ˈ _ o _ ʊ _ $
        assert_eq!(ids, [1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 2]);
        assert!(unknown.is_empty());
    }

    #[test]
    fn punctuation_and_spaces_are_phonemes() {
        let (ids, _) = joe_map().ids("wˈɜːld, hˈə!");
        assert_eq!(
            ids,
            [
                1, 0, 35, 0, 120, 0, 62, 0, 122, 0, 24, 0, 17, 0, 8, 0, 3, 0, 20, 0, 120, 0, 59, 0,
                4, 0, 2
            ]
        );
    }

    #[test]
    fn unknown_phonemes_are_skipped_and_reported() {
        let (ids, unknown) = joe_map().ids("aQa");
        assert_eq!(ids, [1, 0, 14, 0, 14, 0, 2]);
        assert_eq!(unknown, ['Q']);
    }

    #[test]
    fn empty_phonemes_are_just_bos_pad_eos() {
        assert_eq!(joe_map().ids("").0, [1, 0, 2]);
    }

    #[test]
    fn map_without_pad_is_refused() {
        let json = serde_json::json!({"^": [1], "$": [2]});
        let err = PhonemeIdMap::from_json(json.as_object().unwrap()).unwrap_err();
        assert!(err.contains("'_'"), "{err}");
    }

    #[test]
    fn clauses_split_at_punctuation_followed_by_space() {
        let c = clauses("Hello, world. It costs $3.50; ok? Fine");
        assert_eq!(
            c,
            [
                ("Hello".to_string(), Some(',')),
                ("world".to_string(), Some('.')),
                ("It costs $3.50".to_string(), Some(';')),
                ("ok".to_string(), Some('?')),
                ("Fine".to_string(), None),
            ]
        );
        assert!(clauses("  ... ").is_empty());
        // espeak-ng prints "Hi" and "there" on two lines, so two clauses.
        assert_eq!(clauses("Hi ... there.").len(), 2);
        assert_eq!(clauses("$ .").len(), 1);
    }

    #[test]
    fn sentences_get_their_clause_punctuation_back() {
        let ipa = "həlˈoʊ\nwˈɜːld\nhˈaʊ ɑːɹ juː\n";
        let s = sentences(ipa, &clauses("Hello, world. How are you?"));
        assert_eq!(s, ["həlˈoʊ, wˈɜːld.", "hˈaʊ ɑːɹ juː?"]);
    }

    #[test]
    fn mismatched_clause_counts_join_lines() {
        let s = sentences("a\nb\nc\n", &clauses("One, two."));
        assert_eq!(s, ["a b c."]);
    }

    #[test]
    fn language_switch_marks_are_removed() {
        assert_eq!(
            strip_language_switches("(fr)bɔ̃ʒˈuːɹ(en) mˈiːnz (x y)"),
            "bɔ̃ʒˈuːɹ mˈiːnz (x y)"
        );
    }
}
