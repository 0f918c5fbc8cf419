//! The JSON parlor answers `/v1/chat/completions` with: a whole
//! `chat.completion`, or the `chat.completion.chunk`s of a stream. Tool
//! calls are always structured `tool_calls`, never JSON inside `content`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::served_model::{Answer, FinishReason, Reply, Usage};

/// What every object of one response shares.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Completion {
    pub fn new(model: &str) -> Self {
        Self {
            id: random_id("chatcmpl-"),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_string(),
        }
    }

    /// The whole `chat.completion` for a non-streaming request.
    pub fn body(&self, answer: &Answer) -> Value {
        let message = match &answer.reply {
            Reply::Text(text) => json!({"role": "assistant", "content": text}),
            Reply::Call { name, arguments } => json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [tool_call(name, arguments)],
            }),
        };
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "finish_reason": answer.finish.as_str(),
            }],
            "usage": usage(&answer.usage),
        })
    }

    /// A `chat.completion.chunk` with one choice.
    fn chunk(&self, delta: Value, finish: Option<FinishReason>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "finish_reason": finish.map(FinishReason::as_str),
            }],
        })
    }

    /// The first chunk of a stream.
    pub fn role_chunk(&self) -> Value {
        self.chunk(json!({"role": "assistant"}), None)
    }

    pub fn content_chunk(&self, text: &str) -> Value {
        self.chunk(json!({"content": text}), None)
    }

    /// A tool call, whole, in one chunk.
    pub fn tool_call_chunk(&self, name: &str, arguments: &Value) -> Value {
        let mut call = tool_call(name, arguments);
        call["index"] = json!(0);
        self.chunk(json!({"tool_calls": [call]}), None)
    }

    pub fn finish_chunk(&self, finish: FinishReason) -> Value {
        self.chunk(json!({}), Some(finish))
    }

    /// The last chunk when the client asked for `stream_options.include_usage`.
    pub fn usage_chunk(&self, u: &Usage) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(u),
        })
    }
}

fn tool_call(name: &str, arguments: &Value) -> Value {
    json!({
        "id": random_id("call_"),
        "type": "function",
        "function": {"name": name, "arguments": arguments.to_string()},
    })
}

fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// `prefix` and 24 random hex digits (std's per-instance random hasher
/// keys; ids only need to be unique, not secret).
fn random_id(prefix: &str) -> String {
    let mut out = String::from(prefix);
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u8(0);
        out.push_str(&format!("{:012x}", h.finish() >> 16));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_is_structured() {
        let c = Completion::new("m");
        let body = c.body(&Answer {
            reply: Reply::Call {
                name: "get_order".into(),
                arguments: json!({"order_id": "7"}),
            },
            finish: FinishReason::ToolCalls,
            usage: Usage {
                prompt_tokens: 10,
                cached_tokens: 4,
                completion_tokens: 5,
            },
        });
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            "{\"order_id\":\"7\"}"
        );
        assert!(message["tool_calls"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("call_"));
        assert_eq!(body["usage"]["total_tokens"], 15);
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_ne!(random_id("x"), random_id("x"));
    }
}
