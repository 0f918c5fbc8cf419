//! A session's conversation, kept within a token budget.
//!
//! The budget is what lets a long call go on without the prompt outgrowing
//! the model's context (and, for a local model, without every turn paying
//! for an ever longer prompt). Whole turns are dropped from the oldest, so a
//! tool call never loses its result and the model never sees half a turn.

use crate::llm::ChatMessage;

/// Tokens per message besides its text (role markers, separators).
const MESSAGE_OVERHEAD: usize = 4;

/// A rough token count that needs no tokenizer: about four characters a
/// token for English, the usual rule of thumb for GPT and Qwen vocabularies.
/// It only has to be good enough to keep the prompt inside a budget.
pub fn estimate_tokens(message: &ChatMessage) -> usize {
    let chars = match message {
        ChatMessage::System { content }
        | ChatMessage::User { content }
        | ChatMessage::Assistant { content } => content.len(),
        ChatMessage::ToolCall(call) => call.name.len() + call.arguments.to_string().len(),
        ChatMessage::ToolResult { name, content, .. } => name.len() + content.len(),
    };
    chars.div_ceil(4) + MESSAGE_OVERHEAD
}

/// One conversation: the messages after the system prompt.
#[derive(Debug, Clone, Default)]
pub struct History {
    messages: Vec<ChatMessage>,
}

impl History {
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Append a finished turn (a user message and what followed it).
    pub fn push_turn(&mut self, turn: impl IntoIterator<Item = ChatMessage>) {
        self.messages.extend(turn);
    }

    pub fn estimated_tokens(&self) -> usize {
        self.messages.iter().map(estimate_tokens).sum()
    }

    /// Drop the oldest whole turns until the rest fits `budget` tokens. The
    /// newest turn is always kept, even alone over budget: the model must
    /// see what it is answering. Returns how many turns were dropped.
    pub fn trim_to(&mut self, budget: usize) -> usize {
        let mut dropped = 0;
        while self.estimated_tokens() > budget {
            // The next turn starts at the second user message.
            let next_turn = self
                .messages
                .iter()
                .enumerate()
                .skip(1)
                .find(|(_, m)| matches!(m, ChatMessage::User { .. }))
                .map(|(i, _)| i);
            match next_turn {
                Some(i) => {
                    self.messages.drain(..i);
                    dropped += 1;
                }
                None => break,
            }
        }
        dropped
    }

    /// The newest turn's reply was cut short by the caller (barge-in):
    /// keep only the words they heard, `heard`, as what was said. Tool calls
    /// and their results stay, as they did happen; without a word heard the
    /// turn keeps no reply at all.
    pub fn keep_heard(&mut self, heard: &str) {
        let Some(user) = self
            .messages
            .iter()
            .rposition(|m| matches!(m, ChatMessage::User { .. }))
        else {
            return;
        };
        let tail = self.messages.split_off(user + 1);
        self.messages.extend(
            tail.into_iter()
                .filter(|m| !matches!(m, ChatMessage::Assistant { .. })),
        );
        if !heard.trim().is_empty() {
            self.messages.push(ChatMessage::assistant(heard.trim()));
        }
    }

    pub fn clear(&mut self) {
        self.messages.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolCall;
    use serde_json::json;

    fn turn(n: usize) -> Vec<ChatMessage> {
        vec![
            ChatMessage::user(format!("question {n} {}", "x".repeat(100))),
            ChatMessage::ToolCall(ToolCall {
                id: format!("c{n}"),
                name: "get_order".into(),
                arguments: json!({"order_id": n}),
            }),
            ChatMessage::tool_result(format!("c{n}"), "get_order", "y".repeat(200)),
            ChatMessage::assistant(format!("answer {n}")),
        ]
    }

    #[test]
    fn drops_whole_oldest_turns_until_within_budget() {
        let mut h = History::default();
        for n in 0..10 {
            h.push_turn(turn(n));
        }
        let per_turn = h.estimated_tokens() / 10;
        let dropped = h.trim_to(per_turn * 3);
        assert_eq!(dropped, 7);
        assert!(h.estimated_tokens() <= per_turn * 3);
        assert!(
            matches!(&h.messages()[0], ChatMessage::User { content } if content.starts_with("question 7"))
        );
        // Every call still has its result.
        let calls = h
            .messages()
            .iter()
            .filter(|m| matches!(m, ChatMessage::ToolCall(_)))
            .count();
        let results = h
            .messages()
            .iter()
            .filter(|m| matches!(m, ChatMessage::ToolResult { .. }))
            .count();
        assert_eq!((calls, results), (3, 3));
    }

    #[test]
    fn keeps_the_newest_turn_even_over_budget() {
        let mut h = History::default();
        h.push_turn(turn(0));
        h.push_turn(turn(1));
        assert_eq!(h.trim_to(1), 1);
        assert_eq!(h.messages().len(), 4);
    }

    #[test]
    fn keep_heard_replaces_the_newest_reply_with_what_was_heard() {
        let mut history = History::default();
        history.push_turn(turn(1));
        history.push_turn(turn(2));
        let before = history.messages().len();
        history.keep_heard("Your order");
        let messages = history.messages();
        assert_eq!(messages.len(), before);
        assert!(
            matches!(messages.last(), Some(ChatMessage::Assistant { content }) if content == "Your order")
        );
        // The first turn and the second's tool call and result are untouched.
        assert!(matches!(
            messages[messages.len() - 2],
            ChatMessage::ToolResult { .. }
        ));
        assert_eq!(messages[..4], turn(1)[..]);

        history.keep_heard("  ");
        assert!(matches!(
            history.messages().last(),
            Some(ChatMessage::ToolResult { .. })
        ));
    }

    #[test]
    fn within_budget_nothing_changes() {
        let mut h = History::default();
        h.push_turn(turn(0));
        let before = h.messages().to_vec();
        assert_eq!(h.trim_to(10_000), 0);
        assert_eq!(h.messages(), &before[..]);
    }
}
