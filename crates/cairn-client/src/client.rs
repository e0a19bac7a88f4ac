//! The client over HTTP: logs a device in, keeps its keys uploaded (with the MSC4081 opt-in),
//! sends and receives Olm-encrypted to-device messages, and keeps its state in a file.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vodozemac::Curve25519PublicKey;

use crate::Clock;
use crate::device::{Device, DeviceState, SIGNED_CURVE25519};

/// How many one-time keys the device keeps on its server.
const ONE_TIME_KEYS: u64 = 50;
/// The event type of this client's messages.
pub const MESSAGE_TYPE: &str = "org.cairn.message";
const OLM: &str = "m.olm.v1.curve25519-aes-sha2";

/// A failure of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The homeserver could not be reached, or answered with an error.
    #[error("{0}")]
    Http(String),
    /// No key could be found or claimed to start a session with the device.
    #[error("no key for {0}")]
    NoKey(String),
    /// The state file could not be read or written.
    #[error("state: {0}")]
    State(String),
}

type Result<T> = std::result::Result<T, ClientError>;

/// A message received and decrypted, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sending user.
    pub sender: String,
    /// The text, or why it could not be decrypted.
    pub text: std::result::Result<String, String>,
}

/// What a claim for a new session gave: from the owner's server, or from a cache because that
/// server could not answer (MSC4081), with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A session already existed.
    Session,
    /// The key came from its owner's server.
    Owner,
    /// The key came from the cache of this client's server; the reason it gave.
    Cached(String),
}

#[derive(Serialize, Deserialize)]
struct Saved {
    base: String,
    token: String,
    user_id: String,
    device_id: String,
    since: Option<String>,
    device_keys_uploaded: bool,
    next_txn: u64,
    device: DeviceState,
}

/// A logged-in device.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    user_id: String,
    device_id: String,
    since: Option<String>,
    device_keys_uploaded: bool,
    /// Numbers this device's to-device transactions (they must never repeat).
    next_txn: u64,
    device: Device,
    clock: Arc<dyn Clock>,
    state_file: Option<PathBuf>,
    /// Whether uploads opt in to MSC4081 (on unless turned off, for comparisons).
    eager: bool,
}

fn http_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Http(e.to_string())
}

impl Client {
    /// Logs in with a password as `device_id` and uploads the device's keys, opting in to
    /// MSC4081.
    pub async fn login(
        base: &str,
        user: &str,
        password: &str,
        device_id: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        Self::login_sharing(base, user, password, device_id, clock, true).await
    }

    /// [`Self::login`], opting in to MSC4081 or not (`eager`).
    pub async fn login_sharing(
        base: &str,
        user: &str,
        password: &str,
        device_id: &str,
        clock: Arc<dyn Clock>,
        eager: bool,
    ) -> Result<Self> {
        let http = reqwest::Client::new();
        let answer: Value = call(
            &http,
            reqwest::Method::POST,
            &format!("{base}/_matrix/client/v3/login"),
            None,
            Some(
                json!({ "type": "m.login.password", "password": password, "device_id": device_id,
                          "identifier": { "type": "m.id.user", "user": user } }),
            ),
        )
        .await?;
        let user_id = answer["user_id"].as_str().unwrap_or_default().to_owned();
        let mut client = Self {
            http,
            base: base.to_owned(),
            token: answer["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            device: Device::new(&user_id, device_id),
            user_id,
            device_id: device_id.to_owned(),
            since: None,
            device_keys_uploaded: false,
            next_txn: 0,
            clock,
            state_file: None,
            eager,
        };
        client.upload_keys(ONE_TIME_KEYS).await?;
        Ok(client)
    }

    /// A client as [`Self::save`] left it in `path`.
    pub fn load(path: PathBuf, clock: Arc<dyn Clock>) -> Result<Self> {
        let text = std::fs::read_to_string(&path).map_err(|e| ClientError::State(e.to_string()))?;
        let saved: Saved =
            serde_json::from_str(&text).map_err(|e| ClientError::State(e.to_string()))?;
        Ok(Self {
            http: reqwest::Client::new(),
            base: saved.base,
            token: saved.token,
            user_id: saved.user_id,
            device_id: saved.device_id,
            since: saved.since,
            device_keys_uploaded: saved.device_keys_uploaded,
            next_txn: saved.next_txn,
            device: Device::restore(saved.device),
            clock,
            state_file: Some(path),
            eager: true,
        })
    }

    /// Keeps the state in `path` from now on (written after every change).
    pub fn save_to(&mut self, path: PathBuf) -> Result<()> {
        self.state_file = Some(path);
        self.save()
    }

    fn save(&self) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let saved = Saved {
            base: self.base.clone(),
            token: self.token.clone(),
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            since: self.since.clone(),
            device_keys_uploaded: self.device_keys_uploaded,
            next_txn: self.next_txn,
            device: self.device.save(),
        };
        let text = serde_json::to_string(&saved).map_err(|e| ClientError::State(e.to_string()))?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text)
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| ClientError::State(e.to_string()))
    }

    /// The user ID.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The device ID.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The device's Olm state.
    pub fn device(&self) -> &Device {
        &self.device
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        call(
            &self.http,
            method,
            &format!("{}{path}", self.base),
            Some(&self.token),
            body,
        )
        .await
    }

    /// Uploads what the server lacks: device keys once, one-time keys up to `wanted`, and a new
    /// fallback key when there is one (rotation), always with the MSC4081 opt-in.
    pub async fn upload_keys(&mut self, one_time_keys: u64) -> Result<()> {
        let mut body = json!({ "eager_share_fallback_keys": self.eager });
        if !self.device_keys_uploaded {
            body["device_keys"] = self.device.device_keys();
        }
        if one_time_keys > 0 {
            body["one_time_keys"] =
                Value::Object(self.device.new_one_time_keys(one_time_keys as usize));
        }
        if let Some(fallback) = self.device.fallback_key_to_upload(self.clock.as_ref()) {
            body["fallback_keys"] = Value::Object(fallback);
        }
        self.request(
            reqwest::Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(body),
        )
        .await?;
        self.device.mark_published();
        self.device_keys_uploaded = true;
        self.save()
    }

    /// Syncs once (waiting up to `timeout_ms`), decrypts the messages received, and tops the
    /// keys up (one-time keys used, a fallback key rotated by use or age).
    pub async fn sync(&mut self, timeout_ms: u64) -> Result<Vec<Received>> {
        let path = match &self.since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout={timeout_ms}&since={since}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let answer = self.request(reqwest::Method::GET, &path, None).await?;
        let mut received = Vec::new();
        for event in answer["to_device"]["events"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if event["type"] != "m.room.encrypted" || event["content"]["algorithm"] != OLM {
                continue;
            }
            received.push(self.decrypt(event));
        }
        self.since = answer["next_batch"].as_str().map(str::to_owned);
        let held = answer["device_one_time_keys_count"][SIGNED_CURVE25519]
            .as_u64()
            .unwrap_or(0);
        self.upload_keys(ONE_TIME_KEYS.saturating_sub(held)).await?;
        Ok(received)
    }

    fn decrypt(&mut self, event: &Value) -> Received {
        let sender = event["sender"].as_str().unwrap_or_default().to_owned();
        let content = &event["content"];
        let mine = &content["ciphertext"][self.device.curve25519_key().to_base64()];
        let text = (|| {
            let their_key =
                Curve25519PublicKey::from_base64(content["sender_key"].as_str()?).ok()?;
            Some((
                their_key,
                mine["type"].as_u64()? as usize,
                mine["body"].as_str()?.to_owned(),
            ))
        })()
        .ok_or_else(|| "not for this device".to_owned())
        .and_then(|(key, kind, body)| {
            self.device
                .decrypt(key, kind, &body, self.clock.as_ref())
                .map_err(|e| e.to_string())
        })
        .and_then(|plaintext| {
            let payload: Value = serde_json::from_slice(&plaintext).map_err(|e| e.to_string())?;
            Ok(payload["content"]["body"]
                .as_str()
                .unwrap_or_default()
                .to_owned())
        });
        Received { sender, text }
    }

    /// Sends `text` to one device of `user`, Olm-encrypted; starts a session first if there is
    /// none, on a key claimed through this client's server. `timeout_ms` bounds the claim.
    pub async fn send(
        &mut self,
        user: &str,
        device: &str,
        text: &str,
        timeout_ms: u64,
    ) -> Result<KeySource> {
        let query = self
            .request(
                reqwest::Method::POST,
                "/_matrix/client/v3/keys/query",
                Some(json!({ "device_keys": { user: [device] }, "timeout": timeout_ms })),
            )
            .await?;
        let keys = &query["device_keys"][user][device]["keys"];
        let their_identity = keys[format!("curve25519:{device}")]
            .as_str()
            .and_then(|k| Curve25519PublicKey::from_base64(k).ok())
            .ok_or_else(|| ClientError::NoKey(format!("{user} {device} (identity)")))?;
        let their_ed25519 = keys[format!("ed25519:{device}")].clone();
        let mut source = KeySource::Session;
        let mut session_key = None;
        if !self.device.has_session(their_identity) {
            let claim = self
                .request(
                    reqwest::Method::POST,
                    "/_matrix/client/v3/keys/claim",
                    Some(
                        json!({ "one_time_keys": { user: { device: SIGNED_CURVE25519 } },
                                 "timeout": timeout_ms }),
                    ),
                )
                .await?;
            let key = claim["one_time_keys"][user][device]
                .as_object()
                .and_then(|k| k.values().next())
                .and_then(|k| k["key"].as_str())
                .and_then(|k| Curve25519PublicKey::from_base64(k).ok())
                .ok_or_else(|| ClientError::NoKey(format!("{user} {device}: {claim}")))?;
            let server = user.split_once(':').map_or("", |(_, s)| s);
            source = match claim["org.matrix.msc4081.cached"][server]["reason"].as_str() {
                Some(reason) => KeySource::Cached(reason.to_owned()),
                None => KeySource::Owner,
            };
            session_key = Some(key);
        }
        let payload = json!({
            "type": MESSAGE_TYPE,
            "content": { "body": text },
            "sender": self.user_id,
            "sender_device": self.device_id,
            "recipient": user,
            "recipient_keys": { "ed25519": their_ed25519 },
        });
        let (kind, body) = self
            .device
            .encrypt(their_identity, session_key, payload.to_string().as_bytes())
            .map_err(|e| ClientError::NoKey(e.to_string()))?;
        let content = json!({
            "algorithm": OLM,
            "sender_key": self.device.curve25519_key().to_base64(),
            "ciphertext": { their_identity.to_base64(): { "type": kind, "body": body } },
        });
        // Two pre-key messages of one session begin alike, so the ID is a counter, never reused
        // (a repeated ID makes the server drop the message as a retry).
        self.next_txn += 1;
        let txn = format!("{}-{}", self.device_id, self.next_txn);
        self.request(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/{txn}"),
            Some(json!({ "messages": { user: { device: content } } })),
        )
        .await?;
        self.save()?;
        Ok(source)
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Value> {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(http_err)?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(http_err)?;
    if !status.is_success() {
        return Err(ClientError::Http(format!("{url}: {status} {answer}")));
    }
    Ok(answer)
}
