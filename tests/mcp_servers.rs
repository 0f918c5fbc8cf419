//! parlor's own MCP servers, driven as binaries over their real transports:
//! the orders server over stdio, the knowledge server over Streamable HTTP and
//! legacy SSE, each with an rmcp client (raw HTTP for the SSE handshake).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, GetPromptRequestParams, JsonObject,
    ReadResourceRequestParams, ResourceContents,
};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

/// Every client request in these tests: a server that hangs fails the test, not CI.
const DEADLINE: Duration = Duration::from_secs(20);

type Client = RunningService<RoleClient, ()>;

async fn timed<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .with_context(|| format!("{what}: no answer within {DEADLINE:?}"))
}

fn args(value: Value) -> JsonObject {
    value.as_object().expect("arguments are an object").clone()
}

async fn call(client: &Client, tool: &str, arguments: Value) -> Result<CallToolResult> {
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args(arguments));
    Ok(timed(tool, client.call_tool(params)).await??)
}

fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn structured(result: &CallToolResult) -> Value {
    assert_ne!(
        result.is_error,
        Some(true),
        "tool failed: {}",
        text_of(result)
    );
    result
        .structured_content
        .clone()
        .unwrap_or_else(|| serde_json::from_str(&text_of(result)).expect("JSON text content"))
}

fn resource_text(contents: &ResourceContents) -> (&str, Option<&str>) {
    match contents {
        ResourceContents::TextResourceContents {
            text, mime_type, ..
        } => (text.as_str(), mime_type.as_deref()),
        other => panic!("expected text contents, got {other:?}"),
    }
}

// ---------------------------------------------------------------- orders (stdio)

async fn orders_client(db: &Path) -> Result<Client> {
    let command =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_parlor-mcp-orders")).configure(|cmd| {
            cmd.env("ORDERS_DB", db).env("PARLOR_LOG", "warn");
        });
    let transport = TokioChildProcess::new(command)?;
    Ok(timed("orders handshake", ().serve(transport)).await??)
}

#[tokio::test]
async fn orders_lists_its_tools_with_precise_schemas() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let client = orders_client(&dir.path().join("orders.db")).await?;
    let tools = timed("list tools", client.list_all_tools()).await??;
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        ["cancel_order", "find_orders", "get_customer", "get_order"]
    );

    let tool = |name: &str| tools.iter().find(|t| t.name == name).unwrap();
    let get_order = Value::Object((*tool("get_order").input_schema).clone());
    assert_eq!(get_order["properties"]["order_id"]["type"], "integer");
    assert_eq!(get_order["required"], json!(["order_id"]));
    assert_eq!(get_order["additionalProperties"], json!(false));
    let doc = get_order["properties"]["order_id"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        doc.contains("order number"),
        "field docs become the schema: {doc}"
    );

    let find = serde_json::to_string(&*tool("find_orders").input_schema)?;
    for status in [
        "processing",
        "shipped",
        "out_for_delivery",
        "delivered",
        "cancelled",
    ] {
        assert!(find.contains(status), "status enum lists {status}: {find}");
    }

    let cancel = tool("cancel_order");
    let schema = Value::Object((*cancel.input_schema).clone());
    assert_eq!(schema["required"], json!(["order_id", "reason"]));
    let hints = cancel
        .annotations
        .as_ref()
        .expect("cancel_order has annotations");
    assert_eq!(hints.read_only_hint, Some(false));
    assert_eq!(hints.destructive_hint, Some(true));
    let read_only = tool("get_order")
        .annotations
        .as_ref()
        .and_then(|a| a.read_only_hint);
    assert_eq!(read_only, Some(true));
    client.cancel().await?;
    Ok(())
}

#[tokio::test]
async fn get_order_1042_returns_the_seeded_facts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A directory that does not exist yet: the server creates it and seeds the file.
    let client = orders_client(&dir.path().join("data").join("orders.db")).await?;
    let order = structured(&call(&client, "get_order", json!({ "order_id": 1042 })).await?);
    assert_eq!(order["order_id"], 1042);
    assert_eq!(order["status"], "shipped");
    assert_eq!(order["carrier"], "UPS");
    assert_eq!(order["tracking_number"], "1Z999AA10008251598");
    assert_eq!(order["eta"], "2026-11-28");
    assert_eq!(order["customer"]["name"], "Maria Lopez");
    assert_eq!(order["customer"]["email"], "maria.lopez@example.com");
    assert_eq!(order["total"], "$115.97");
    let items: Vec<_> = order["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["quantity"].as_i64().unwrap()))
        .collect();
    assert_eq!(items, [("Wireless headphones", 1), ("USB-C cable, 2 m", 2)]);
    assert!(dir.path().join("data").join("orders.db").exists());
    client.cancel().await?;
    Ok(())
}

#[tokio::test]
async fn unknown_order_is_a_tool_error_not_a_protocol_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let client = orders_client(&dir.path().join("orders.db")).await?;
    let result = call(&client, "get_order", json!({ "order_id": 9999 })).await?;
    assert_eq!(result.is_error, Some(true));
    let text = text_of(&result);
    assert!(text.contains("No order 9999"), "{text}");

    let result = call(
        &client,
        "find_orders",
        json!({ "email": "nobody@example.com" }),
    )
    .await?;
    assert_eq!(result.is_error, Some(true));
    assert!(text_of(&result).contains("nobody@example.com"));

    let result = call(&client, "find_orders", json!({})).await?;
    assert_eq!(result.is_error, Some(true), "neither email nor name");

    // A malformed call is the protocol's business: a wrong type is rejected.
    let params =
        CallToolRequestParams::new("get_order").with_arguments(args(json!({ "order_id": "soon" })));
    let outcome = timed("bad params", client.call_tool(params)).await?;
    assert!(
        outcome.is_err() || outcome.as_ref().is_ok_and(|r| r.is_error == Some(true)),
        "a string order id is refused: {outcome:?}"
    );
    client.cancel().await?;
    Ok(())
}

#[tokio::test]
async fn find_orders_and_customers_by_name_and_email() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let client = orders_client(&dir.path().join("orders.db")).await?;

    // Two customers are called Maria Lopez; each order says whose it is.
    let found = structured(&call(&client, "find_orders", json!({ "name": "maria lopez" })).await?);
    let orders = found["orders"].as_array().unwrap();
    let emails: std::collections::BTreeSet<_> = orders
        .iter()
        .map(|o| o["customer"]["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails.len(), 2, "{found}");
    assert!(orders.iter().any(|o| o["order_id"] == 1042));
    let dates: Vec<_> = orders
        .iter()
        .map(|o| o["placed_on"].as_str().unwrap())
        .collect();
    assert!(
        dates.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {dates:?}"
    );

    let shipped = structured(
        &call(
            &client,
            "find_orders",
            json!({ "email": "MARIA.LOPEZ@example.com", "status": "shipped" }),
        )
        .await?,
    );
    let ids: Vec<_> = shipped["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1042]);

    let customers = structured(&call(&client, "get_customer", json!({ "name": "Lopez" })).await?);
    assert_eq!(customers["count"], 2);
    let maria = structured(
        &call(
            &client,
            "get_customer",
            json!({ "email": "maria.lopez@example.com" }),
        )
        .await?,
    );
    assert_eq!(maria["customers"][0]["loyalty_tier"], "gold");
    assert_eq!(maria["customers"][0]["order_count"], 4);
    let nobody = call(
        &client,
        "get_customer",
        json!({ "email": "ghost@example.com" }),
    )
    .await?;
    assert_eq!(nobody.is_error, Some(true));
    client.cancel().await?;
    Ok(())
}

#[tokio::test]
async fn cancel_order_only_while_processing_and_it_persists() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("orders.db");
    let client = orders_client(&db).await?;

    let done = structured(
        &call(
            &client,
            "cancel_order",
            json!({ "order_id": 1043, "reason": "Found it cheaper." }),
        )
        .await?,
    );
    assert_eq!(done["cancelled"], true);
    assert_eq!(done["order"]["status"], "cancelled");
    assert_eq!(done["order"]["cancel_reason"], "Found it cheaper.");
    assert_eq!(done["order"]["eta"], Value::Null);

    let again = call(
        &client,
        "cancel_order",
        json!({ "order_id": 1043, "reason": "Twice." }),
    )
    .await?;
    assert_eq!(again.is_error, Some(true));
    assert!(
        text_of(&again).contains("already cancelled"),
        "{}",
        text_of(&again)
    );

    let shipped = call(
        &client,
        "cancel_order",
        json!({ "order_id": 1042, "reason": "Too slow." }),
    )
    .await?;
    assert_eq!(shipped.is_error, Some(true));
    let text = text_of(&shipped);
    assert!(
        text.contains("shipped with UPS") && text.contains("returned"),
        "{text}"
    );

    let unknown = call(
        &client,
        "cancel_order",
        json!({ "order_id": 77, "reason": "?" }),
    )
    .await?;
    assert_eq!(unknown.is_error, Some(true));
    let blank = call(
        &client,
        "cancel_order",
        json!({ "order_id": 1021, "reason": "  " }),
    )
    .await?;
    assert_eq!(blank.is_error, Some(true), "a reason is required");
    client.cancel().await?;

    // A new server process on the same file sees the write, and does not reseed.
    let client = orders_client(&db).await?;
    let order = structured(&call(&client, "get_order", json!({ "order_id": 1043 })).await?);
    assert_eq!(order["status"], "cancelled");
    let order = structured(&call(&client, "get_order", json!({ "order_id": 1021 })).await?);
    assert_eq!(order["status"], "processing");
    client.cancel().await?;
    Ok(())
}

#[tokio::test]
async fn orders_resources_list_and_read() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let client = orders_client(&dir.path().join("orders.db")).await?;
    let resources = timed("list resources", client.list_all_resources()).await??;
    let uris: Vec<_> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["orders://schema", "orders://statuses"]);

    let schema = timed(
        "read",
        client.read_resource(ReadResourceRequestParams::new("orders://schema")),
    )
    .await??;
    let (text, mime) = resource_text(&schema.contents[0]);
    assert!(text.contains("CREATE TABLE orders"), "{text}");
    assert_eq!(mime, Some("application/sql"));

    let statuses = timed(
        "read",
        client.read_resource(ReadResourceRequestParams::new("orders://statuses")),
    )
    .await??;
    let statuses: Value = serde_json::from_str(resource_text(&statuses.contents[0]).0)?;
    assert!(statuses["processing"]
        .as_str()
        .unwrap()
        .contains("cancelled"));

    let missing = timed(
        "read",
        client.read_resource(ReadResourceRequestParams::new("orders://nope")),
    )
    .await?;
    assert!(missing.is_err(), "an unknown resource is an error");
    client.cancel().await?;
    Ok(())
}

// ------------------------------------------------------- knowledge (HTTP, SSE)

/// The knowledge server as a child process, killed on drop.
struct KnowledgeProcess {
    child: Child,
    addr: SocketAddr,
}

impl KnowledgeProcess {
    fn start() -> Result<Self> {
        // Ask the OS for a free port, then hand it to the server. Another
        // process could take it in between; the readiness poll would then fail loudly.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(env!("CARGO_BIN_EXE_parlor-mcp-knowledge"))
            .arg("--addr")
            .arg(addr.to_string())
            .env("PARLOR_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("spawn parlor-mcp-knowledge")?;
        let mut process = Self { child, addr };
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = process.child.try_wait()? {
                bail!("parlor-mcp-knowledge exited before listening: {status}");
            }
            if started.elapsed() > DEADLINE {
                bail!("parlor-mcp-knowledge did not listen on {addr} within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Make sure the port is ours, not a stranger's that won the race.
        if let Some(status) = process.child.try_wait()? {
            bail!("parlor-mcp-knowledge exited: {status}");
        }
        Ok(process)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn client(&self) -> Result<Client> {
        let transport = StreamableHttpClientTransport::from_uri(self.url("/mcp"));
        Ok(timed("knowledge handshake", ().serve(transport)).await??)
    }
}

impl Drop for KnowledgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn search_finds_the_return_policy_first() -> Result<()> {
    let server = KnowledgeProcess::start()?;
    let client = server.client().await?;

    let tools = timed("list tools", client.list_all_tools()).await??;
    assert_eq!(tools.len(), 1);
    let schema = Value::Object((*tools[0].input_schema).clone());
    assert_eq!(tools[0].name, "search_knowledge");
    assert_eq!(schema["properties"]["query"]["type"], "string");
    assert_eq!(schema["required"], json!(["query"]));
    assert!(
        schema["properties"]["limit"]
            .to_string()
            .contains("integer"),
        "{schema}"
    );

    let found = structured(
        &call(
            &client,
            "search_knowledge",
            json!({ "query": "how long do I have to return something" }),
        )
        .await?,
    );
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "default limit: {found}");
    assert_eq!(results[0]["doc_id"], "return-policy", "{found:#}");
    assert_eq!(results[0]["uri"], "kb://docs/return-policy");
    assert!(
        results[0]["passage"].as_str().unwrap().contains("30 days"),
        "{found:#}"
    );
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );

    for (query, doc) in [
        ("what time do you open on sunday", "opening-hours"),
        ("is there a store in seattle", "store-locations"),
        ("can I pay with apple pay", "payment-methods"),
        ("how long is the warranty on electronics", "warranty"),
        ("express shipping cost", "shipping-times"),
    ] {
        let found = structured(
            &call(
                &client,
                "search_knowledge",
                json!({ "query": query, "limit": 1 }),
            )
            .await?,
        );
        assert_eq!(found["results"][0]["doc_id"], doc, "{query}: {found:#}");
        assert_eq!(found["count"], 1);
    }

    // Punctuation a caller's words may carry is not query syntax.
    let odd = call(
        &client,
        "search_knowledge",
        json!({ "query": "refund?? \"gift card\" (lost" }),
    )
    .await?;
    assert_ne!(odd.is_error, Some(true), "{}", text_of(&odd));
    let empty = call(&client, "search_knowledge", json!({ "query": "   " })).await?;
    assert_eq!(empty.is_error, Some(true));
    client.cancel().await?;
    Ok(())
}

#[tokio::test]
async fn knowledge_resources_are_the_documents_and_settings() -> Result<()> {
    let server = KnowledgeProcess::start()?;
    let client = server.client().await?;
    let resources = timed("list resources", client.list_all_resources()).await??;
    let docs: Vec<_> = resources
        .iter()
        .filter(|r| r.uri.starts_with("kb://docs/"))
        .collect();
    assert_eq!(docs.len(), 12);
    assert!(docs
        .iter()
        .all(|r| r.mime_type.as_deref() == Some("text/markdown")));
    let policy = docs
        .iter()
        .find(|r| r.uri == "kb://docs/return-policy")
        .unwrap();
    assert_eq!(policy.title.as_deref(), Some("Return policy"));
    assert!(resources.iter().any(|r| r.uri == "config://settings"));

    let warranty = timed(
        "read",
        client.read_resource(ReadResourceRequestParams::new("kb://docs/warranty")),
    )
    .await??;
    let (text, mime) = resource_text(&warranty.contents[0]);
    assert!(
        text.starts_with("# Warranty") && text.contains("2-year"),
        "{text}"
    );
    assert_eq!(mime, Some("text/markdown"));

    let settings = timed(
        "read",
        client.read_resource(ReadResourceRequestParams::new("config://settings")),
    )
    .await??;
    let (text, mime) = resource_text(&settings.contents[0]);
    assert_eq!(mime, Some("application/json"));
    let settings: Value = serde_json::from_str(text)?;
    assert_eq!(settings["doc_count"], 12);
    assert!(settings["index_size"].as_u64().unwrap() > 12, "{settings}");
    assert_eq!(settings["version"], env!("CARGO_PKG_VERSION"));

    let missing = timed(
        "read",
        client.read_resource(ReadResourceRequestParams::new("kb://docs/nope")),
    )
    .await?;
    assert!(missing.is_err());
    client.cancel().await?;
    Ok(())
}

#[tokio::test]
async fn answer_style_prompt_takes_its_arguments() -> Result<()> {
    let server = KnowledgeProcess::start()?;
    let client = server.client().await?;
    let prompts = timed("list prompts", client.list_all_prompts()).await??;
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0].name, "answer_style");
    let mut names: Vec<_> = prompts[0]
        .arguments
        .iter()
        .flatten()
        .map(|a| a.name.as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["max_sentences", "tone"]);

    let text_of_prompt = |result: &rmcp::model::GetPromptResult| {
        result
            .messages
            .iter()
            .filter_map(|m| m.content.as_text().map(|t| t.text.clone()))
            .collect::<String>()
    };
    let warm = timed(
        "get prompt",
        client.get_prompt(
            GetPromptRequestParams::new("answer_style")
                .with_arguments(args(json!({ "tone": "warm", "max_sentences": "1" }))),
        ),
    )
    .await??;
    let text = text_of_prompt(&warm);
    assert!(
        text.contains("Sound warm") && text.contains("one sentence"),
        "{text}"
    );

    let default = timed(
        "get prompt",
        client.get_prompt(GetPromptRequestParams::new("answer_style")),
    )
    .await??;
    let text = text_of_prompt(&default);
    assert!(
        text.contains("friendly") && text.contains("at most 2 sentences"),
        "{text}"
    );

    let bad = timed(
        "get prompt",
        client.get_prompt(
            GetPromptRequestParams::new("answer_style")
                .with_arguments(args(json!({ "max_sentences": "40" }))),
        ),
    )
    .await?;
    assert!(bad.is_err(), "40 sentences is refused");
    client.cancel().await?;
    Ok(())
}

/// Reads server-sent events from a streaming response: (event, data) pairs.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn next(&mut self) -> Result<(String, String)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data) = ("message".to_owned(), Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Ok((event, data.join("\n")));
            }
            let chunk = timed("SSE event", self.response.chunk())
                .await??
                .context("SSE stream ended")?;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        }
    }

    /// The next `event: message` answering request `id`.
    async fn reply(&mut self, id: u64) -> Result<Value> {
        loop {
            let (event, data) = self.next().await?;
            if event != "message" {
                continue;
            }
            let message: Value = serde_json::from_str(&data)?;
            if message["id"] == id {
                return Ok(message);
            }
        }
    }
}

#[tokio::test]
async fn legacy_sse_endpoint_answers_a_real_session() -> Result<()> {
    let server = KnowledgeProcess::start()?;
    let http = reqwest::Client::new();
    let response = timed(
        "GET /sse",
        http.get(server.url("/sse"))
            .header("accept", "text/event-stream")
            .send(),
    )
    .await??;
    assert!(response.status().is_success());
    let content_type = response.headers()["content-type"].to_str()?.to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut events = SseReader {
        response,
        buffer: String::new(),
    };

    let (event, endpoint) = events.next().await?;
    assert_eq!(event, "endpoint");
    assert!(endpoint.starts_with("/message?sessionId="), "{endpoint}");
    let post = |body: Value| {
        let request = http.post(server.url(&endpoint)).json(&body).send();
        async move {
            let response = timed("POST /message", request).await??;
            anyhow::ensure!(
                response.status() == reqwest::StatusCode::ACCEPTED,
                "POST answered {}",
                response.status()
            );
            Ok(())
        }
    };

    post(json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2024-11-05",
            "capabilities": {},
            "clientInfo": { "name": "raw-sse-test", "version": "0" }
        }
    }))
    .await?;
    let init = events.reply(1).await?;
    assert_eq!(
        init["result"]["serverInfo"]["name"], "parlor-mcp-knowledge",
        "{init}"
    );
    assert_eq!(init["result"]["protocolVersion"], "2024-11-05", "{init}");

    post(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })).await?;
    post(json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call",
                 "params": { "name": "search_knowledge", "arguments": { "query": "gift card expiry", "limit": 1 } } }))
    .await?;
    let answer = events.reply(2).await?;
    let result = &answer["result"];
    assert_eq!(
        result["structuredContent"]["results"][0]["doc_id"], "gift-cards",
        "{answer}"
    );

    let unknown = http
        .post(server.url("/message?sessionId=nope"))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
    let garbage = http
        .post(server.url(&endpoint))
        .body("not json")
        .send()
        .await?;
    assert_eq!(garbage.status(), reqwest::StatusCode::BAD_REQUEST);
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn knowledge_server_stops_on_sigterm() -> Result<()> {
    let mut server = KnowledgeProcess::start()?;
    // An open session must not hold shutdown up past the drain.
    let client = server.client().await?;
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()?;
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = server.child.try_wait()? {
            break exit;
        }
        if started.elapsed() > DEADLINE {
            bail!("still running {DEADLINE:?} after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    drop(client);
    Ok(())
}
