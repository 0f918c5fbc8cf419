//! What the tool loop calls tools through. The MCP pool is the real one; the
//! trait keeps the loop testable with faults a real server cannot produce on
//! demand, and is where the policy layer (issue 5) will sit.

use async_trait::async_trait;
use serde_json::Value;

use crate::llm::ToolSpec;
use crate::mcp::McpPool;

/// A tool's answer as the model will read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolAnswer {
    pub text: String,
    /// The tool failed (or could not be called); `text` says why.
    pub is_error: bool,
}

impl ToolAnswer {
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_error: true,
        }
    }
}

/// The tools on offer and a way to call them.
#[async_trait]
pub trait Toolbox: Send + Sync {
    /// Every tool, as the model sees it. Called once per turn, so dynamic
    /// discovery (a server's `list_changed`) reaches the next turn.
    async fn specs(&self) -> Vec<ToolSpec>;

    /// Call one tool. Never fails: a failure is an error answer for the model.
    async fn call(&self, name: &str, arguments: Value) -> ToolAnswer;
}

/// No tools: the planner only talks.
pub struct NoTools;

#[async_trait]
impl Toolbox for NoTools {
    async fn specs(&self) -> Vec<ToolSpec> {
        Vec::new()
    }

    async fn call(&self, name: &str, _arguments: Value) -> ToolAnswer {
        ToolAnswer::error(format!("unknown tool \"{name}\": no tools are available"))
    }
}

#[async_trait]
impl Toolbox for McpPool {
    async fn specs(&self) -> Vec<ToolSpec> {
        self.tools()
            .await
            .into_iter()
            .map(|t| ToolSpec {
                name: t.name,
                description: t.description.unwrap_or_default(),
                parameters: t.input_schema,
            })
            .collect()
    }

    async fn call(&self, name: &str, arguments: Value) -> ToolAnswer {
        let output = match self.call_tool(name, arguments).await {
            Ok(output) => output,
            Err(e) => e.as_output(),
        };
        ToolAnswer {
            text: output.text,
            is_error: output.is_error,
        }
    }
}
