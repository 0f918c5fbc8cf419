//! What the tool loop calls tools through. The MCP pool is the real one; the
//! trait keeps the loop testable with faults a real server cannot produce on
//! demand, and is where the policy layer (issue 5) sits: [`AuditedPool`]
//! records every call in the audit log before the model sees its result.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::Value;

use crate::llm::ToolSpec;
use crate::mcp::{AuditContext, AuditEntry, AuditLog, Decision, McpPool, ToolCallError};

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

/// The MCP pool with every call written to the audit log (durably) before
/// its result is returned; if the record cannot be written the result is
/// withheld (fail closed).
pub struct AuditedPool {
    pool: Arc<McpPool>,
    log: Arc<AuditLog>,
    /// Who is calling. One for the whole planner until callers are
    /// authenticated (issue 5 item 3); then it comes with each session.
    context: AuditContext,
}

/// What the model is told when the audit record could not be written.
pub const AUDIT_FAILED: &str = "the audit log could not be written";

impl AuditedPool {
    pub fn new(pool: Arc<McpPool>, log: Arc<AuditLog>, context: AuditContext) -> Self {
        Self { pool, log, context }
    }

    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }
}

#[async_trait]
impl Toolbox for AuditedPool {
    async fn specs(&self) -> Vec<ToolSpec> {
        self.pool.specs().await
    }

    /// The call and its record run on a task of their own: if the planner
    /// stops waiting (its call deadline, a barge-in), the call still ends
    /// (within the pool's own deadline) and is still recorded, so no tool
    /// that ran goes unaudited.
    async fn call(&self, name: &str, arguments: Value) -> ToolAnswer {
        let (pool, log, context) = (self.pool.clone(), self.log.clone(), self.context.clone());
        let name = name.to_string();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = pool.call_tool(&name, arguments.clone()).await;
            let latency = started.elapsed();
            let (server, tool) = pool.route(&name).unwrap_or_default();
            let tool = if tool.is_empty() { name.clone() } else { tool };
            let (answer, decision, reason) = match &result {
                Ok(out) => (
                    ToolAnswer {
                        text: out.text.clone(),
                        is_error: out.is_error,
                    },
                    Decision::Allowed,
                    None,
                ),
                // The gate refused it: nothing was sent to the server.
                Err(e @ ToolCallError::Quarantined { .. }) => (
                    ToolAnswer::error(e.as_output().text),
                    Decision::Denied,
                    Some(e.to_string()),
                ),
                Err(e) => (
                    ToolAnswer::error(e.as_output().text),
                    Decision::Failed,
                    Some(e.to_string()),
                ),
            };
            let entry = AuditEntry {
                context: &context,
                decision,
                server: &server,
                tool: &tool,
                arguments: &arguments,
                result: result.as_ref().ok().map(|o| o.text.as_bytes()),
                tool_error: answer.is_error && decision == Decision::Allowed,
                latency,
                reason: reason.as_deref(),
            };
            match log.append(&entry).await {
                Ok(_) => answer,
                Err(e) => {
                    tracing::error!(message = "Tool result withheld: audit write failed.", tool = %name, error = %e);
                    ToolAnswer::error(AUDIT_FAILED)
                }
            }
        });
        task.await
            .unwrap_or_else(|_| ToolAnswer::error(AUDIT_FAILED))
    }
}
