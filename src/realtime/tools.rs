//! Function tools a Realtime client declares in `session.update` and runs
//! itself: a [`Toolbox`] whose calls go to the client and wait for its
//! `function_call_output`.
//!
//! The planner is built when the session opens, before the client says
//! which tools it has, so [`ClientTools`] wraps the pipeline's own toolbox
//! and switches at each turn: while the client has declared tools, exactly
//! those are offered (the MCP tools are not); otherwise every call goes to
//! the pipeline's toolbox as before. A client call is a [`ToolRequest`] on
//! a channel the route's writer reads ([`super::Session::on_tool_request`]
//! turns it into the protocol's events); the answer comes back on a
//! oneshot. A call the planner stops waiting for (its deadline, a
//! barge-in) tells the session so on drop, so the session never waits for
//! an output nobody will read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::llm::ToolSpec;
use crate::mcp::AuditContext;
use crate::planner::{Confirmer, ToolAnswer, Toolbox};

/// What the toolbox tells the session.
#[derive(Debug)]
pub enum ToolRequest {
    /// Ask the client to run `name` with `arguments`; `answer` gets its
    /// output.
    Call {
        id: u64,
        name: String,
        arguments: Value,
        answer: oneshot::Sender<ToolAnswer>,
    },
    /// Call `id` is no longer waited for.
    Withdrawn { id: u64 },
}

/// The tools the client declared, as the session sets them.
#[derive(Default)]
struct Declared {
    /// `None`: the client declared none; the pipeline's tools are used.
    specs: Option<Vec<ToolSpec>>,
    /// `tool_choice: "none"`: no tool is offered this session.
    none: bool,
    next_id: u64,
}

/// The session's handle on what the client declared; shared with every
/// [`ClientTools`] of the session.
#[derive(Clone)]
pub struct ClientToolsHandle {
    declared: Arc<Mutex<Declared>>,
    requests: mpsc::UnboundedSender<ToolRequest>,
}

impl ClientToolsHandle {
    /// A handle, and the requests the session must answer.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ToolRequest>) {
        let (requests, asked) = mpsc::unbounded_channel();
        let handle = Self {
            declared: Arc::default(),
            requests,
        };
        (handle, asked)
    }

    /// The client's tools from now on (`None` or empty: the pipeline's).
    pub fn declare(&self, specs: Option<Vec<ToolSpec>>) {
        let mut declared = self.declared.lock().expect("declared tools poisoned");
        declared.specs = specs.filter(|s| !s.is_empty());
    }

    /// `tool_choice: "none"` (no tools offered) or not.
    pub fn offer_none(&self, none: bool) {
        self.declared.lock().expect("declared tools poisoned").none = none;
    }

    /// Whether the client runs the tools now.
    pub fn client_runs(&self) -> bool {
        self.declared
            .lock()
            .expect("declared tools poisoned")
            .specs
            .is_some()
    }

    /// `inner` (the pipeline's toolbox for this session) behind the
    /// client's tools.
    pub fn wrap(&self, inner: Arc<dyn Toolbox>) -> Arc<dyn Toolbox> {
        Arc::new(ClientTools {
            handle: self.clone(),
            inner,
        })
    }
}

/// The client's tools when it declared some, `inner`'s otherwise.
pub struct ClientTools {
    handle: ClientToolsHandle,
    inner: Arc<dyn Toolbox>,
}

impl ClientTools {
    /// The id of a call of `name` to the client; `None` when the client
    /// declared no tools (the pipeline's run it); an error answer for a
    /// name the client did not declare.
    fn client_call_id(&self, name: &str) -> Result<Option<u64>, ToolAnswer> {
        let mut declared = self
            .handle
            .declared
            .lock()
            .expect("declared tools poisoned");
        let Some(specs) = &declared.specs else {
            return Ok(None);
        };
        if !specs.iter().any(|s| s.name == name) {
            return Err(ToolAnswer::error(format!(
                "unknown tool \"{name}\": the client offers {}",
                specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        declared.next_id += 1;
        Ok(Some(declared.next_id))
    }
}

/// Tells the session a call is no longer waited for, however the wait
/// ends (an answer, the planner's deadline, a cancelled turn).
struct Waiting<'a> {
    id: u64,
    requests: &'a mpsc::UnboundedSender<ToolRequest>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let _ = self.requests.send(ToolRequest::Withdrawn { id: self.id });
    }
}

#[async_trait]
impl Toolbox for ClientTools {
    async fn specs(&self) -> Vec<ToolSpec> {
        let declared = {
            let declared = self
                .handle
                .declared
                .lock()
                .expect("declared tools poisoned");
            if declared.none {
                return Vec::new();
            }
            declared.specs.clone()
        };
        match declared {
            Some(specs) => specs,
            None => self.inner.specs().await,
        }
    }

    async fn call(&self, name: &str, arguments: Value) -> ToolAnswer {
        let id = match self.client_call_id(name) {
            Ok(Some(id)) => id,
            Ok(None) => return self.inner.call(name, arguments).await,
            Err(unknown) => return unknown,
        };
        let (answer, answered) = oneshot::channel();
        let request = ToolRequest::Call {
            id,
            name: name.to_string(),
            arguments,
            answer,
        };
        if self.handle.requests.send(request).is_err() {
            return ToolAnswer::error("the client has gone; the tool was not run");
        }
        let _waiting = Waiting {
            id,
            requests: &self.handle.requests,
        };
        answered.await.unwrap_or_else(|_| {
            ToolAnswer::error(format!(
                "the client did not answer the call of {name}; it was not run"
            ))
        })
    }

    /// A call the client runs waits on the client alone, which the
    /// planner's deadline already covers; a call of the pipeline's tools
    /// may wait for the caller's confirmation on top, as `inner` says.
    fn allowance(&self, name: &str) -> Duration {
        if self.handle.client_runs() {
            Duration::ZERO
        } else {
            self.inner.allowance(name)
        }
    }

    fn for_caller(&self, caller: &AuditContext) -> Option<Arc<dyn Toolbox>> {
        let inner = self.inner.for_caller(caller)?;
        Some(self.handle.wrap(inner))
    }

    fn for_session(
        &self,
        caller: &AuditContext,
        confirmer: Arc<dyn Confirmer>,
    ) -> Option<Arc<dyn Toolbox>> {
        let inner = self.inner.for_session(caller, confirmer)?;
        Some(self.handle.wrap(inner))
    }

    fn client_runs(&self) -> bool {
        self.handle.client_runs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::NoTools;

    fn weather() -> ToolSpec {
        ToolSpec::new(
            "get_weather",
            "The weather in a city.",
            serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        )
    }

    #[tokio::test]
    async fn declared_tools_replace_the_pipelines_and_calls_go_to_the_client() {
        let (handle, mut asked) = ClientToolsHandle::new();
        let tools = handle.wrap(Arc::new(NoTools));
        assert!(tools.specs().await.is_empty());
        assert!(!tools.client_runs());
        handle.declare(Some(vec![weather()]));
        assert_eq!(tools.specs().await, vec![weather()]);
        let call = tokio::spawn({
            let tools = tools.clone();
            async move {
                tools
                    .call("get_weather", serde_json::json!({"city": "Lisbon"}))
                    .await
            }
        });
        let Some(ToolRequest::Call {
            id,
            name,
            arguments,
            answer,
        }) = asked.recv().await
        else {
            panic!("no call")
        };
        assert_eq!(name, "get_weather");
        assert_eq!(arguments["city"], "Lisbon");
        answer
            .send(ToolAnswer {
                text: "foggy".into(),
                is_error: false,
            })
            .unwrap();
        assert_eq!(call.await.unwrap().text, "foggy");
        assert!(matches!(
            asked.recv().await,
            Some(ToolRequest::Withdrawn { id: w }) if w == id
        ));
        // An undeclared name is not sent to the client.
        let wrong = tools.call("delete_all", Value::Null).await;
        assert!(
            wrong.is_error && wrong.text.contains("get_weather"),
            "{wrong:?}"
        );
        handle.offer_none(true);
        assert!(tools.specs().await.is_empty());
    }

    /// A pipeline toolbox whose every tool may wait for a confirmation.
    struct Confirming;

    #[async_trait]
    impl Toolbox for Confirming {
        async fn specs(&self) -> Vec<ToolSpec> {
            Vec::new()
        }

        async fn call(&self, name: &str, _arguments: Value) -> ToolAnswer {
            ToolAnswer::error(format!("{name} is not run here"))
        }

        fn allowance(&self, _name: &str) -> Duration {
            Duration::from_secs(30)
        }
    }

    #[test]
    fn the_pipelines_allowance_holds_until_the_client_declares_tools() {
        let (handle, _asked) = ClientToolsHandle::new();
        let tools = handle.wrap(Arc::new(Confirming));
        assert_eq!(
            tools.allowance("orders__cancel_order"),
            Duration::from_secs(30)
        );
        handle.declare(Some(vec![weather()]));
        assert_eq!(tools.allowance("get_weather"), Duration::ZERO);
        handle.declare(None);
        assert_eq!(
            tools.allowance("orders__cancel_order"),
            Duration::from_secs(30)
        );
    }

    #[tokio::test]
    async fn a_call_given_up_is_withdrawn() {
        let (handle, mut asked) = ClientToolsHandle::new();
        let tools = handle.wrap(Arc::new(NoTools));
        handle.declare(Some(vec![weather()]));
        let given_up = tokio::time::timeout(
            Duration::from_millis(10),
            tools.call("get_weather", Value::Null),
        )
        .await;
        assert!(given_up.is_err());
        assert!(matches!(asked.recv().await, Some(ToolRequest::Call { .. })));
        assert!(matches!(
            asked.recv().await,
            Some(ToolRequest::Withdrawn { .. })
        ));
    }
}
