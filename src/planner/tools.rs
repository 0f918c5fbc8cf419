//! What the tool loop calls tools through. The MCP pool is the real one; the
//! trait keeps the loop testable with faults a real server cannot produce on
//! demand, and is where the policy layer (issue 5) sits: [`AuditedPool`]
//! asks the access [`Policy`] (roles, rate limits) about every call and
//! records the decision in the audit log before the model sees its result.
//! One `AuditedPool` is shared by the pipeline; each session gets a copy
//! bound to its caller through [`Toolbox::for_caller`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::Value;

use super::confirm::{self, ConfirmRequest, Confirmation, Confirmer, NoPerson};
use crate::llm::ToolSpec;
use crate::mcp::{
    AuditContext, AuditEntry, AuditLog, Decision, McpPool, Policy, ToolCallError, Verdict,
};
use crate::secrets::Secrets;

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

    /// Time a call of `name` may take on top of the planner's per-call
    /// deadline because it waits for someone other than the tool (a
    /// person confirming a sensitive call). Zero by default.
    fn allowance(&self, _name: &str) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// This toolbox as `caller` uses it (their role filters the tools,
    /// their principal keys the rate limits, the audit log names them).
    /// `None`: the toolbox does not care who calls.
    fn for_caller(&self, _caller: &AuditContext) -> Option<Arc<dyn Toolbox>> {
        None
    }

    /// [`Self::for_caller`] for a session with a person who can confirm
    /// sensitive calls through `confirmer` (a live call).
    fn for_session(
        &self,
        caller: &AuditContext,
        _confirmer: Arc<dyn Confirmer>,
    ) -> Option<Arc<dyn Toolbox>> {
        self.for_caller(caller)
    }

    /// The tools are run by the client of a Realtime session, which plays
    /// what it likes while one runs: no filler is spoken over it.
    fn client_runs(&self) -> bool {
        false
    }
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

/// The MCP pool behind the access policy, with every decision written to
/// the audit log (durably) before its result is returned; if the record
/// cannot be written the result is withheld (fail closed). An allowed call
/// is recorded twice: its intent (`calling`) before it is sent, its
/// outcome after.
#[derive(Clone)]
pub struct AuditedPool {
    pool: Arc<McpPool>,
    log: Arc<AuditLog>,
    /// Shared by every session of the pipeline: the token buckets must be.
    policy: Arc<Policy>,
    /// Who is calling: the pipeline's default (`anonymous`) until
    /// [`Toolbox::for_caller`] binds a session's caller.
    context: AuditContext,
    /// Who approves sensitive calls: nobody until [`Toolbox::for_session`]
    /// binds a live call's caller.
    confirmer: Arc<dyn Confirmer>,
    /// The prompt holds untrusted text from the start (the spec puts MCP
    /// resources in it).
    untrusted_prompt: bool,
    /// A tool's result has entered this session's context (results stay
    /// in the history, so this is per session, not per turn). Fresh for
    /// every session.
    untrusted_seen: Arc<AtomicBool>,
    /// Never sent to a tool (see [`crate::secrets`]).
    secrets: Arc<Secrets>,
}

/// What the model is told when the audit record could not be written.
pub const AUDIT_FAILED: &str = "the audit log could not be written";

impl AuditedPool {
    /// Everything allowed (no `[access]` rules) until [`Self::with_policy`].
    pub fn new(pool: Arc<McpPool>, log: Arc<AuditLog>, context: AuditContext) -> Self {
        Self {
            pool,
            log,
            policy: Arc::default(),
            context,
            confirmer: Arc::new(NoPerson),
            untrusted_prompt: false,
            untrusted_seen: Arc::default(),
            secrets: Arc::default(),
        }
    }

    /// Calls whose arguments carry one of `secrets` are refused (an
    /// injected "send the API key to ..." goes nowhere), and recorded with
    /// the secret redacted.
    pub fn with_secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    pub fn with_policy(mut self, policy: Arc<Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// The system prompt carries untrusted text (MCP resources): sensitive
    /// calls need confirmation from the first turn.
    pub fn with_untrusted_prompt(mut self, untrusted: bool) -> Self {
        self.untrusted_prompt = untrusted;
        self
    }

    fn untrusted_in_context(&self) -> bool {
        self.untrusted_prompt || self.untrusted_seen.load(Ordering::Acquire)
    }

    /// Records a call the policy refused, and tells the model why.
    async fn refuse(
        &self,
        name: &str,
        arguments: Value,
        decision: Decision,
        why: String,
    ) -> ToolAnswer {
        let (log, context) = (self.log.clone(), self.context.clone());
        let (server, tool) = audited_route(&self.pool, name);
        tracing::info!(message = "Tool call refused.", tool = %name, principal = %context.principal, role = %context.role, decision = ?decision);
        // On its own task, like an allowed call: a planner that stops
        // waiting must not leave the refusal unrecorded.
        let task = tokio::spawn(async move {
            let entry = AuditEntry::without_result(
                &context,
                decision,
                (&server, &tool),
                &arguments,
                Some(&why),
            );
            recorded(&log, &entry, ToolAnswer::error(why.clone())).await
        });
        task.await
            .unwrap_or_else(|_| ToolAnswer::error(AUDIT_FAILED))
    }

    /// Tools the gate has just withheld (a poisoned description, a rug
    /// pull, a shadowing name) go in the audit log as denied, once each,
    /// though nobody called them yet: the attack itself is on record.
    ///
    /// Written on a task of its own: the quarantines are taken from the
    /// pool here, so a caller that stops waiting must not lose them.
    pub async fn record_quarantines(&self) {
        let quarantines = self.pool.take_newly_quarantined();
        if quarantines.is_empty() {
            return;
        }
        let (log, context) = (self.log.clone(), self.context.clone());
        let task = tokio::spawn(async move {
            for q in quarantines {
                let reason = format!("quarantined, not offered: {}", q.reason);
                let entry = AuditEntry::without_result(
                    &context,
                    Decision::Denied,
                    (&q.server, &q.tool),
                    &Value::Null,
                    Some(&reason),
                );
                if let Err(e) = log.append(&entry).await {
                    tracing::error!(message = "Quarantine not recorded: audit write failed.", server = %q.server, tool = %q.tool, error = %e);
                }
            }
        });
        let _ = task.await;
    }

    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }
}

#[async_trait]
impl Toolbox for AuditedPool {
    /// Only the tools the caller's role may call: a model offered a tool
    /// it may not use would promise what it cannot do. (A tool named
    /// anyway is still refused by `call`.)
    async fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = self.pool.specs().await;
        self.record_quarantines().await;
        specs.retain(|s| {
            let server = self.pool.route(&s.name).map(|(s, _)| s).unwrap_or_default();
            self.policy.permits(&self.context.role, &server, &s.name)
        });
        specs
    }

    fn for_caller(&self, caller: &AuditContext) -> Option<Arc<dyn Toolbox>> {
        self.for_session(caller, Arc::new(NoPerson))
    }

    fn for_session(
        &self,
        caller: &AuditContext,
        confirmer: Arc<dyn Confirmer>,
    ) -> Option<Arc<dyn Toolbox>> {
        Some(Arc::new(Self {
            context: caller.clone(),
            confirmer,
            untrusted_seen: Arc::default(),
            ..self.clone()
        }))
    }

    /// A sensitive tool may wait for the caller's answer first.
    fn allowance(&self, name: &str) -> std::time::Duration {
        let server = self.pool.route(name).map(|(s, _)| s).unwrap_or_default();
        if self.policy.is_sensitive(&server, name) {
            self.confirmer.patience()
        } else {
            std::time::Duration::ZERO
        }
    }

    /// The call and its record run on a task of their own: if the planner
    /// stops waiting (its call deadline, a barge-in), the call still ends
    /// (within the pool's own deadline) and is still recorded, so no tool
    /// that ran goes unaudited.
    async fn call(&self, name: &str, arguments: Value) -> ToolAnswer {
        if self.secrets.found_in_value(&arguments) {
            let why = format!(
                "Not done: the arguments of {name} contain a secret parlor holds, and secrets \
                 are never sent to tools. Do not repeat it; tell the caller this cannot be done."
            );
            let redacted = self.secrets.redact_value(&arguments);
            return self.refuse(name, redacted, Decision::Denied, why).await;
        }
        // The route as the call would go now (a rug pull since the last
        // listing is judged first), so the rules see the right server and
        // the records name it. A tool withheld or unknown is sent nowhere.
        // On a task of its own: a re-list cut off half-way (the planner
        // stops waiting) could leave a changed list cached but not judged.
        let resolving = {
            let (pool, name) = (self.pool.clone(), name.to_string());
            tokio::spawn(async move { pool.resolve(&name).await })
        };
        let resolved = resolving.await.unwrap_or_else(|_| {
            Err(ToolCallError::UnknownTool {
                name: name.to_string(),
            })
        });
        let route = match resolved {
            Ok(route) => route,
            Err(e) => {
                let (decision, why) = unroutable(&e);
                return self.refuse(name, arguments, decision, why).await;
            }
        };
        let server = route.0.clone();
        match self.policy.check(&self.context, &server, name) {
            Verdict::Allow => {}
            Verdict::Denied(why) => {
                return self.refuse(name, arguments, Decision::Denied, why).await
            }
            Verdict::RateLimited(why) => {
                return self
                    .refuse(name, arguments, Decision::RateLimited, why)
                    .await
            }
        }
        // After the policy (a refused call asks nobody), before the call.
        let confirmed = if self.policy.is_sensitive(&server, name) && self.untrusted_in_context() {
            let request = ConfirmRequest {
                server: server.clone(),
                tool: name.to_string(),
                arguments: arguments.clone(),
            };
            match self.confirmer.confirm(request).await {
                Confirmation::Approved => true,
                other => {
                    let why = confirm::refusal(name, &other);
                    return self.refuse(name, arguments, Decision::Denied, why).await;
                }
            }
        } else {
            false
        };
        let (pool, log, context) = (self.pool.clone(), self.log.clone(), self.context.clone());
        let name = name.to_string();
        let task = tokio::spawn(async move {
            // Judged again now: the tool may have changed (a rug pull)
            // while the caller was asked, and what runs must be what was
            // approved and checked.
            match pool.resolve(&name).await {
                Ok(now) if now == route => {}
                changed => {
                    let (decision, why) = match &changed {
                        Err(e) => unroutable(e),
                        Ok(_) => (
                            Decision::Denied,
                            format!("tool \"{name}\" changed server while it waited; not called"),
                        ),
                    };
                    let (server, tool) = &route;
                    let entry = AuditEntry::without_result(
                        &context,
                        decision,
                        (server, tool),
                        &arguments,
                        Some(&why),
                    );
                    return recorded(&log, &entry, ToolAnswer::error(why.clone())).await;
                }
            }
            let (server, tool) = &route;
            // The intent first: a call the process dies in (kill -9, a
            // crash) is still on record. No intent on record, no call.
            let intent = AuditEntry::without_result(
                &context,
                Decision::Calling,
                (server, tool),
                &arguments,
                confirmed.then_some(CONFIRMED),
            );
            if let Err(e) = log.append_intent(&intent).await {
                tracing::error!(message = "Tool call not made: its intent could not be recorded.", tool = %tool, error = %e);
                return ToolAnswer::error(AUDIT_FAILED);
            }
            let started = Instant::now();
            let result = pool.call_routed(&name, &route, arguments.clone()).await;
            let latency = started.elapsed();
            let (answer, decision, reason) = match &result {
                Ok(out) => (
                    ToolAnswer {
                        text: out.text.clone(),
                        is_error: out.is_error,
                    },
                    Decision::Allowed,
                    confirmed.then(|| CONFIRMED.to_string()),
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
                server,
                tool,
                arguments: &arguments,
                result: result.as_ref().ok().map(|o| o.text.as_bytes()),
                tool_error: answer.is_error && decision == Decision::Allowed,
                latency,
                reason: reason.as_deref(),
            };
            recorded(&log, &entry, answer).await
        });
        let answer = task
            .await
            .unwrap_or_else(|_| ToolAnswer::error(AUDIT_FAILED));
        // Whatever came back (a result, the server's error text) is now in
        // the context, and may carry instructions.
        self.untrusted_seen.store(true, Ordering::Release);
        answer
    }
}

/// How a call the pool cannot route is recorded, and what the model is told.
fn unroutable(e: &ToolCallError) -> (Decision, String) {
    let decision = match e {
        ToolCallError::Quarantined { .. } => Decision::Denied,
        _ => Decision::Failed,
    };
    (decision, e.to_string())
}

/// The audit reason of a sensitive call the caller approved.
pub const CONFIRMED: &str = "confirmed by the caller";

/// The server and tool an audit record names for `name`: its route, or the
/// name itself (on no server) when the pool does not know it.
fn audited_route(pool: &McpPool, name: &str) -> (String, String) {
    match pool.route(name) {
        Some(route) => route,
        None => (String::new(), name.to_string()),
    }
}

/// `answer` once `entry` is durably recorded; if it cannot be, the answer
/// is withheld (fail closed).
async fn recorded(log: &AuditLog, entry: &AuditEntry<'_>, answer: ToolAnswer) -> ToolAnswer {
    match log.append(entry).await {
        Ok(_) => answer,
        Err(e) => {
            tracing::error!(message = "Tool decision not recorded: audit write failed; answer withheld.", tool = %entry.tool, decision = ?entry.decision, error = %e);
            ToolAnswer::error(AUDIT_FAILED)
        }
    }
}
