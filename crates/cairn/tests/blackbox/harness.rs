//! Starting and stopping real servers, and a small JSON client.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use cairn_store::testing::TempDatabase;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longest a server may take to start.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Runs each listed case once per backend.
#[macro_export]
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $case() { super::$case($crate::harness::Backend::Sqlite).await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $case() { super::$case($crate::harness::Backend::Postgres).await; })*
        }
    };
}

/// Which database a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running `cairn serve` with its own data directory and database.
pub struct TestServer {
    child: Option<Child>,
    pub base: String,
    pub federation: String,
    pub data_dir: PathBuf,
    pub database_url: String,
    extra_args: Vec<String>,
    _dir: Arc<tempfile::TempDir>,
    _database: Option<Arc<TempDatabase>>,
}

impl TestServer {
    /// Starts a server with open registration.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &["--open-registration"]).await
    }

    /// Starts a server with extra flags.
    pub async fn start_with(backend: Backend, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let (database_url, database) = match backend {
            Backend::Sqlite => (format!("sqlite://{}/cairn.db", data_dir.display()), None),
            Backend::Postgres => {
                let db = TempDatabase::create().await;
                (db.url().to_owned(), Some(Arc::new(db)))
            }
        };
        let mut server = Self {
            child: None,
            base: String::new(),
            federation: String::new(),
            data_dir,
            database_url,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            _dir: Arc::new(dir),
            _database: database,
        };
        server.spawn().await;
        server
    }

    /// The arguments of `cairn serve` for this server (ports chosen by the OS).
    fn serve_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "serve",
            "--server-name",
            "localhost:8448",
            "--client-listen",
            "127.0.0.1:0",
            "--federation-listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--data-dir".into(), self.data_dir.display().to_string()]);
        args.extend(["--database-url".into(), self.database_url.clone()]);
        args.extend(self.extra_args.iter().cloned());
        args
    }

    async fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("server.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(self.serve_args())
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("cairn starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut client, mut federation) = (None, None);
        let found = tokio::time::timeout(START_DEADLINE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.trim().strip_prefix("client API:") {
                    client = Some(url.trim().to_owned());
                }
                if let Some(url) = line.trim().strip_prefix("federation:") {
                    federation = Some(url.trim().to_owned());
                }
                if client.is_some() && federation.is_some() {
                    return true;
                }
            }
            false
        })
        .await;
        if found != Ok(true) {
            let log = std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default();
            panic!("cairn did not start; its log:\n{log}");
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.base = client.unwrap();
        self.federation = federation.unwrap();
        self.child = Some(child);
    }

    /// `kill -9`, then start again on the same data.
    pub async fn kill_and_restart(&mut self) {
        let mut child = self.child.take().unwrap();
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        self.spawn().await;
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited successfully.
    pub async fn terminate(&mut self) -> bool {
        let mut child = self.child.take().unwrap();
        let pid = child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap()
            .success()
    }

    /// Runs another `cairn` subcommand against this server's data, with stdin.
    pub async fn cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(args)
            .args(["--server-name", "localhost:8448", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--database-url", &self.database_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .await
            .unwrap();
        child.wait_with_output().await.unwrap()
    }

    /// A client for this server.
    pub fn client(&self) -> Client {
        Client {
            http: http(),
            base: self.base.clone(),
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A minimal Matrix HTTP client that returns status and JSON.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
}

/// An answer: status and parsed JSON body (`Null` if the body was not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// Asserts the status and `errcode`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, errcode: &str) {
        assert_eq!(
            (self.status, self.body["errcode"].as_str()),
            (status, Some(errcode)),
            "{:?}",
            self.body
        );
        assert!(
            self.body["error"].is_string(),
            "error text in {:?}",
            self.body
        );
    }

    /// Asserts 200 and returns the body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{:?}", self.body);
        self.body
    }
}

impl Client {
    /// A client for the server whose client API is at `base` (`http://host:port`).
    pub fn at(base: String) -> Self {
        Self { http: http(), base }
    }

    /// Sends a request with an optional token and raw body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let res = req.send().await.expect("request reaches the server");
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Sends JSON.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.raw(
            method,
            path,
            token,
            body.map(|b| serde_json::to_vec(&b).unwrap()),
        )
        .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send(Method::PUT, path, token, Some(body)).await
    }

    /// Registers `name` with password `pw` through the dummy flow; returns the login.
    pub async fn register(&self, name: &str, pw: &str) -> Session {
        let body = json!({
            "username": name, "password": pw, "auth": { "type": "m.login.dummy" },
        });
        Session::from(
            self.post("/_matrix/client/v3/register", None, body)
                .await
                .ok(),
        )
    }

    /// Logs in with a password.
    pub async fn login(&self, name: &str, pw: &str, device_id: Option<&str>) -> Answer {
        let mut body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": name },
            "password": pw,
        });
        if let Some(device_id) = device_id {
            body["device_id"] = device_id.into();
        }
        self.post("/_matrix/client/v3/login", None, body).await
    }
}

/// A logged-in device.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

impl From<Value> for Session {
    fn from(v: Value) -> Self {
        Self {
            user_id: v["user_id"].as_str().expect("user_id").to_owned(),
            device_id: v["device_id"].as_str().expect("device_id").to_owned(),
            token: v["access_token"].as_str().expect("access_token").to_owned(),
        }
    }
}

/// Percent-encodes a path segment (user IDs hold `@` and `:`).
pub fn enc(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTPS client for the federation listener (self-signed certificate).
pub fn federation_http() -> reqwest::Client {
    http()
}
