//! OAuth 2.1 for remote MCP servers, end to end on real sockets: the
//! authorization server (`parlor-mcp-auth`) and the knowledge server as a
//! protected resource (`parlor-mcp-knowledge --auth-issuer --auth-audience`)
//! run as processes; parlor's MCP pool is the client. Every test also checks
//! that no secret and no token reached a log (parlor's tracing output at
//! debug level, and both servers' stderr).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use parlor::mcp::servers::auth::secret_hash;
use parlor::mcp::{McpPool, McpPoolOptions};
use parlor::spec::{McpServerSpec, OAuthGrant, OAuthSpec};
use serde_json::{json, Value};

mod support;

/// Every wait in these tests: a hung server fails the test, not CI.
const DEADLINE: Duration = Duration::from_secs(20);

/// The registered clients: (id, secret variable, secret, scopes, token lifetime).
const PARLOR: (&str, &str, &str) = (
    "parlor",
    "OAUTH_TEST_PARLOR_SECRET",
    "test-secret-parlor-5b0e1c7a9d",
);
/// Tokens that live 2 s, to see them expire.
const BRIEF: (&str, &str, &str) = (
    "brief",
    "OAUTH_TEST_BRIEF_SECRET",
    "test-secret-brief-8c2f4d6e1a",
);
/// Registered for another scope only.
const OTHER: (&str, &str, &str) = (
    "other",
    "OAUTH_TEST_OTHER_SECRET",
    "test-secret-other-3e9a7b5c2f",
);
/// A public client that signs people in, and a person (name, password).
const CLI: &str = "parlor-cli";
const PERSON: (&str, &str) = ("alice", "test-password-alice-4f7c1e9b");
/// What a misconfigured deployment holds instead of the real secret.
const WRONG_SECRET: &str = "test-secret-wrong-6d1f8a2b4c";
const SCOPE: &str = "knowledge:read";

// ---------------------------------------------------------------- logs

/// parlor's own tracing output, at debug level, for the whole test binary.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        log
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fails if any log holds a test secret, `tokens`, or anything shaped like
/// a JWT (a base64url JSON header and payload: `eyJ...eyJ`).
fn assert_no_secrets(servers: &Servers, tokens: &[String]) {
    let parlor = String::from_utf8_lossy(&captured().lock().unwrap()).into_owned();
    let logs = [
        ("parlor tracing", parlor),
        ("parlor-mcp-auth stderr", servers.auth.log()),
        ("parlor-mcp-knowledge stderr", servers.kb.log()),
    ];
    for (name, text) in &logs {
        assert!(
            !text.is_empty() || *name == "parlor tracing",
            "{name} is empty: was it captured?"
        );
        for secret in [PARLOR.2, BRIEF.2, OTHER.2, WRONG_SECRET, PERSON.1]
            .iter()
            .copied()
            .chain(tokens.iter().map(String::as_str))
        {
            assert!(!text.contains(secret), "{name} contains a secret or token");
        }
        let jwt_like = text.match_indices("eyJ").any(|(i, _)| {
            text[i..]
                .split_whitespace()
                .next()
                .is_some_and(|w| w.contains(".eyJ"))
        });
        assert!(!jwt_like, "{name} contains something shaped like a JWT");
    }
}

// ---------------------------------------------------------------- servers

/// A server process whose stderr is kept for the secrets check.
struct Process {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `program --addr ADDR ARGS...`, `args` made knowing the address.
    fn spawn(program: &str, args: impl FnOnce(SocketAddr) -> Vec<String>) -> Result<Self> {
        // Ask the OS for a free port, then hand it to the server; the
        // readiness poll fails loudly if a stranger took it meanwhile.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut child = Command::new(program)
            .arg("--addr")
            .arg(addr.to_string())
            .args(args(addr))
            .env("PARLOR_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {program}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().context("stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut process = Self { child, addr, log };
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = process.child.try_wait()? {
                bail!(
                    "{program} exited before listening: {status}\n{}",
                    process.log()
                );
            }
            if started.elapsed() > DEADLINE {
                bail!("{program} did not listen on {addr} within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(process)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The authorization server and the protected knowledge server.
struct Servers {
    auth: Process,
    kb: Process,
    /// In the suite's log directory: the servers' stderr is written here
    /// when they stop, for the suite's secrets check.
    dir: std::path::PathBuf,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("parlor-mcp-auth.stderr.log"), self.auth.log());
        let _ = std::fs::write(
            self.dir.join("parlor-mcp-knowledge.stderr.log"),
            self.kb.log(),
        );
        let parlor = captured().lock().unwrap().clone();
        let _ = std::fs::write(self.dir.join("parlor-tracing.log"), parlor);
    }
}

impl Servers {
    fn start() -> Result<Self> {
        // One directory per set of servers: the tests run in parallel.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = support::fresh_dir(&format!("oauth-servers-{n}"));
        let clients = dir.join("clients.toml");
        let mut file = std::fs::File::create(&clients)?;
        for ((id, _, secret), scopes, ttl) in [
            (PARLOR, SCOPE, None),
            (BRIEF, SCOPE, Some(2)),
            (OTHER, "orders:read", None),
        ] {
            writeln!(
                file,
                "[[client]]\nid = {id:?}\nsecret_sha256 = {:?}\nscopes = [{scopes:?}]",
                secret_hash(secret)
            )?;
            if let Some(ttl) = ttl {
                writeln!(file, "token_ttl_secs = {ttl}")?;
            }
        }
        // A public client for people (PKCE, loopback redirect) and a person.
        writeln!(
            file,
            "[[client]]\nid = {:?}\nredirect_uris = [\"http://127.0.0.1/callback\"]\nscopes = [{SCOPE:?}]\n\
             [[user]]\nname = {:?}\npassword_sha256 = {:?}",
            CLI, PERSON.0, secret_hash(PERSON.1)
        )?;
        drop(file);
        let auth = Process::spawn(env!("CARGO_BIN_EXE_parlor-mcp-auth"), |_| {
            vec!["--clients".into(), clients.display().to_string()]
        })?;
        // The audience is the server's origin, so /mcp and /sse share it.
        let kb = Process::spawn(env!("CARGO_BIN_EXE_parlor-mcp-knowledge"), |addr| {
            vec![
                "--auth-issuer".into(),
                auth.url(""),
                "--auth-audience".into(),
                format!("http://{addr}"),
            ]
        })?;
        Ok(Self { auth, kb, dir })
    }

    fn audience(&self) -> String {
        self.kb.url("")
    }
}

// ---------------------------------------------------------------- parlor side

fn set_secrets() {
    for (_, var, secret) in [PARLOR, BRIEF, OTHER] {
        std::env::set_var(var, secret);
    }
}

fn oauth(client: (&str, &str, &str), issuer: Option<String>) -> OAuthSpec {
    OAuthSpec {
        grant: OAuthGrant::ClientCredentials,
        client_id: client.0.into(),
        client_secret_env: Some(client.1.into()),
        scopes: vec![SCOPE.into()],
        issuer,
    }
}

async fn connect(spec: McpServerSpec) -> Result<McpPool, parlor::mcp::McpError> {
    captured();
    set_secrets();
    let specs = BTreeMap::from([("knowledge".to_string(), spec)]);
    let options = McpPoolOptions {
        connect_timeout: DEADLINE,
        call_timeout: DEADLINE,
        ..McpPoolOptions::default()
    };
    McpPool::connect_with(&specs, &["knowledge".to_string()], options).await
}

async fn search(pool: &McpPool) -> Result<String> {
    pool.tools().await;
    let out = pool
        .call_tool(
            "knowledge__search_knowledge",
            json!({ "query": "how long do I have to return something" }),
        )
        .await
        .context("call search_knowledge")?;
    assert!(!out.is_error, "tool error: {}", out.text);
    Ok(out.text)
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_with_discovery_over_both_transports() -> Result<()> {
    let servers = Servers::start()?;
    for spec in [
        McpServerSpec::StreamableHttp {
            url: servers.kb.url("/mcp"),
            oauth: Some(oauth(PARLOR, None)),
        },
        McpServerSpec::Sse {
            url: servers.kb.url("/sse"),
            oauth: Some(oauth(PARLOR, None)),
        },
    ] {
        let pool = connect(spec).await?;
        let text = search(&pool).await?;
        assert!(text.to_lowercase().contains("return"), "{text}");
        pool.shutdown().await;
    }
    // The spec may name the issuer instead of discovering it.
    let pool = connect(McpServerSpec::StreamableHttp {
        url: servers.kb.url("/mcp"),
        oauth: Some(oauth(PARLOR, Some(servers.auth.url("")))),
    })
    .await?;
    search(&pool).await?;
    pool.shutdown().await;
    assert!(
        servers.kb.log().contains("Token accepted"),
        "the knowledge server checked no token"
    );
    assert_no_secrets(&servers, &[]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_the_server_answers_401_naming_its_metadata() -> Result<()> {
    let servers = Servers::start()?;
    let http = reqwest::Client::new();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}});
    for (path, request) in [
        ("/mcp", http.post(servers.kb.url("/mcp")).json(&initialize)),
        ("/sse", http.get(servers.kb.url("/sse"))),
        (
            "/message",
            http.post(servers.kb.url("/message?sessionId=x"))
                .json(&initialize),
        ),
    ] {
        let response = request
            .header("accept", "application/json, text/event-stream")
            .send()
            .await?;
        assert_eq!(response.status(), 401, "{path}");
        let challenge = response.headers()["www-authenticate"].to_str()?.to_owned();
        let expected = servers.kb.url("/.well-known/oauth-protected-resource");
        assert!(
            challenge.starts_with("Bearer ")
                && challenge.contains(&format!("resource_metadata=\"{expected}\"")),
            "{path}: {challenge}"
        );
    }
    // The metadata names the resource, its authorization server and scope.
    let meta: Value = http
        .get(servers.kb.url("/.well-known/oauth-protected-resource"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(meta["resource"], servers.audience());
    assert_eq!(meta["authorization_servers"], json!([servers.auth.url("")]));
    assert_eq!(meta["scopes_supported"], json!([SCOPE]));
    // ... and the authorization server's own metadata the rest.
    let auth_meta: Value = http
        .get(servers.auth.url("/.well-known/oauth-authorization-server"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(auth_meta["issuer"], servers.auth.url(""));
    assert_eq!(auth_meta["token_endpoint"], servers.auth.url("/token"));

    // A token that is not one of the issuer's is refused the same way.
    let forged = "eyJhbGciOiJFZERTQSIsImtpZCI6Inh4In0.eyJzdWIiOiJ4In0.c2ln";
    let response = http
        .post(servers.kb.url("/mcp"))
        .bearer_auth(forged)
        .json(&initialize)
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str()?;
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_no_secrets(&servers, &[forged.to_string()]);
    Ok(())
}

/// A token straight from the token endpoint, as a client would get it.
async fn raw_token(servers: &Servers, client: (&str, &str, &str), scope: &str) -> Result<Value> {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("client_id", client.0),
            ("client_secret", client.2),
            ("scope", scope),
            ("resource", &servers.audience()),
        ])
        .finish();
    let response = reqwest::Client::new()
        .post(servers.auth.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    Ok(response.json().await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refused_and_parlor_renews_its_own() -> Result<()> {
    let servers = Servers::start()?;
    let issued = raw_token(&servers, BRIEF, SCOPE).await?;
    assert_eq!(issued["expires_in"], 2, "{issued}");
    let token = issued["access_token"]
        .as_str()
        .context("access_token")?
        .to_owned();

    // parlor with the same 2 s client: a call now, and one after its first
    // token has expired, both work.
    let pool = connect(McpServerSpec::StreamableHttp {
        url: servers.kb.url("/mcp"),
        oauth: Some(oauth(BRIEF, None)),
    })
    .await?;
    search(&pool).await?;

    // Wait until the raw token is past its `exp` (whole seconds) for sure.
    let exp_wait = Duration::from_secs(3);
    tokio::time::sleep(exp_wait).await;
    let response = reqwest::Client::new()
        .get(servers.kb.url("/sse"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str()?;
    assert!(
        challenge.contains("invalid_token") && challenge.contains("expired"),
        "{challenge}"
    );

    search(&pool).await.context("the call after expiry")?;
    // parlor renewed its token before it expired: the server refused only
    // the raw one above (a 401 and retry would pass the call too, so the
    // call working is not proof enough).
    // The server's stderr is copied by a thread: give it time to catch up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = servers.kb.log().matches("the token has expired").count();
    assert_eq!(refused, 1, "{}", servers.kb.log());
    pool.shutdown().await;
    assert_no_secrets(&servers, &[token]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_the_scope_is_a_clear_error_naming_it() -> Result<()> {
    let servers = Servers::start()?;
    // A client registered for another scope asks for ours: the
    // authorization server refuses, and says which scope.
    let err = connect(McpServerSpec::StreamableHttp {
        url: servers.kb.url("/mcp"),
        oauth: Some(oauth(OTHER, None)),
    })
    .await
    .err()
    .context("connected without the scope")?
    .to_string();
    assert!(
        err.contains("\"knowledge\"") && err.contains("invalid_scope") && err.contains(SCOPE),
        "{err}"
    );

    // It asks for the scope it has: the token is issued, and the server
    // answers 403 insufficient_scope, which parlor reports by name.
    for spec in [
        McpServerSpec::StreamableHttp {
            url: servers.kb.url("/mcp"),
            oauth: Some(OAuthSpec {
                scopes: vec!["orders:read".into()],
                ..oauth(OTHER, None)
            }),
        },
        McpServerSpec::Sse {
            url: servers.kb.url("/sse"),
            oauth: Some(OAuthSpec {
                scopes: vec!["orders:read".into()],
                ..oauth(OTHER, None)
            }),
        },
    ] {
        let err = connect(spec)
            .await
            .err()
            .context("connected with the wrong scope")?
            .to_string();
        assert!(
            err.contains("\"knowledge\"")
                && err.contains(&format!("requires scope \"{SCOPE}\""))
                && err.contains("insufficient_scope"),
            "{err}"
        );
    }

    let wrong = raw_token(&servers, OTHER, "orders:read").await?;
    let token = wrong["access_token"].as_str().context("token")?.to_owned();
    let response = reqwest::Client::new()
        .get(servers.kb.url("/sse"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    let challenge = response.headers()["www-authenticate"].to_str()?;
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains(&format!("scope=\"{SCOPE}\"")),
        "{challenge}"
    );
    assert_no_secrets(&servers, &[token]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_secret_is_a_connect_error_that_does_not_contain_it() -> Result<()> {
    let servers = Servers::start()?;
    set_secrets();
    std::env::set_var("OAUTH_TEST_WRONG_SECRET", WRONG_SECRET);
    let err = connect(McpServerSpec::StreamableHttp {
        url: servers.kb.url("/mcp"),
        oauth: Some(OAuthSpec {
            client_secret_env: Some("OAUTH_TEST_WRONG_SECRET".into()),
            ..oauth(PARLOR, None)
        }),
    })
    .await
    .err()
    .context("connected with a wrong secret")?
    .to_string();
    assert!(
        err.contains("\"knowledge\"") && err.contains("invalid_client"),
        "{err}"
    );
    assert!(
        !err.contains(WRONG_SECRET) && !err.contains(PARLOR.2),
        "{err}"
    );

    // An unset variable is named, before any request.
    let err = connect(McpServerSpec::Sse {
        url: servers.kb.url("/sse"),
        oauth: Some(OAuthSpec {
            client_secret_env: Some("OAUTH_TEST_UNSET_SECRET".into()),
            ..oauth(PARLOR, None)
        }),
    })
    .await
    .err()
    .context("connected without a secret")?
    .to_string();
    assert!(
        err.contains("\"knowledge\"") && err.contains("OAUTH_TEST_UNSET_SECRET"),
        "{err}"
    );
    assert_no_secrets(&servers, &[]);
    Ok(())
}

// ---------------------------------------------------------------- a person

/// A spec with the knowledge server behind a person's sign-in.
fn person_spec(dir: &std::path::Path, servers: &Servers) -> Result<std::path::PathBuf> {
    let url = servers.kb.url("/mcp");
    let origin = servers.kb.url("");
    let path = dir.join("signed-in.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"signed-in\"\n[[stage]]\nkind = \"vad\"\nbackend = \"earshot\"\n\
             [mcp.knowledge]\ntransport = \"streamable-http\"\nurl = {url:?}\n\
             [mcp.knowledge.oauth]\ngrant = \"authorization_code\"\nclient_id = {CLI:?}\nscopes = [{SCOPE:?}]\n\
             [trust]\nallow = [{{ url = {origin:?} }}]\n"
        ),
    )?;
    Ok(path)
}

/// The browser's part: open the consent page, submit the form as the
/// person would, and follow the redirect to parlor's loopback listener.
/// Returns the consent page and where the authorization server redirected.
async fn browse(sign_in_url: &str, password: &str, decision: &str) -> Result<(String, Response)> {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = browser.get(sign_in_url).send().await?;
    assert_eq!(page.status(), 200);
    let page = page.text().await?;
    // The form's hidden fields carry the request; the person adds the rest.
    let mut form: Vec<(String, String)> = page
        .match_indices("<input type=\"hidden\" name=\"")
        .map(|(i, _)| {
            let rest = &page[i + 27..];
            let name = &rest[..rest.find('"').unwrap()];
            let value_at = rest.find("value=\"").unwrap() + 7;
            let value = &rest[value_at..value_at + rest[value_at..].find('"').unwrap()];
            (
                name.to_string(),
                value.replace("&amp;", "&").replace("&quot;", "\""),
            )
        })
        .collect();
    form.push(("username".into(), PERSON.0.into()));
    form.push(("password".into(), password.into()));
    form.push(("decision".into(), decision.into()));
    let action = reqwest::Url::parse(sign_in_url)?.join("/authorize")?;
    let answer = posted_form(browser.post(action), &form).send().await?;
    Ok((page, answer))
}

type Response = reqwest::Response;

/// `request` with `pairs` as an urlencoded form body (reqwest is built
/// without its `form` feature).
fn posted_form<K: AsRef<str>, V: AsRef<str>>(
    request: reqwest::RequestBuilder,
    pairs: &[(K, V)],
) -> reqwest::RequestBuilder {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
        .finish();
    request
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

/// `parlor mcp login knowledge`, its stderr read until it prints the
/// sign-in address.
fn start_login(
    spec: &std::path::Path,
    creds: &std::path::Path,
) -> Result<(Child, String, Arc<Mutex<String>>)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["mcp", "login", "knowledge", "--wait", "60", "--pipeline"])
        .arg(spec)
        .env("PARLOR_CREDENTIALS", creds)
        .env("PARLOR_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("http://") {
                let _ = tx.send(line.trim().to_string());
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let url = rx
        .recv_timeout(DEADLINE)
        .with_context(|| format!("no sign-in address printed:\n{}", log.lock().unwrap()))?;
    Ok((child, url, log))
}

fn finished(child: &mut Child) -> Result<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if started.elapsed() > DEADLINE {
            bail!("parlor mcp login did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_once_with_pkce_and_later_runs_renew_without_them() -> Result<()> {
    let servers = Servers::start()?;
    let dir = support::fresh_dir("oauth-person-signs-in");
    let creds = dir.join("credentials");
    let spec = person_spec(&dir, &servers)?;

    // Before any sign-in, connecting says what to run.
    std::env::set_var("PARLOR_CREDENTIALS", &creds);
    let signed_in = || McpServerSpec::StreamableHttp {
        url: servers.kb.url("/mcp"),
        oauth: Some(OAuthSpec {
            grant: OAuthGrant::AuthorizationCode,
            client_secret_env: None,
            client_id: CLI.into(),
            ..oauth(PARLOR, None)
        }),
    };
    let err = connect(signed_in())
        .await
        .err()
        .context("connected unsigned")?
        .to_string();
    assert!(err.contains("parlor mcp login knowledge"), "{err}");

    // A wrong password gets the page again, and no code.
    let (mut login, url, log) = start_login(&spec, &creds)?;
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("code_challenge="),
        "{url}"
    );
    assert!(
        !url.contains("code_verifier"),
        "the verifier never leaves parlor: {url}"
    );
    let (page, answer) = browse(&url, "not-her-password", "allow").await?;
    assert!(page.contains(CLI) && page.contains(SCOPE), "{page}");
    assert_eq!(answer.status(), 401);
    assert!(answer.text().await?.contains("Wrong name or password"));

    // The right one: the authorization server sends the browser back to
    // parlor's loopback port with a code; parlor exchanges it and saves
    // the refresh token.
    let (_, answer) = browse(&url, PERSON.1, "allow").await?;
    assert_eq!(answer.status(), 303);
    let back = answer.headers()["location"].to_str()?.to_string();
    assert!(
        back.starts_with("http://127.0.0.1:") && back.contains("code="),
        "{back}"
    );
    let landed = reqwest::get(&back).await?;
    assert!(landed.text().await?.contains("signed in"));
    let status = finished(&mut login)?;
    let login_log = log.lock().unwrap().clone();
    assert!(status.success(), "{login_log}");
    let file = creds.join("knowledge.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file)?.permissions().mode() & 0o777,
            0o600
        );
    }
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    let first_refresh = first["refresh_token"]
        .as_str()
        .context("refresh token")?
        .to_owned();

    // A later run, no person: the pool renews from the store and the
    // server answers. The refresh token rotated.
    let pool = connect(signed_in()).await?;
    assert!(search(&pool).await?.to_lowercase().contains("return"));
    pool.shutdown().await;
    let second: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    let second_refresh = second["refresh_token"]
        .as_str()
        .context("refresh token")?
        .to_owned();
    assert_ne!(first_refresh, second_refresh, "rotated on use");

    // The code cannot be exchanged twice, and the spent refresh token,
    // presented again, revokes the whole sign-in: the stored one too.
    let code = reqwest::Url::parse(&back)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .context("code")?;
    let token_url = servers.auth.url("/token");
    let http = reqwest::Client::new();
    let reused = posted_form(
        http.post(&token_url),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", CLI),
            ("redirect_uri", "http://127.0.0.1:1/callback"),
            ("code_verifier", &"x".repeat(43)),
        ],
    )
    .send()
    .await?;
    assert_eq!(reused.status(), 400);
    assert!(reused.text().await?.contains("invalid_grant"));
    let replay = posted_form(
        http.post(&token_url),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", first_refresh.as_str()),
            ("client_id", CLI),
        ],
    )
    .send()
    .await?;
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await?.contains("already used"));
    let err = connect(signed_in())
        .await
        .err()
        .context("connected after revocation")?
        .to_string();
    assert!(err.contains("invalid_grant"), "{err}");

    // Declining at the consent page ends the login with the reason.
    let (mut login, url, log) = start_login(&spec, &creds)?;
    let (_, answer) = browse(&url, PERSON.1, "deny").await?;
    let back = answer.headers()["location"].to_str()?.to_string();
    assert!(back.contains("error=access_denied"), "{back}");
    reqwest::get(&back).await?;
    assert!(!finished(&mut login)?.success());
    let declined_log = log.lock().unwrap().clone();
    assert!(declined_log.contains("access_denied"), "{declined_log}");

    for text in [&login_log, &declined_log] {
        assert!(
            !text.contains(&first_refresh)
                && !text.contains(&second_refresh)
                && !text.contains(PERSON.1)
        );
    }
    assert_no_secrets(&servers, &[first_refresh, second_refresh]);
    std::env::remove_var("PARLOR_CREDENTIALS");
    Ok(())
}
