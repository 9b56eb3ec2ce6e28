//! The real `infini serve` on a random port, and a tiny HTTP/1.1 client over `TcpStream` (no
//! client crate: requests are written by hand, responses read to the end, chunked bodies joined).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics, saying how to provide it, when the default model is missing.
pub fn require_model() {
    assert!(
        root().join(infini::model::DEFAULT_MODEL).is_file(),
        "the default model {} is missing: run ./scripts/setup.sh (or make setup) first",
        infini::model::DEFAULT_MODEL
    );
}

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "infini-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub log: PathBuf,
}

impl Server {
    /// Starts `infini serve` on a random port with `env` (INFINI_* inherited ones removed) and waits
    /// until `/ready` answers 200.
    pub fn start(env: &[(&str, String)], log_dir: &Path) -> Self {
        let log = log_dir.join(format!(
            "server-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let log = unique(log);
        let mut command = Command::new(env!("CARGO_BIN_EXE_infini"));
        command.current_dir(root()).arg("serve");
        for (key, _) in
            std::env::vars().filter(|(k, _)| k.starts_with("INFINI_") || k == "DATABASE_URL")
        {
            command.env_remove(key);
        }
        command
            .env("INFINI_ADDR", "127.0.0.1:0")
            .env("INFINI_THREADS", "1")
            .env("INFINI_LOG", "info")
            .env("INFINI_KEEP_ALIVE_SECS", "1");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the server starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("infini listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "no listening line, got {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        let server = Self {
            child: Some(child),
            addr,
            log,
        };
        let started = Instant::now();
        loop {
            if let Ok(response) = server.try_request("GET", "/ready", &[], None) {
                if response.status == 200 {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "not ready after 120 s; log:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no drain, nothing stored; waits for the process to be gone.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        child.kill().unwrap();
        child.wait().unwrap()
    }

    /// SIGTERM, then waits for the exit (at most 60 s).
    pub fn stop(mut self) -> ExitStatus {
        self.terminate();
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the server did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Response> {
        let mut stream = self.send(method, path, headers, body)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        Ok(Response::parse(&raw))
    }

    /// One request, read to the end.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Response {
        self.try_request(method, path, headers, body.map(str::as_bytes))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Response {
        self.request("GET", path, &auth(key), None)
    }

    pub fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Response {
        self.request("POST", path, &auth(key), Some(&body.to_string()))
    }

    /// Writes a request and returns the open connection (for reading a stream part-way).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<TcpStream> {
        let mut stream = TcpStream::connect(&self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        if let Some(body) = body {
            stream.write_all(body)?;
        }
        Ok(stream)
    }

    /// Writes `raw` (a whole request, head and body, exactly as given) on a new connection and
    /// reads the response to its end.
    pub fn raw_request(&self, raw: &[u8]) -> Response {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        stream.write_all(raw).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        Response::parse(&out)
    }

    /// POSTs `body` and returns the open connection, to read a streamed reply part-way.
    pub fn open_stream(&self, path: &str, key: &str, body: &Value) -> TcpStream {
        self.send(
            "POST",
            path,
            &[("Authorization", key)],
            Some(body.to_string().as_bytes()),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// The value of a Prometheus sample line (`name` with its labels), 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics", None).text();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unique(path: PathBuf) -> PathBuf {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    path.with_extension(format!("{}.log", COUNT.fetch_add(1, Ordering::SeqCst)))
}

pub fn auth(key: Option<&str>) -> Vec<(&'static str, &str)> {
    key.map(|k| vec![("Authorization", k)]).unwrap_or_default()
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn parse(raw: &[u8]) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response head");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .flat_map(|event| {
                event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Asserts the status and OpenAI's error shape; returns the error object.
    pub fn expect_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let body = self.json();
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(error["type"].is_string(), "{body}");
        assert!(
            error.get("param").is_some() && error.get("code").is_some(),
            "{body}"
        );
        error.clone()
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
    out
}

/// Reads an open SSE response until `data: ` has appeared `events` times; returns what was read.
pub fn read_events(stream: &mut TcpStream, events: usize) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while seen.windows(6).filter(|w| w == b"data: ").count() < events {
        let n = stream.read(&mut buffer).unwrap();
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    seen
}

/// A chat request body: greedy, short.
pub fn chat(messages: Value, max_tokens: u32) -> Value {
    serde_json::json!({"messages": messages, "max_tokens": max_tokens, "temperature": 0})
}

/// One user message.
pub fn user(text: &str) -> Value {
    serde_json::json!([{"role": "user", "content": text}])
}

/// A new session of `key`'s (asserting 201); its id.
pub fn create_session(server: &Server, key: &str) -> String {
    let response = server.request("POST", "/v1/sessions", &[("Authorization", key)], None);
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()["id"].as_str().unwrap().to_string()
}

/// A greedy, non-streaming turn of `session` (whatever the status).
pub fn session_turn(
    server: &Server,
    key: &str,
    session: &str,
    text: &str,
    max_tokens: u32,
) -> Response {
    let mut body = chat(user(text), max_tokens);
    body["session_id"] = serde_json::json!(session);
    server.post("/v1/chat/completions", Some(key), &body)
}

/// `GET /v1/sessions/{id}` (asserting 200).
pub fn session_view(server: &Server, key: &str, id: &str) -> Value {
    let response = server.get(&format!("/v1/sessions/{id}"), Some(key));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// The assistant's text of a non-streaming chat reply (asserting 200).
pub fn reply_text(response: &Response) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A schema of its own in the local PostgreSQL's `test` database, dropped on drop.
pub struct PgSchema {
    name: String,
}

fn psql(sql: &str) -> bool {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl PgSchema {
    /// A new schema, or `None` (saying so) when no PostgreSQL answers on this machine; under CI
    /// (`CI` set), where `.ci/run` has PostgreSQL running, that is a failure, not a skip.
    pub fn create() -> Option<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("infini_test_{}_{nanos}", std::process::id());
        if psql(&format!("CREATE SCHEMA {name}")) {
            return Some(Self { name });
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "no PostgreSQL at 127.0.0.1:5432 (database test, user postgres, trust auth), and CI is \
             set: start it (pg_ctlcluster $(ls /etc/postgresql) main start) or unset CI to skip"
        );
        eprintln!("SKIPPED: no PostgreSQL at 127.0.0.1:5432 (database test, user postgres)");
        None
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{}",
            self.name
        )
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// The server's router in-process over `engine` (the real one or a scripted one), sessions in a
/// SQLite file under `dir`, no keys, `limits` per request and `import_bytes` for an import.
pub async fn in_process_router(
    engine: std::sync::Arc<dyn infini::engine::channel::TurnEngine>,
    dir: &TempDir,
    limits: infini::api::validate::Limits,
    import_bytes: usize,
) -> axum::Router {
    use std::sync::Arc;
    let url = format!("sqlite://{}?mode=rwc", dir.0.join("infini.db").display());
    let store = infini::store::sql::SqlStore::connect(&url).await.unwrap();
    let state = infini::api::AppState {
        engine,
        store: Arc::new(store),
        hot: Arc::new(infini::store::hot::HotSessions::default()),
        keys: Arc::new(infini::api::auth::ApiKeys::default()),
        metrics: Arc::new(infini::api::metrics::Metrics::default()),
        limits,
        model_name: "in-process".into(),
        draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        keep_alive: Duration::from_secs(1),
        started_at: 0,
        log_memory_stats: false,
        playground: true,
    };
    let bodies = infini::api::BodyLimits {
        any: 1 << 20,
        import: import_bytes,
    };
    infini::api::router(state, bodies)
}
