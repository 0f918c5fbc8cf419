//! The secrets parlor holds (API keys, MCP servers' credentials), so that
//! none of them leaves through the model: a reply that would say one is
//! cut off ([`LeakGuard`]), and a tool call that would send one is refused
//! (the planner's tool layer).
//!
//! The model is never given a secret, but a server's error message, a
//! poisoned resource or an injected instruction might carry one into its
//! context; this is the last check before the words reach a caller.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{OnceLock, RwLock};

use serde_json::Value;

use crate::spec::{env_refs, expand_env, McpServerSpec, PipelineSpec, StageSpec};

/// Values shorter than this are not treated as secrets: an env value
/// such as `1` or `true` would match everywhere.
pub const MIN_SECRET_LEN: usize = 8;

/// What a withheld reply ends with instead.
pub const WITHHELD: &str = " I can't share that.";

/// What replaces a secret in a record.
pub const REDACTED: &str = "[redacted]";

/// Secret values to look for.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Vec<String>,
    /// Tokens issued while running (see [`Issued`]), when this set
    /// stands for everything the process holds.
    issued: Option<&'static Issued>,
}

/// Credentials parlor is handed at run time, not named by its spec: OAuth
/// access and refresh tokens. They exist only once fetched, deep in the
/// MCP pool, so they are told to one process-wide list that the spec's
/// [`Secrets`] also search.
///
/// Only a token's last [`Issued::TAIL`] characters are kept: that is the
/// random part (a JWT's signature; its header is the same in every token).
/// The leak guard finds a token by them, and holds back the word a reply is
/// in the middle of while any token is known, so a token said as one word
/// is never said in part. Redaction removes the whole token around them.
///
/// Each token source (one server's OAuth client) has its own slot with its
/// newest [`Issued::KEPT`] tokens (the access token, the one it replaced,
/// the refresh token), so one server's renewals never push out another's.
#[derive(Default)]
pub struct Issued {
    slots: RwLock<BTreeMap<String, VecDeque<String>>>,
}

impl Issued {
    pub const TAIL: usize = 32;
    pub const KEPT: usize = 4;

    /// The process's list, which OAuth clients tell their tokens to.
    pub fn global() -> &'static Issued {
        static ISSUED: OnceLock<Issued> = OnceLock::new();
        ISSUED.get_or_init(Issued::default)
    }

    /// Remembers `token` for `slot` (too short a value is ignored, as for
    /// [`Secrets`]).
    pub fn remember(&self, slot: &str, token: &str) {
        let token = token.trim();
        if token.len() < MIN_SECRET_LEN {
            return;
        }
        let mut start = token.len().saturating_sub(Self::TAIL);
        while !token.is_char_boundary(start) {
            start += 1;
        }
        let tail = &token[start..];
        let mut slots = self.slots.write().expect("issued tokens lock");
        let kept = slots.entry(slot.to_string()).or_default();
        if kept.iter().any(|t| t == tail) {
            return;
        }
        kept.push_back(tail.to_string());
        if kept.len() > Self::KEPT {
            kept.pop_front();
        }
    }

    /// Runs `f` over every kept tail.
    fn with_tails<R>(&self, f: impl FnOnce(Tails<'_>) -> R) -> R {
        let slots = self.slots.read().expect("issued tokens lock");
        f(slots.values().flatten())
    }
}

type Tails<'a> =
    std::iter::Flatten<std::collections::btree_map::Values<'a, String, VecDeque<String>>>;

/// By hand: the values are the point of hiding.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("count", &self.values.len())
            .finish()
    }
}

/// Characters a bearer token is made of (RFC 6750's b64token).
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
}

/// Where the run of token characters that `text` ends with starts
/// (`text.len()` if it ends in another character).
fn token_start(text: &str) -> usize {
    text.char_indices()
        .rev()
        .take_while(|(_, c)| is_token_char(*c))
        .last()
        .map_or(text.len(), |(i, _)| i)
}

/// `text` with every token ending in `tail` replaced whole.
fn redact_token(text: &str, tail: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(tail) {
        let start = token_start(&rest[..at]);
        out.push_str(&rest[..start]);
        out.push_str(REDACTED);
        rest = &rest[at + tail.len()..];
    }
    out.push_str(rest);
    out
}

impl Secrets {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .map(|v| v.trim().to_string())
            .filter(|v| v.len() >= MIN_SECRET_LEN)
            .collect();
        values.sort();
        values.dedup();
        Self {
            values,
            issued: None,
        }
    }

    /// These values and every token `issued` holds, now or later.
    pub fn with_issued(mut self, issued: &'static Issued) -> Self {
        self.issued = Some(issued);
        self
    }

    /// Every secret a spec gives parlor: the values of the environment
    /// variables it names for keys and tokens (as set now, OAuth client
    /// secrets included), the API keys of `[auth]`, and the environment of
    /// its stdio MCP servers (where their credentials live).
    pub fn of_spec(spec: &PipelineSpec) -> Self {
        let env = |name: &str| std::env::var(name).ok();
        let mut values = Vec::new();
        for stage in &spec.stages {
            let named = match stage {
                StageSpec::Stt(s) => Some(&s.api_key_env),
                StageSpec::Planner(p) => Some(&p.api_key_env),
                StageSpec::Tts(t) => Some(&t.api_key_env),
                StageSpec::Realtime(r) => Some(&r.api_key_env),
                StageSpec::Vad(_) => None,
            };
            values.extend(named.and_then(|n| env(n)));
        }
        for server in spec.mcp.values() {
            match server {
                McpServerSpec::Stdio { env: vars, .. } => {
                    for value in vars.values() {
                        // As written, as it reaches the server, and each
                        // variable it names on its own (the token inside
                        // "Bearer ${TOKEN}").
                        values.push(value.clone());
                        values.extend(expand_env(value).ok());
                        values.extend(env_refs(value).iter().filter_map(|n| env(n)));
                    }
                }
                McpServerSpec::Hosted(hosted) => {
                    values.extend(hosted.authorization_env.as_deref().and_then(env));
                }
                McpServerSpec::Sse {
                    oauth: Some(oauth), ..
                }
                | McpServerSpec::StreamableHttp {
                    oauth: Some(oauth), ..
                } => values.extend(oauth.client_secret_env.as_deref().and_then(env)),
                _ => {}
            }
        }
        if let Some(auth) = &spec.auth {
            // `key:principal:role,...`: the keys only.
            for entry in env(&auth.keys_env).unwrap_or_default().split(',') {
                values.extend(entry.split(':').next().map(str::to_string));
            }
        }
        Self::new(values).with_issued(Issued::global())
    }

    /// Whether there is nothing to look for (no values, and no tokens
    /// issued yet).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self
                .issued
                .is_none_or(|i| i.with_tails(|mut t| t.next().is_none()))
    }

    /// Whether `text` contains any secret.
    pub fn found_in(&self, text: &str) -> bool {
        self.values.iter().any(|s| text.contains(s.as_str()))
            || self
                .issued
                .is_some_and(|i| i.with_tails(|mut tails| tails.any(|t| text.contains(t.as_str()))))
    }

    /// Whether any string in `value` contains a secret.
    pub fn found_in_value(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.found_in(s),
            Value::Array(items) => items.iter().any(|v| self.found_in_value(v)),
            Value::Object(map) => map.values().any(|v| self.found_in_value(v)),
            _ => false,
        }
    }

    /// `value` with every secret inside its strings replaced.
    pub fn redact_value(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.redact_value(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.redact_value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn redact(&self, text: &str) -> String {
        let text = self
            .values
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), REDACTED));
        match self.issued {
            Some(issued) => issued.with_tails(|tails| tails.fold(text, |t, s| redact_token(&t, s))),
            None => text,
        }
    }

    /// Where the part of `text` that may still grow into a secret starts
    /// (`text.len()` if none may): the longest end of it that begins a
    /// secret value or a token's tail, and while tokens have been issued,
    /// the token characters it ends with (a token's start is not known,
    /// only its tail, so a word that may be one is held whole).
    fn unfinished_at(&self, text: &str) -> usize {
        let mut from = self.secret_start_at(text);
        if let Some(issued) = self.issued {
            if issued.with_tails(|mut t| t.next().is_some()) {
                from = from.min(token_start(text));
            }
        }
        from
    }

    /// Where the longest end of `text` that begins a secret value or a
    /// token's tail starts (`text.len()` if none does).
    fn secret_start_at(&self, text: &str) -> usize {
        let mut from = text.len();
        let mut consider = |secret: &str| {
            let earliest = text.len().saturating_sub(secret.len() - 1);
            if let Some(at) = (earliest..from)
                .filter(|&at| text.is_char_boundary(at))
                .find(|&at| secret.starts_with(&text[at..]))
            {
                from = at;
            }
        };
        self.values.iter().for_each(|v| consider(v));
        if let Some(issued) = self.issued {
            issued.with_tails(|tails| tails.for_each(|t| consider(t)));
        }
        from
    }
}

/// A reply streamed through a check for secrets. Text that might be the
/// start of a secret is held back until the next pieces show whether it is
/// one; once one is seen, the rest of the reply is replaced by [`WITHHELD`].
///
/// Everything else goes out as it arrives, so a reply is not slowed by the
/// keys parlor holds. When something is held, what goes out ends at a
/// space: the sentence chunker takes a mark at the end of what has arrived
/// for the end of a piece, and "Visit acme." of "Visit acme.com" is not one.
pub struct LeakGuard<'a> {
    secrets: &'a Secrets,
    held: String,
    /// Whether what went out so far is nothing or ends in a space, so
    /// [`WITHHELD`] needs no space of its own.
    at_word_start: bool,
    tripped: bool,
}

impl<'a> LeakGuard<'a> {
    pub fn new(secrets: &'a Secrets) -> Self {
        Self {
            secrets,
            held: String::new(),
            at_word_start: true,
            tripped: false,
        }
    }

    /// The next piece of the reply in; what may be said now out.
    pub fn push(&mut self, piece: &str) -> Option<String> {
        if self.tripped {
            return None;
        }
        self.held.push_str(piece);
        if self.secrets.found_in(&self.held) {
            self.held.clear();
            return Some(self.trip());
        }
        let from = self.secrets.unfinished_at(&self.held);
        let mut cut = from;
        if from < self.held.len() {
            // Back to the last space (text with none, such as Chinese,
            // goes out up to the hold itself).
            cut = self.held[..from]
                .char_indices()
                .rev()
                .find(|(_, c)| c.is_whitespace())
                .map_or(from, |(i, c)| i + c.len_utf8());
        }
        if cut == 0 {
            return None;
        }
        let said: String = self.held.drain(..cut).collect();
        self.at_word_start = said.ends_with(char::is_whitespace);
        Some(said)
    }

    /// The end of the reply: the rest of it, if it may be said.
    pub fn finish(&mut self) -> Option<String> {
        if self.tripped || self.held.is_empty() {
            return None;
        }
        // A reply that stops inside a secret ("the key is sk-test-4f9a8b")
        // would say most of it: as much as a short secret is withheld.
        let start = self.secrets.secret_start_at(&self.held);
        if self.held.len() - start >= MIN_SECRET_LEN {
            let mut said: String = self.held.drain(..start).collect();
            self.held.clear();
            self.at_word_start = said.is_empty() || said.ends_with(char::is_whitespace);
            said.push_str(&self.trip());
            return Some(said);
        }
        Some(std::mem::take(&mut self.held))
    }

    /// Cut the reply off: what is said instead.
    fn trip(&mut self) -> String {
        self.tripped = true;
        let withheld = if self.at_word_start {
            WITHHELD.trim_start()
        } else {
            WITHHELD
        };
        withheld.to_string()
    }

    /// Whether a secret was found (and the reply cut off).
    pub fn tripped(&self) -> bool {
        self.tripped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "sk-test-4f9a8b7c6d5e";

    fn secrets() -> Secrets {
        Secrets::new([KEY.to_string(), "short".into(), "hunter2hunter2".into()])
    }

    fn through(pieces: &[&str]) -> (String, bool) {
        let secrets = secrets();
        let mut guard = LeakGuard::new(&secrets);
        let mut said = String::new();
        for p in pieces {
            said.extend(guard.push(p));
        }
        said.extend(guard.finish());
        (said, guard.tripped())
    }

    #[test]
    fn a_clean_reply_comes_out_whole() {
        let pieces = [
            "Your order ",
            "1042 ships ",
            "on Friday.",
            " Anything else?",
        ];
        assert_eq!(through(&pieces), (pieces.concat(), false));
    }

    #[test]
    fn a_secret_split_across_pieces_is_never_said() {
        let (said, tripped) = through(&[
            "Sure, the key is sk-te",
            "st-4f9a8",
            "b7c6d5e and more",
            " text.",
        ]);
        assert!(tripped);
        // Held back and then dropped: no part of the key goes out.
        assert!(!said.contains("sk-te"), "{said}");
        assert!(said.starts_with("Sure, the"), "{said}");
        assert!(said.ends_with(WITHHELD), "{said}");
    }

    #[test]
    fn short_values_are_not_secrets_and_values_are_redacted_in_json() {
        let s = secrets();
        assert!(!s.found_in("a short answer"));
        let args = json!({"note": format!("send {KEY} now"), "n": 3, "list": ["hunter2hunter2"]});
        assert!(s.found_in_value(&args));
        let redacted = s.redact_value(&args);
        assert_eq!(
            redacted,
            json!({"note": "send [redacted] now", "n": 3, "list": ["[redacted]"]})
        );
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_token_issued_later_is_found_by_its_tail_and_redacted() {
        let issued: &'static Issued = Box::leak(Box::default());
        let secrets = secrets().with_issued(issued);
        let token =
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwYXJsb3IifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi0xMjM0NTY";
        assert!(!secrets.found_in(token));
        issued.remember("kb", token);
        issued.remember("kb", token);
        assert_eq!(issued.with_tails(|t| t.count()), 1);
        assert!(secrets.found_in(&format!("the token is {token}.")));
        // The shared JWT header alone is not a secret.
        assert!(!secrets.found_in("eyJhbGciOiJSUzI1NiJ9"));
        // Redacted whole, not only its tail.
        let redacted = secrets.redact_value(&json!({ "auth": format!("Bearer {token}, ok") }));
        assert_eq!(redacted, json!({ "auth": "Bearer [redacted], ok" }));
        // The word a reply is in is held while tokens are known, so no
        // part of a token split across pieces is said, not even its header.
        let mut guard = LeakGuard::new(&secrets);
        let half = token.len() - 10;
        let mut said: String = guard.push("Here: ").unwrap_or_default();
        said.extend(guard.push(&token[..half]));
        said.extend(guard.push(&token[half..]));
        said.extend(guard.finish());
        assert!(guard.tripped(), "{said}");
        assert_eq!(said, format!("Here: {}", WITHHELD.trim_start()));
        // Another server's renewals do not push this token out; its own do.
        for n in 0..Issued::KEPT * 4 {
            issued.remember("other", &format!("another-token-{n:04}-abcdefgh"));
        }
        assert!(secrets.found_in(token));
        for n in 0..Issued::KEPT {
            issued.remember("kb", &format!("renewed-token-{n:04}-abcdefgh"));
        }
        assert!(!secrets.found_in(token), "the oldest token is let go");
    }

    #[test]
    fn text_that_cannot_start_a_secret_goes_out_as_it_arrives() {
        let secrets = secrets();
        let mut guard = LeakGuard::new(&secrets);
        for piece in ["Your order", " 1042", " shipped.", " Anything else?"] {
            assert_eq!(guard.push(piece).as_deref(), Some(piece));
        }
        assert_eq!(guard.finish(), None);
    }

    #[test]
    fn what_goes_out_while_text_is_held_ends_at_a_space() {
        let secrets = secrets();
        let mut guard = LeakGuard::new(&secrets);
        // The "h" may start "hunter2hunter2": hold it, and the word it is
        // in, so the chunker is not handed "the site." as a finished sentence.
        assert_eq!(
            guard.push("Go to the site.h").as_deref(),
            Some("Go to the ")
        );
        assert_eq!(
            guard.push("ome today.").as_deref(),
            Some("site.home today.")
        );
        // The start of a secret is held until the next pieces settle it.
        assert_eq!(guard.push(" Say hunter").as_deref(), Some(" Say "));
        assert_eq!(guard.push("2hunt").as_deref(), None);
        assert_eq!(
            guard.push("er2 then.").as_deref(),
            Some(WITHHELD.trim_start())
        );
    }

    #[test]
    fn wide_spaces_and_text_with_none_never_split_a_character() {
        let secrets = secrets();
        let mut guard = LeakGuard::new(&secrets);
        // A no-break space (2 bytes) and an ideographic space (3) before a hold.
        assert_eq!(guard.push("Prix\u{a0}h").as_deref(), Some("Prix\u{a0}"));
        assert_eq!(
            guard.push("ôtel\u{3000}h").as_deref(),
            Some("hôtel\u{3000}")
        );
        // No space at all: out up to the hold itself.
        assert_eq!(guard.push("ui价格是h").as_deref(), Some("hui价格是"));
        assert_eq!(guard.finish().as_deref(), Some("h"));
    }

    #[test]
    fn a_reply_that_ends_inside_a_secret_does_not_say_most_of_it() {
        let (said, tripped) = through(&["The key is ", "sk-test-4f9a8b7c"]);
        assert!(tripped);
        assert_eq!(said, format!("The key is {}", WITHHELD.trim_start()));
        // A short end that merely looks like a start is said.
        assert_eq!(through(&["Ask hun"]), ("Ask hun".to_string(), false));
    }

    #[test]
    fn no_secrets_hold_nothing_back() {
        let none = Secrets::default();
        let mut guard = LeakGuard::new(&none);
        assert_eq!(guard.push("Hello").as_deref(), Some("Hello"));
        assert_eq!(guard.finish(), None);
    }
}
