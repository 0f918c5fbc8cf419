//! The tool-choice grammar: a GBNF grammar, built from the tools' JSON
//! Schemas, that admits exactly one object
//! `{"name": "<tool or say>", "arguments": {...}}` whose arguments match the
//! chosen tool's schema. Decoding under it makes a small local model's
//! output always parse, whichever tool it picks.
//!
//! Spacing is fixed (`", "` and `": "`) so the model spends no choices on
//! layout, and the prompt shows the same layout.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::chat::{Decision, ToolChoice, ToolSpec, SAY};

/// The fixed start of a `say` decision, after which its text streams.
pub const SAY_PREFIX: &str = r#"{"name": "say", "arguments": {"text": ""#;

/// The stretches of a decision only one way can continue, so they are fed
/// to the model in one batch instead of sampled a token at a time: the
/// opening `{"name":` and, once the name is complete, `", "arguments":`
/// (with ` {"text":` after `say`). A `say` answer's first word then comes
/// about ten decoding steps sooner.
///
/// Each stretch ends just before a space that starts the next pretoken
/// (` "`, ` {"`), where the tokenizer always splits: fed alone it tokenizes
/// exactly as in the whole decision, so the prompt that later shows this
/// decision reuses the KV cache written now.
#[derive(Debug, Clone)]
pub struct ForcedText {
    /// The names the model may choose, each as `{"name": "NAME`, with the
    /// stretch that must follow it. Names another name extends (`say` and
    /// `say_hi`) are left out: after them the choice is still open.
    heads: Vec<(String, &'static str)>,
}

/// Tokens a request's forced stretches can take at most (the opening and
/// one `after`), kept free in the context on top of `max_tokens`.
pub const FORCED_TOKENS_MAX: usize = 32;

/// The decision's opening, up to the space before the name's quote.
const OPENING: &str = r#"{"name":"#;

impl ForcedText {
    pub fn new(tools: &[ToolSpec], choice: ToolChoice) -> Self {
        let mut names: Vec<&str> = Vec::new();
        if choice != ToolChoice::Required {
            names.push(SAY);
        }
        if choice != ToolChoice::SayOnly {
            names.extend(tools.iter().map(|t| t.name.as_str()));
        }
        let heads = names
            .iter()
            .filter(|n| !names.iter().any(|o| o != *n && o.starts_with(*n)))
            .map(|n| {
                let after = if *n == SAY {
                    r#"", "arguments": {"text":"#
                } else {
                    r#"", "arguments":"#
                };
                (format!(r#"{OPENING} "{}"#, json_escape(n)), after)
            })
            .collect();
        Self { heads }
    }

    /// The text that must follow `output` (what has been decoded so far),
    /// if it is at the start of a forced stretch.
    pub fn after(&self, output: &str) -> Option<&'static str> {
        if output.is_empty() {
            return Some(OPENING);
        }
        self.heads
            .iter()
            .find(|(head, _)| head == output)
            .map(|(_, after)| *after)
    }
}

/// Why a decision could not be built from the model's output. With the
/// grammar in force this means the output was cut short (token limit).
#[derive(Debug, thiserror::Error)]
pub enum ParseDecisionError {
    #[error("the model's output is not a JSON tool choice ({0}): {1:?}")]
    NotJson(String, String),
    #[error("the model's output has no \"name\" string: {0:?}")]
    NoName(String),
    #[error("the model chose {0:?}, which is not among the offered tools")]
    UnknownTool(String),
}

/// Why a grammar could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GrammarBuildError {
    #[error("no choice left: tool_choice is Required but no tools were given")]
    NoChoices,
    #[error("tool {0:?} is named like the built-in \"say\" choice; rename it")]
    ReservedName(String),
    #[error("two tools are named {0:?}")]
    DuplicateName(String),
}

/// The GBNF grammar (root rule `root`) for choosing among `tools` (and
/// [`SAY`], as `choice` allows).
pub fn tool_choice_grammar(
    tools: &[ToolSpec],
    choice: ToolChoice,
) -> Result<String, GrammarBuildError> {
    let mut seen = BTreeSet::new();
    for tool in tools {
        if tool.name == SAY {
            return Err(GrammarBuildError::ReservedName(tool.name.clone()));
        }
        if !seen.insert(tool.name.as_str()) {
            return Err(GrammarBuildError::DuplicateName(tool.name.clone()));
        }
    }
    let mut g = Builder::default();
    let mut alternatives = Vec::new();
    if choice != ToolChoice::Required {
        g.rules.push(format!(
            "say ::= {} {} \"}}\"",
            lit(r#""say", "arguments": {"text": "#),
            "string"
        ));
        alternatives.push("say".to_string());
    }
    if choice != ToolChoice::SayOnly {
        for (i, tool) in tools.iter().enumerate() {
            let args = g.object_rule(&format!("t{i}"), &tool.parameters, true);
            let head = format!("\"{}\", \"arguments\": ", json_escape(&tool.name));
            g.rules.push(format!("tool-{i} ::= {} {args}", lit(&head)));
            alternatives.push(format!("tool-{i}"));
        }
    }
    if alternatives.is_empty() {
        return Err(GrammarBuildError::NoChoices);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "root ::= {} ({}) \"}}\"",
        lit(r#"{"name": "#),
        alternatives.join(" | ")
    );
    for rule in &g.rules {
        let _ = writeln!(out, "{rule}");
    }
    out.push_str(PRIMITIVES);
    Ok(out)
}

/// Turn the model's (grammar-constrained) output into a [`Decision`],
/// checking the name against the offered tools.
pub fn parse_decision(output: &str, tools: &[ToolSpec]) -> Result<Decision, ParseDecisionError> {
    let value: Value = serde_json::from_str(output.trim())
        .map_err(|e| ParseDecisionError::NotJson(e.to_string(), output.to_string()))?;
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ParseDecisionError::NoName(output.to_string()))?;
    let arguments = value
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    if name == SAY {
        let text = arguments
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Ok(Decision::Say(text.to_string()));
    }
    if !tools.iter().any(|t| t.name == name) {
        return Err(ParseDecisionError::UnknownTool(name.to_string()));
    }
    Ok(Decision::Call {
        name: name.to_string(),
        arguments,
    })
}

/// The decision as the model writes it (and as the prompt shows past
/// decisions): `{"name": ..., "arguments": ...}` with the grammar's spacing.
pub fn render_decision(name: &str, arguments: &Value) -> String {
    format!(
        "{{\"name\": \"{}\", \"arguments\": {}}}",
        json_escape(name),
        render_value(arguments)
    )
}

/// JSON with the grammar's fixed spacing (`", "`, `": "`).
pub fn render_value(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("\"{}\": {}", json_escape(k), render_value(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(render_value).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Pulls the text of a `say` decision out of the model's output as it
/// streams, unescaping JSON as it goes, so speech can start before the
/// object is complete. Feed it every piece of output; it returns the new
/// text, if any.
#[derive(Debug, Default)]
pub struct SayStream {
    seen: String,
    /// Byte offset in `seen` up to which the text has been consumed.
    consumed: usize,
    state: SayState,
    high_surrogate: Option<u32>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum SayState {
    #[default]
    Prefix,
    Text,
    Escape,
    Unicode,
    Done,
    NotSay,
}

impl SayStream {
    pub fn push(&mut self, piece: &str) -> String {
        self.seen.push_str(piece);
        let mut out = String::new();
        if self.state == SayState::Prefix {
            let n = self.seen.len().min(SAY_PREFIX.len());
            if self.seen.as_bytes()[..n] != SAY_PREFIX.as_bytes()[..n] {
                self.state = SayState::NotSay;
            } else if self.seen.len() >= SAY_PREFIX.len() {
                self.state = SayState::Text;
                self.consumed = SAY_PREFIX.len();
            }
        }
        while self.consumed < self.seen.len() {
            let rest = &self.seen[self.consumed..];
            match self.state {
                SayState::Prefix | SayState::Done | SayState::NotSay => break,
                SayState::Text => {
                    let c = rest.chars().next().expect("non-empty");
                    self.consumed += c.len_utf8();
                    match c {
                        '\\' => self.state = SayState::Escape,
                        '"' => self.state = SayState::Done,
                        c => out.push(c),
                    }
                }
                SayState::Escape => {
                    let c = rest.chars().next().expect("non-empty");
                    self.consumed += c.len_utf8();
                    self.state = SayState::Text;
                    match c {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'u' => self.state = SayState::Unicode,
                        c => out.push(c),
                    }
                }
                SayState::Unicode => {
                    let Some(hex) = rest.get(..4) else {
                        break;
                    };
                    let code = u32::from_str_radix(hex, 16).unwrap_or(0xFFFD);
                    self.consumed += 4;
                    self.state = SayState::Text;
                    match (self.high_surrogate.take(), code) {
                        (None, 0xD800..=0xDBFF) => self.high_surrogate = Some(code),
                        (Some(high), 0xDC00..=0xDFFF) => {
                            let c = 0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00);
                            out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                        }
                        (_, code) => out.push(char::from_u32(code).unwrap_or('\u{FFFD}')),
                    }
                }
            }
        }
        out
    }

    /// Whether the output is a `say` decision (as far as seen).
    pub fn is_say(&self) -> bool {
        self.state != SayState::NotSay
    }
}

#[derive(Default)]
struct Builder {
    rules: Vec<String>,
    counter: usize,
}

impl Builder {
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{}", self.counter)
    }

    /// A rule for a value of `schema`; returns the rule's name.
    fn value_rule(&mut self, prefix: &str, schema: &Value) -> String {
        let Some(obj) = schema.as_object() else {
            // `true` or anything unreadable: any JSON value.
            return "value".into();
        };
        if let Some(options) = obj.get("enum").and_then(Value::as_array) {
            let alts: Vec<String> = options.iter().map(|v| lit(&render_value(v))).collect();
            if alts.is_empty() {
                return "value".into();
            }
            let name = self.fresh(prefix);
            self.rules.push(format!("{name} ::= {}", alts.join(" | ")));
            return name;
        }
        if let Some(c) = obj.get("const") {
            let name = self.fresh(prefix);
            self.rules
                .push(format!("{name} ::= {}", lit(&render_value(c))));
            return name;
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = obj.get(key).and_then(Value::as_array) {
                let alts: Vec<String> =
                    options.iter().map(|s| self.value_rule(prefix, s)).collect();
                if alts.is_empty() {
                    return "value".into();
                }
                let name = self.fresh(prefix);
                self.rules.push(format!("{name} ::= {}", alts.join(" | ")));
                return name;
            }
        }
        match obj.get("type") {
            Some(Value::String(t)) => self.typed_rule(prefix, t, schema),
            Some(Value::Array(types)) => {
                let alts: Vec<String> = types
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|t| self.typed_rule(prefix, t, schema))
                    .collect();
                if alts.is_empty() {
                    return "value".into();
                }
                let name = self.fresh(prefix);
                self.rules.push(format!("{name} ::= {}", alts.join(" | ")));
                name
            }
            _ if obj.contains_key("properties") => self.object_rule(prefix, schema, false),
            _ => "value".into(),
        }
    }

    fn typed_rule(&mut self, prefix: &str, t: &str, schema: &Value) -> String {
        match t {
            "string" => "string".into(),
            "integer" => "integer".into(),
            "number" => "number".into(),
            "boolean" => "boolean".into(),
            "null" => "null".into(),
            "object" => self.object_rule(prefix, schema, false),
            "array" => {
                let item = match schema.get("items") {
                    Some(items) => self.value_rule(prefix, items),
                    None => "value".into(),
                };
                let name = self.fresh(prefix);
                self.rules
                    .push(format!("{name} ::= \"[\" ({item} (\", \" {item})*)? \"]\""));
                name
            }
            _ => "value".into(),
        }
    }

    /// An object with the schema's properties: the required ones always, in
    /// the schema's order, then any of the optional ones, in order. Other
    /// keys are not admitted. A schema without properties admits `{}` only
    /// when `closed_if_empty` (a tool without arguments), else any object.
    fn object_rule(&mut self, prefix: &str, schema: &Value, closed_if_empty: bool) -> String {
        let props = schema.get("properties").and_then(Value::as_object);
        let Some(props) = props.filter(|p| !p.is_empty()) else {
            if closed_if_empty {
                let name = self.fresh(prefix);
                self.rules.push(format!("{name} ::= \"{{}}\""));
                return name;
            }
            return "object".into();
        };
        let required: BTreeSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut req = Vec::new();
        let mut opt = Vec::new();
        for (key, sub) in props {
            let value = self.value_rule(prefix, sub);
            let kv = format!("{} {value}", lit(&format!("\"{}\": ", json_escape(key))));
            if required.contains(key.as_str()) {
                req.push(kv);
            } else {
                opt.push(kv);
            }
        }
        let name = self.fresh(prefix);
        let body = if !req.is_empty() {
            let mut body = req.join(" \", \" ");
            for kv in &opt {
                let _ = write!(body, " (\", \" {kv})?");
            }
            body
        } else {
            // Any ordered subset of the optional properties, without a
            // leading comma: first_i = kv_i rest_{i+1} | first_{i+1}.
            let n = opt.len();
            let mut firsts = Vec::new();
            for (i, kv) in opt.iter().enumerate() {
                let rest: String = opt[i + 1..n]
                    .iter()
                    .map(|kv| format!(" (\", \" {kv})?"))
                    .collect();
                firsts.push(format!("({kv}{rest})"));
            }
            format!("({})?", firsts.join(" | "))
        };
        self.rules.push(format!("{name} ::= \"{{\" {body} \"}}\""));
        name
    }
}

/// A GBNF string literal matching `s` exactly.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The inside of a JSON string literal for `s`.
fn json_escape(s: &str) -> String {
    let quoted = Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// JSON primitives. Strings admit no raw control characters (so no
/// newlines: one line of text per answer) and are what a runaway model
/// would fill, which the caller's token limit bounds.
const PRIMITIVES: &str = r#"string ::= "\"" char* "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])
integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" (string ": " value (", " string ": " value)*)? "}"
array ::= "[" (value (", " value)*)? "]"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forced_stretches_spell_out_the_grammars_layout() {
        let tools = vec![
            ToolSpec::new("orders__get_order", "", json!({"type": "object"})),
            ToolSpec::new("say_hello", "", json!({"type": "object"})),
        ];
        let forced = ForcedText::new(&tools, ToolChoice::Auto);
        assert_eq!(forced.after(""), Some(r#"{"name":"#));
        assert_eq!(
            forced.after(r#"{"name": "orders__get_order"#),
            Some(r#"", "arguments":"#)
        );
        // `say` might still become `say_hello`: nothing is forced yet.
        assert_eq!(forced.after(r#"{"name": "say"#), None);
        assert_eq!(forced.after(r#"{"name": "orders__get"#), None);
        assert_eq!(forced.after(r#"{"name":"#), None);

        let say_only = ForcedText::new(&[], ToolChoice::Auto);
        let decision = format!(
            "{}{}{}",
            say_only.after("").unwrap(),
            r#" "say"#,
            say_only.after(r#"{"name": "say"#).unwrap()
        );
        // Forced text plus the model's ` "` is exactly the `say` prefix.
        assert_eq!(format!("{decision} \""), SAY_PREFIX);
        assert_eq!(
            ForcedText::new(&tools, ToolChoice::Required).after(r#"{"name": "say"#),
            None
        );
    }

    fn tools() -> Vec<ToolSpec> {
        vec![
            ToolSpec::new(
                "orders__cancel_order",
                "Cancel an order",
                json!({"type": "object", "properties": {
                    "order_id": {"type": "string"},
                    "reason": {"type": "string", "enum": ["damaged", "late"]},
                    "notify": {"type": "boolean"}
                }, "required": ["order_id", "reason"]}),
            ),
            ToolSpec::new("clock__now", "Time", json!({"type": "object"})),
        ]
    }

    #[test]
    fn grammar_mentions_every_tool_and_say() {
        let g = tool_choice_grammar(&tools(), ToolChoice::Auto).unwrap();
        assert!(
            g.contains(r#""\"orders__cancel_order\", \"arguments\": ""#),
            "{g}"
        );
        assert!(g.contains("say ::="));
        assert!(g.contains(r#""\"damaged\"" | "\"late\"""#), "{g}");
        assert!(g.contains(r#"(", " "\"notify\": " boolean)?"#), "{g}");
        let g = tool_choice_grammar(&tools(), ToolChoice::SayOnly).unwrap();
        assert!(!g.contains("tool-0"));
        let g = tool_choice_grammar(&tools(), ToolChoice::Required).unwrap();
        assert!(!g.contains("say ::="));
        assert!(tool_choice_grammar(&[], ToolChoice::Required).is_err());
    }

    #[test]
    fn parse_and_render_round_trip() {
        let args = json!({"order_id": "1042", "reason": "late"});
        let text = render_decision("orders__cancel_order", &args);
        assert_eq!(
            text,
            r#"{"name": "orders__cancel_order", "arguments": {"order_id": "1042", "reason": "late"}}"#
        );
        let d = parse_decision(&text, &tools()).unwrap();
        assert_eq!(
            d,
            Decision::Call {
                name: "orders__cancel_order".into(),
                arguments: args
            }
        );
        let d = parse_decision(r#"{"name": "say", "arguments": {"text": "Hi!"}}"#, &[]).unwrap();
        assert_eq!(d, Decision::Say("Hi!".into()));
        assert!(matches!(
            parse_decision(r#"{"name": "nope", "arguments": {}}"#, &tools()),
            Err(ParseDecisionError::UnknownTool(_))
        ));
    }

    #[test]
    fn say_stream_unescapes_across_pieces() {
        let full = r#"{"name": "say", "arguments": {"text": "Hi \"there\"\n\u00e9\ud83d\ude00!"}}"#;
        let mut s = SayStream::default();
        let mut out = String::new();
        for c in full.chars() {
            out.push_str(&s.push(&c.to_string()));
        }
        assert_eq!(out, "Hi \"there\"\n\u{e9}\u{1F600}!");
        let mut s = SayStream::default();
        assert_eq!(s.push(r#"{"name": "orders"#), "");
        assert!(!s.is_say());
    }
}
