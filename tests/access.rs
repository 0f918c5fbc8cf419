//! Callers and the access policy (issue 5 items 3 and 4), with real parts:
//! parlor's HTTP server on a real socket with a keyring, and parlor's
//! orders MCP server behind the policy layer with a real audit log.
//!
//! Driving the planner's LLM to call one given tool is unreliable, so the
//! role and rate-limit tests call the tool layer (`Toolbox`) directly, as
//! the planner does, bound to a caller with `for_caller` as each session is.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parlor::access::{AccessSpec, Caller, Keyring};
use parlor::mcp::{AuditContext, AuditLog, McpPool, Policy};
use parlor::planner::{AuditedPool, ConfirmRequest, Confirmation, Confirmer, Toolbox};
use parlor::spec::PipelineSpec;
use serde_json::{json, Value};

const KEYS: &str = "alice-key-1:alice:admin,bob-key-2:bob:caller,carol-key-3:carol:caller";

/// The decisions on record: outcomes only (each allowed call's `calling`
/// intent before it is left out; tests/audit.rs covers those).
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["decision"] != "calling")
        .collect()
}

fn caller(principal: &str, role: &str) -> Caller {
    Caller {
        principal: principal.into(),
        role: role.into(),
        session: Some(format!("call_{principal}")),
    }
}

/// The orders server behind the policy of `access` (TOML of the
/// `[access]` table), auditing to `dir/audit/tools.jsonl`.
async fn policed_orders(
    dir: &Path,
    access: &str,
) -> (AuditedPool, Arc<McpPool>, std::path::PathBuf) {
    let specs =
        std::collections::BTreeMap::from([("orders".to_string(), support::orders_server(dir))]);
    let pool = Arc::new(McpPool::connect(&specs, &["orders".into()]).await.unwrap());
    let path = dir.join("audit/tools.jsonl");
    let log = Arc::new(AuditLog::open(&path).unwrap());
    let access: AccessSpec = toml::from_str(access).unwrap();
    let tools = AuditedPool::new(pool.clone(), log, AuditContext::default())
        .with_policy(Arc::new(Policy::new(&access)));
    (tools, pool, path)
}

async fn names(tools: &dyn Toolbox) -> Vec<String> {
    tools.specs().await.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn admin_only_tool_is_denied_to_callers_and_allowed_for_admins() {
    let dir =
        support::log_dir("access-admin_only_tool_is_denied_to_callers_and_allowed_for_admins");
    let (shared, pool, path) = policed_orders(
        &dir,
        r#"
        [[tool]]
        tool = "orders__cancel_order"
        admin_only = true
        "#,
    )
    .await;
    let bob = shared.for_caller(&caller("bob", "caller")).unwrap();
    let alice = shared.for_caller(&caller("alice", "admin")).unwrap();

    // Offered only to those who may call it.
    assert!(!names(&*bob).await.contains(&"orders__cancel_order".into()));
    assert!(names(&*bob).await.contains(&"orders__get_order".into()));
    assert!(names(&*alice)
        .await
        .contains(&"orders__cancel_order".into()));

    // Named anyway: refused, as a tool error the model can relay.
    let args = json!({"order_id": 1042, "reason": "changed my mind"});
    let denied = bob.call("orders__cancel_order", args.clone()).await;
    assert!(denied.is_error);
    assert!(
        denied.text.contains("Permission denied") && denied.text.contains("\"caller\""),
        "{}",
        denied.text
    );
    let r = records(&path);
    assert_eq!(r.len(), 1, "the refusal is recorded before it is returned");
    assert_eq!(r[0]["decision"], "denied");
    assert_eq!(r[0]["principal"], "bob");
    assert_eq!(r[0]["role"], "caller");
    assert_eq!(r[0]["session"], "call_bob");
    assert_eq!(
        (r[0]["server"].as_str(), r[0]["tool"].as_str()),
        (Some("orders"), Some("cancel_order"))
    );
    assert!(r[0]["reason"]
        .as_str()
        .unwrap()
        .contains("Permission denied"));
    assert!(r[0]["result_bytes"].is_null(), "the tool never ran");

    // The admin's call reaches the server (whatever the order's state, the
    // server answered: allowed).
    let allowed = alice.call("orders__cancel_order", args).await;
    let r = records(&path);
    assert_eq!(r.len(), 2);
    assert_eq!(r[1]["decision"], "allowed", "{}", allowed.text);
    assert_eq!(r[1]["principal"], "alice");
    assert_eq!(r[1]["role"], "admin");
    assert!(!allowed.text.contains("Permission denied"));
    assert!(parlor::mcp::audit::verify(&path).is_ok());
    drop((shared, bob, alice));
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.shutdown().await;
    }
}

#[tokio::test]
async fn over_limit_calls_are_polite_audited_and_prompt_per_principal() {
    let dir =
        support::log_dir("access-over_limit_calls_are_polite_audited_and_prompt_per_principal");
    let (shared, pool, path) = policed_orders(
        &dir,
        r#"
        [[limit]]
        tool = "orders__get_order"
        calls = 3
        per_secs = 60
        "#,
    )
    .await;
    let bob = shared.for_caller(&caller("bob", "caller")).unwrap();
    let carol = shared.for_caller(&caller("carol", "caller")).unwrap();
    let args = json!({"order_id": 1042});
    for _ in 0..3 {
        let a = bob.call("orders__get_order", args.clone()).await;
        assert!(!a.is_error, "{}", a.text);
    }
    // One more: a polite error, promptly (the bound only guards a hang).
    let over = tokio::time::timeout(
        Duration::from_secs(5),
        bob.call("orders__get_order", args.clone()),
    )
    .await
    .expect("an over-limit call returns, it does not wait for a token");
    assert!(over.is_error);
    assert!(
        over.text.contains("Rate limit reached") && over.text.contains("try again in about"),
        "{}",
        over.text
    );
    let r = records(&path);
    assert_eq!(r.len(), 4);
    assert_eq!(r[3]["decision"], "rate_limited");
    assert_eq!(r[3]["principal"], "bob");
    assert!(r[3]["reason"]
        .as_str()
        .unwrap()
        .contains("at most 3 times every 60 s"));

    // Bob's exhaustion is his own.
    let other = carol.call("orders__get_order", args.clone()).await;
    assert!(!other.is_error, "{}", other.text);
    assert_eq!(records(&path)[4]["decision"], "allowed");
    assert!(parlor::mcp::audit::verify(&path).is_ok());
    drop((shared, bob, carol));
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.shutdown().await;
    }
}

#[test]
fn access_rules_without_an_audit_log_or_with_unknown_names_are_refused() {
    // The shipped local pipeline (orders and knowledge servers, no audit
    // log) with rules added.
    let spec = format!(
        "{}\n{}",
        parlor::spec::LOCAL_PIPELINE,
        r#"
        [auth]
        keys_env = "PARLOR_TEST_KEYS"
        [[access.tool]]
        tool = "billing__refund"
        admin_only = true
        [[access.limit]]
        server = "orders"
        calls = 5
        per_secs = 0
        "#
    );
    let err = PipelineSpec::parse(&spec, Path::new("x.toml"), support::root())
        .unwrap_err()
        .to_string();
    assert!(err.contains("access rules need an audit log"), "{err}");
    assert!(
        err.contains("\"billing__refund\" is not a tool of a declared MCP server"),
        "{err}"
    );
    assert!(err.contains("per_secs"), "{err}");
}

/// A chat server requiring keys, on a real socket.
fn keyed_server() -> String {
    use parlor::llm::{LocalLlm, LocalLlmOptions};
    use parlor::server::{AppState, ServedModel};
    let path = support::model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let llm = LocalLlm::load(
        &path,
        LocalLlmOptions {
            max_tokens: 8,
            ..LocalLlmOptions::default()
        },
    )
    .unwrap();
    let state = AppState::new(ServedModel::new(llm, &path))
        .with_keyring(Keyring::parse(KEYS, "PARLOR_TEST_KEYS").unwrap());
    support::serve_state(state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_and_the_websocket_need_a_key() {
    let base = keyed_server();
    let http = reqwest::Client::new();
    let chat = json!({"model": "qwen2.5-coder-0.5b-instruct-q4_k_m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4});

    let check_401 = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(!body.to_string().contains("key-"), "no key echoed: {body}");
    };
    // Chat route: no key, a wrong key.
    check_401(
        http.post(format!("{base}/v1/chat/completions"))
            .json(&chat)
            .send()
            .await
            .unwrap(),
    )
    .await;
    check_401(
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth("bob-key-WRONG")
            .json(&chat)
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Upload route: refused before the body is read.
    check_401(
        http.post(format!("{base}/v1/turns"))
            .header("content-type", "audio/wav")
            .body(vec![0u8; 1024])
            .send()
            .await
            .unwrap(),
    )
    .await;
    // A good key goes through.
    let ok = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("bob-key-2")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());
    // Probes stay open.
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The WebSocket upgrade: no key is a 401 ...
    let ws = base.replacen("http://", "ws://", 1) + "/v1/calls";
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
    match tokio_tungstenite::connect_async(ws.as_str()).await {
        Err(Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    // ... and a key as a subprotocol passes authentication (this server
    // runs no pipeline, so the handler's own 404 is what comes back).
    let mut request = ws.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "parlor, parlor.key.alice-key-1".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(Error::Http(resp)) => assert_eq!(resp.status(), 404),
        other => panic!(
            "expected the handler's 404, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
}

/// The person on a call, as a test plays them: answers every question
/// with `approve`, and remembers what it was asked.
struct Person {
    approve: Option<bool>,
    asked: std::sync::Mutex<Vec<ConfirmRequest>>,
}

impl Person {
    fn answering(approve: Option<bool>) -> Arc<Self> {
        Arc::new(Self {
            approve,
            asked: Default::default(),
        })
    }

    fn asked(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.tool.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl Confirmer for Person {
    async fn confirm(&self, request: ConfirmRequest) -> Confirmation {
        self.asked.lock().unwrap().push(request);
        match self.approve {
            Some(true) => Confirmation::Approved,
            Some(false) => Confirmation::Declined,
            None => Confirmation::NoAnswer("the caller did not answer within 30 s".into()),
        }
    }
}

const SENSITIVE_CANCEL: &str = r#"
[[tool]]
tool = "orders__cancel_order"
sensitive = true
"#;

async fn order_status(tools: &dyn Toolbox, id: u64) -> String {
    let order = tools
        .call("orders__get_order", json!({ "order_id": id }))
        .await;
    assert!(!order.is_error, "{}", order.text);
    order.text
}

#[tokio::test]
async fn a_sensitive_tool_needs_the_callers_yes_once_tool_output_is_in_context() {
    let dir = support::log_dir(
        "access-a_sensitive_tool_needs_the_callers_yes_once_tool_output_is_in_context",
    );
    let (shared, pool, path) = policed_orders(&dir, SENSITIVE_CANCEL).await;
    let cancel = |id: u64| {
        (
            "orders__cancel_order",
            json!({"order_id": id, "reason": "the caller asked"}),
        )
    };

    // Nothing untrusted in the context yet: the caller's own words led
    // here, so no question (a person who declines says so in words).
    let person = Person::answering(Some(false));
    let fresh = shared
        .for_session(&caller("bob", "caller"), person.clone())
        .unwrap();
    let (tool, args) = cancel(1043);
    let done = fresh.call(tool, args).await;
    assert!(!done.text.contains("Not done"), "{}", done.text);
    assert!(person.asked().is_empty());

    // A new session reads an order first: the result is untrusted text in
    // its context. The same call is now asked about, and a "no" stops it.
    let person = Person::answering(Some(false));
    let bob = shared
        .for_session(&caller("bob", "caller"), person.clone())
        .unwrap();
    let before = order_status(&*bob, 1040).await;
    let (tool, args) = cancel(1040);
    let declined = bob.call(tool, args.clone()).await;
    assert!(declined.is_error);
    assert!(
        declined.text.contains("declined") && declined.text.contains("orders__cancel_order"),
        "{}",
        declined.text
    );
    assert_eq!(person.asked(), ["orders__cancel_order"]);
    assert_eq!(order_status(&*bob, 1040).await, before, "nothing changed");
    let r = records(&path);
    let refusal = r
        .iter()
        .find(|e| e["decision"] == "denied")
        .expect("the refusal is audited");
    assert_eq!(refusal["tool"], "cancel_order");
    assert!(refusal["result_bytes"].is_null(), "the tool never ran");

    // Approved: it runs, and the record says who approved it.
    let person = Person::answering(Some(true));
    let alice = shared
        .for_session(&caller("alice", "caller"), person.clone())
        .unwrap();
    order_status(&*alice, 1040).await;
    let approved = alice.call(tool, args.clone()).await;
    assert_eq!(person.asked(), ["orders__cancel_order"]);
    assert!(!approved.text.contains("Not done"), "{}", approved.text);
    assert_ne!(order_status(&*alice, 1040).await, before, "cancelled");
    let last_cancel = records(&path)
        .into_iter()
        .rev()
        .find(|e| e["tool"] == "cancel_order")
        .unwrap();
    assert_eq!(last_cancel["decision"], "allowed");
    assert_eq!(last_cancel["reason"], parlor::planner::tools::CONFIRMED);

    // No person on the line (an upload, an API caller): refused.
    let api = shared.for_caller(&caller("carol", "caller")).unwrap();
    order_status(&*api, 1041).await;
    let (tool, args) = cancel(1041);
    let refused = api.call(tool, args).await;
    assert!(
        refused.is_error && refused.text.contains("needs the caller's confirmation"),
        "{}",
        refused.text
    );
    assert!(parlor::mcp::audit::verify(&path).is_ok());
    drop((shared, fresh, bob, alice, api));
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.shutdown().await;
    }
}

#[tokio::test]
async fn resources_in_the_prompt_make_every_turn_untrusted_and_silence_is_a_no() {
    let dir = support::log_dir(
        "access-resources_in_the_prompt_make_every_turn_untrusted_and_silence_is_a_no",
    );
    let (shared, pool, path) = policed_orders(&dir, SENSITIVE_CANCEL).await;
    let shared = shared.with_untrusted_prompt(true);
    let person = Person::answering(None);
    let bob = shared
        .for_session(&caller("bob", "caller"), person.clone())
        .unwrap();
    let before = order_status(&shared, 1050).await;
    let answer = bob
        .call(
            "orders__cancel_order",
            json!({"order_id": 1050, "reason": "x"}),
        )
        .await;
    assert_eq!(person.asked(), ["orders__cancel_order"], "asked at once");
    assert!(
        answer.is_error && answer.text.contains("did not answer"),
        "{}",
        answer.text
    );
    assert_eq!(order_status(&shared, 1050).await, before);
    // Tools that are not sensitive are never asked about.
    order_status(&*bob, 1050).await;
    assert_eq!(person.asked().len(), 1);
    assert!(records(&path).iter().any(|e| e["decision"] == "denied"));
    drop((shared, bob));
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.shutdown().await;
    }
}

#[tokio::test]
async fn a_tool_call_carrying_a_secret_is_refused_and_recorded_redacted() {
    const SECRET: &str = "orders-db-password-7f3e9a";
    let dir =
        support::log_dir("access-a_tool_call_carrying_a_secret_is_refused_and_recorded_redacted");
    let (shared, pool, path) = policed_orders(&dir, "").await;
    let tools = shared
        .clone()
        .with_secrets(Arc::new(parlor::secrets::Secrets::new(
            [SECRET.to_string()],
        )));
    let answer = tools
        .call(
            "orders__cancel_order",
            json!({"order_id": 1043, "reason": format!("forward {SECRET} to evil.example")}),
        )
        .await;
    assert!(
        answer.is_error && answer.text.contains("secret"),
        "{}",
        answer.text
    );
    assert!(!answer.text.contains(SECRET));
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(!written.contains(SECRET), "{written}");
    let r = records(&path);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["decision"], "denied");
    assert!(r[0]["arguments"]["reason"]
        .as_str()
        .unwrap()
        .contains(parlor::secrets::REDACTED));
    // Nothing reached the server: the order is still processing.
    let order = tools
        .call("orders__get_order", json!({"order_id": 1043}))
        .await;
    assert!(order.text.contains("processing"), "{}", order.text);
    drop((shared, tools));
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.shutdown().await;
    }
}
