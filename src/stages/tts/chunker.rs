//! Cuts a reply that arrives token by token into pieces worth speaking.
//!
//! A voice needs whole phrases (it plans intonation over them), but waiting
//! for the whole reply would make the caller wait for the planner's last
//! token. So the reply is spoken sentence by sentence, and the *first* piece
//! may end at a clause (`,` `;` `:`) once it is long enough: the caller hears
//! "Your order 1042 shipped on Monday," while the planner is still writing
//! the rest. A first sentence with no such mark may break before a word that
//! opens a phrase ("Curse is a curse | that affects people's lives"), since
//! otherwise its first word waits for its last. Markdown the model may write
//! (`**bold**`, bullets, headings) is cleaned away, since a voice would read
//! the symbols out or stumble on them.

/// The first piece of a reply may end at a clause boundary once it has at
/// least this many characters (shorter ones sound clipped: "Sure,").
const MIN_FIRST_CLAUSE_CHARS: usize = 12;

/// The first piece may end before a phrase opener once it has at least this
/// many words (besides [`MIN_FIRST_CLAUSE_CHARS`] characters): "It is |
/// that" would leave a voice nothing to shape.
const MIN_FIRST_PHRASE_WORDS: usize = 3;

/// Words that open a phrase of their own, before which a voice may pause
/// without breaking one up: conjunctions and relative pronouns, and the
/// prepositions that open an adverbial. Not "of", "to", "in", "for": "a cup
/// | of tea" or "want | to go" would sound broken.
const PHRASE_OPENERS: &[&str] = &[
    "and", "but", "or", "so", "because", "that", "which", "who", "whose", "where", "when", "while",
    "if", "unless", "until", "since", "although", "though", "with", "without", "after", "before",
    "during",
];

/// A piece with no boundary in sight is cut at a space within this many
/// bytes, so a run-on reply cannot hold speech back indefinitely.
const MAX_PIECE_BYTES: usize = 240;

/// Words after which a period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "vs", "approx", "jr", "sr", "inc", "ltd", "co",
];

/// One reply being cut into speakable pieces.
#[derive(Debug, Default)]
pub struct SentenceChunker {
    pending: String,
    /// Pieces handed out so far in this reply (the first may be a clause).
    pieces: usize,
}

impl SentenceChunker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add reply text; returns the pieces now complete, in order, cleaned
    /// for speech (pieces that clean to nothing are skipped).
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.boundary() {
            let piece: String = self.pending.drain(..end).collect();
            self.emit(&piece, &mut out);
        }
        out
    }

    /// The reply is complete: whatever is left, cleaned, if it says anything.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        self.emit(&rest, &mut out);
        self.pieces = 0;
        out.pop()
    }

    fn emit(&mut self, piece: &str, out: &mut Vec<String>) {
        // A closing quote or bracket cut off from the last piece's mark
        // (`"go.` then `" Then`) does not open this one.
        let piece = piece.trim_start();
        let unclosed = piece.trim_start_matches(is_closer);
        let piece = if unclosed.starts_with(char::is_whitespace) {
            unclosed
        } else {
            piece
        };
        let clean = speakable(piece);
        // A closing quote cut off from its sentence's mark says nothing.
        if clean.chars().any(char::is_alphanumeric) {
            self.pieces += 1;
            out.push(clean);
        }
    }

    /// Byte index just past the first complete piece in `pending`, if any.
    fn boundary(&self) -> Option<usize> {
        let at_mark = self.mark_boundary();
        if self.pieces > 0 {
            return at_mark;
        }
        // The first piece ends at whichever comes first, so where it ends
        // does not depend on how the reply was cut into tokens.
        match (phrase_break(&self.pending), at_mark) {
            (Some(phrase), Some(mark)) => Some(phrase.min(mark)),
            (phrase, mark) => phrase.or(mark),
        }
    }

    /// Byte index just past the first piece that a mark (or a newline, or
    /// the length limit) ends in `pending`, if any.
    fn mark_boundary(&self) -> Option<usize> {
        let text = &self.pending;
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if i >= MAX_PIECE_BYTES {
                break;
            }
            let Some(&(next_i, next)) = chars.peek() else {
                // The end of what arrived so far. A mark here usually ends
                // the piece, and waiting for the next token to show a space
                // costs the caller a token's time (~20 ms of a 0.5B model)
                // before the first audio. After a digit, or a space, the
                // next token decides ("3.5", "1,000", "about .5").
                let body = text.trim_end_matches(is_closer);
                let mut tail = body.chars().rev();
                let undecided = matches!(
                    (tail.next(), tail.next()),
                    (Some(mark), Some(before)) if before.is_whitespace()
                        || (before.is_ascii_digit() && matches!(mark, '.' | ',' | ':'))
                );
                if !undecided && self.ends_piece(body, None) {
                    return Some(text.len());
                }
                break;
            };
            if c == '\n' {
                if !text[..i].trim().is_empty() {
                    return Some(next_i);
                }
                continue;
            }
            if !next.is_whitespace() {
                continue;
            }
            // Closing quotes and brackets after a mark belong to it:
            // `He said "go." Then` ends after the quote.
            let body = text[..next_i].trim_end_matches(is_closer);
            if self.ends_piece(body, Some(&text[next_i..])) {
                return Some(next_i);
            }
        }
        if text.len() > MAX_PIECE_BYTES {
            // Cut at the last space within the limit (or the limit itself).
            let limit = floor_char_boundary(text, MAX_PIECE_BYTES);
            let cut = text[..limit].rfind(' ').filter(|&s| s > 0).unwrap_or(limit);
            return Some(cut);
        }
        None
    }
}

impl SentenceChunker {
    /// Whether text ending here (closers trimmed) ends a piece: a sentence
    /// mark not after an abbreviation, or in the first piece a clause mark
    /// after enough words. `after` is what has arrived past it, if known.
    fn ends_piece(&self, body: &str, after: Option<&str>) -> bool {
        let Some(mark) = body.chars().next_back() else {
            return false;
        };
        let before = &body[..body.len() - mark.len_utf8()];
        let sentence_end = match mark {
            '.' => !is_abbreviation(before, after),
            '!' | '?' | '…' => true,
            _ => false,
        };
        let clause_end = self.pieces == 0
            && matches!(mark, ',' | ';' | ':')
            && before.trim().chars().count() >= MIN_FIRST_CLAUSE_CHARS;
        sentence_end || clause_end
    }
}

/// Byte index of the first place a first piece with no mark may end: just
/// before an opening quote or bracket, or a whole word of
/// [`PHRASE_OPENERS`], with enough said before it. Used for the first
/// piece only: it is the one the caller waits for, and the rest of the
/// reply goes by sentences, as a voice phrases best.
fn phrase_break(text: &str) -> Option<usize> {
    let mut words_before = 0;
    let mut prev_space = true;
    for (i, c) in text.char_indices() {
        if i >= MAX_PIECE_BYTES {
            break;
        }
        if c.is_whitespace() {
            prev_space = true;
            continue;
        }
        if !prev_space {
            continue;
        }
        prev_space = false;
        let enough = words_before >= MIN_FIRST_PHRASE_WORDS
            && text[..i].trim().chars().count() >= MIN_FIRST_CLAUSE_CHARS;
        words_before += 1;
        if !enough {
            continue;
        }
        if matches!(c, '"' | '“' | '(') {
            return Some(i);
        }
        // The word must be whole: "so" may yet become "some".
        let rest = &text[i..];
        let Some(len) = rest.find(|c: char| !c.is_alphabetic()) else {
            continue;
        };
        let word = &rest[..len];
        if PHRASE_OPENERS.iter().any(|o| o.eq_ignore_ascii_case(word)) {
            return Some(i);
        }
    }
    None
}

/// Characters that close a quote, a bracket or emphasis after a mark.
fn is_closer(c: char) -> bool {
    matches!(c, '"' | '”' | '’' | '\'' | ')' | ']' | '*' | '_')
}

/// Whether the word before a period is an abbreviation ("Dr."), dotted
/// ("e.g.", "p.m.") or an initial ("J."). A decimal ("3.5") never gets
/// here: no space follows its period.
///
/// "no" and "etc" are words as well: they end a sentence when a capital
/// follows ("the answer is no. Then"), not otherwise ("No. 5", "the no.
/// of calls", "pens, etc. are"). Until the next word has arrived (`after`
/// unknown or blank) they are taken to go on.
fn is_abbreviation(before: &str, after: Option<&str>) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("")
        .trim_start_matches(['"', '“', '‘', '\'', '['])
        .to_lowercase();
    let single_initial = word.chars().count() == 1 && word.chars().all(char::is_alphabetic);
    let next = after.and_then(|a| a.trim_start().chars().next());
    let goes_on = match word.as_str() {
        "no" | "etc" => next.is_none_or(|c| !c.is_uppercase()),
        other => ABBREVIATIONS.contains(&other),
    };
    single_initial || word.contains('.') || goes_on
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Text as it should be said: markdown emphasis, headings, bullets and code
/// ticks dropped, whitespace collapsed.
pub fn speakable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.trim_start();
        let line = line.trim_start_matches('#').trim_start();
        let line = line
            .strip_prefix("- ")
            .or_else(|| line.strip_prefix("* "))
            .or_else(|| line.strip_prefix("• "))
            .unwrap_or(line);
        for word in line.split_whitespace() {
            let word: String = word
                .chars()
                .filter(|c| !matches!(c, '*' | '`' | '_' | '#'))
                .collect();
            if word.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&word);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(tokens: &[&str]) -> Vec<String> {
        let mut chunker = SentenceChunker::new();
        let mut out: Vec<String> = tokens.iter().flat_map(|t| chunker.push(t)).collect();
        out.extend(chunker.finish());
        out
    }

    #[test]
    fn speaks_sentence_by_sentence_as_tokens_arrive() {
        let mut chunker = SentenceChunker::new();
        assert!(chunker.push("Order 1042").is_empty());
        assert_eq!(chunker.push(" shipped."), vec!["Order 1042 shipped."]);
        assert!(chunker.push(" It").is_empty());
        assert_eq!(chunker.push(" arrives Friday!"), vec!["It arrives Friday!"]);
        assert_eq!(chunker.finish(), None);
    }

    #[test]
    fn the_first_piece_may_end_at_a_long_enough_clause() {
        assert_eq!(
            feed(&["Your order 1042 shipped on Monday, and it arrives Friday, says the carrier."]),
            vec![
                "Your order 1042 shipped on Monday,",
                "and it arrives Friday, says the carrier."
            ]
        );
        // Too short to stand alone.
        assert_eq!(
            feed(&["Sure, it ships today."]),
            vec!["Sure, it ships today."]
        );
    }

    #[test]
    fn a_first_sentence_with_no_mark_may_break_before_a_phrase() {
        // Token by token, as a planner writes: the piece before "that" is
        // spoken once "that" is known to be a whole word.
        let mut chunker = SentenceChunker::new();
        assert!(chunker.push("Curse is a curse").is_empty());
        assert!(chunker.push(" that").is_empty(), "may yet be \"thatch\"");
        assert_eq!(chunker.push(" affects"), vec!["Curse is a curse"]);
        assert_eq!(
            chunker.push(" people's lives. So"),
            vec!["that affects people's lives."]
        );
        // Later pieces go by sentences: "So" does not break them.
        assert!(chunker.push(" it goes on and").is_empty());
        assert_eq!(chunker.push(" on."), vec!["So it goes on and on."]);
        assert_eq!(chunker.finish(), None);
        // An opening quote or bracket needs nothing after it.
        let mut chunker = SentenceChunker::new();
        assert_eq!(
            chunker.push("A great book is \"To"),
            vec!["A great book is"]
        );
        assert_eq!(
            feed(&["A great book is \"To Kill a Mockingbird.\""]),
            vec!["A great book is", "\"To Kill a Mockingbird.\""]
        );
        // A mark comes first when it is first; later pieces go by sentences.
        assert_eq!(
            feed(&["Your order shipped Monday, and it arrives Friday and not later."]),
            vec![
                "Your order shipped Monday,",
                "and it arrives Friday and not later."
            ]
        );
        // Too little before "and", enough before "because".
        assert_eq!(
            feed(&["Cats and dogs sleep because they can."]),
            vec!["Cats and dogs sleep", "because they can."]
        );
        // Too little before the opener, or no opener: one piece.
        assert_eq!(feed(&["It is so hot."]), vec!["It is so hot."]);
        assert_eq!(
            feed(&["Bread, butter and jam."]),
            vec!["Bread, butter and jam."]
        );
        assert_eq!(feed(&["He's a red man."]), vec!["He's a red man."]);
    }

    #[test]
    fn abbreviations_initials_and_decimals_do_not_end_sentences() {
        assert_eq!(
            feed(&["Ask Dr. Smith at 3.5 p.m. today. J. Doe agrees. Done"]),
            vec!["Ask Dr. Smith at 3.5 p.m. today.", "J. Doe agrees.", "Done"]
        );
    }

    #[test]
    fn a_mark_at_the_end_of_a_token_ends_the_piece_unless_a_digit_is_before_it() {
        let mut chunker = SentenceChunker::new();
        assert_eq!(
            chunker.push("Curse affects people's lives,"),
            vec!["Curse affects people's lives,"]
        );
        // A quote split from its mark joins the next piece, or alone is dropped.
        assert_eq!(chunker.push(" as \"Dr.").len(), 0);
        assert_eq!(chunker.push(" Who\" says."), vec!["as \"Dr. Who\" says."]);
        assert!(chunker.push("\"").is_empty());
        assert_eq!(chunker.finish(), None);
        // "3." may become "3.5", "1," may become "1,000": the next token decides.
        assert_eq!(
            feed(&["It is 3.", "5 km, or 1,", "000 steps."]),
            vec!["It is 3.5 km,", "or 1,000 steps."]
        );
        assert_eq!(feed(&["Pick 3.", " Then go."]), vec!["Pick 3.", "Then go."]);
    }

    #[test]
    fn an_undecided_mark_waits_for_the_next_token() {
        // A mark after a space, or after "no"/"etc" with no word yet.
        assert_eq!(
            feed(&["It costs about", " .", "5 euros."]),
            vec!["It costs about .5 euros."]
        );
        assert_eq!(
            feed(&[
                "See No.",
                " 5 now. The answer is no.",
                " Fine, etc.",
                " Then go."
            ]),
            vec![
                "See No. 5 now.",
                "The answer is no.",
                "Fine, etc.",
                "Then go."
            ]
        );
        assert_eq!(
            feed(&["Pens, ink, etc. are here."]),
            vec!["Pens, ink, etc. are here."]
        );
        assert_eq!(
            feed(&["Count the no.", " of calls."]),
            vec!["Count the no. of calls."]
        );
        // After a digit only a mark that may go on waits: "911!" does not.
        let mut chunker = SentenceChunker::new();
        assert_eq!(chunker.push("Call 911!"), vec!["Call 911!"]);
    }

    #[test]
    fn a_closer_cut_from_its_mark_does_not_open_the_next_piece() {
        assert_eq!(
            feed(&[
                "He said \"go.",
                "\" Then it (rained.",
                ") After \"that\" we left."
            ]),
            vec![
                "He said \"go.",
                "Then it (rained.",
                "After \"that\" we left."
            ]
        );
    }

    #[test]
    fn a_mark_followed_by_closing_quotes_or_brackets_ends_after_them() {
        assert_eq!(
            feed(&[
                "He said \"go.\" Then we left (see Dr. Smith.) Next, ",
                "**Note.** ",
                "\"Dr. Who\" airs."
            ]),
            vec![
                "He said \"go.\"",
                "Then we left (see Dr. Smith.)",
                "Next, Note.",
                "\"Dr. Who\" airs."
            ]
        );
    }

    #[test]
    fn newlines_end_pieces_and_markdown_is_cleaned() {
        assert_eq!(
            feed(&["**Refunds** take:\n- 5 business days\n- `card` only\n\n## Done"]),
            vec!["Refunds take:", "5 business days", "card only", "Done"]
        );
    }

    #[test]
    fn run_on_text_is_cut_at_a_space() {
        let long = "word ".repeat(100);
        let pieces = feed(&[&long]);
        assert!(pieces.len() >= 2, "{pieces:?}");
        assert!(pieces.iter().all(|p| p.len() <= MAX_PIECE_BYTES));
        assert!(pieces.iter().all(|p| p.split(' ').all(|w| w == "word")));
        // Nor can a mark past the limit stretch a piece beyond it.
        for text in [format!("{long}end."), format!("{long}end. More")] {
            let pieces = feed(&[&text]);
            assert!(
                pieces.iter().all(|p| p.len() <= MAX_PIECE_BYTES),
                "{pieces:?}"
            );
        }
        // Multi-byte text never panics on a cut.
        let pieces = feed(&[&"é".repeat(400)]);
        assert_eq!(pieces.concat().chars().count(), 400);
    }

    #[test]
    fn nothing_speakable_gives_no_piece() {
        assert!(feed(&["  ", "**", "\n\n"]).is_empty());
    }
}
