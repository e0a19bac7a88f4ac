//! One device's Olm state, as MSC4081 asks of clients (decisions 21-23): identity keys, one-time
//! keys, a fallback key rotated when a pre-key message built on it decrypts and at least weekly,
//! and an archive of retired fallback keys kept 30 days after retirement (always at least one).
//!
//! vodozemac's `Account` keeps only the current and the previous fallback key. So at each
//! rotation the device snapshots its account (a pickle) with the fallback key it retires. A
//! pre-key message naming an archived key is answered by that snapshot, and only such a message:
//! the snapshot's one-time keys are never consulted, so a consumed one-time key never becomes
//! usable again.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use vodozemac::olm::{
    Account, AccountPickle, OlmMessage, PreKeyMessage, Session, SessionConfig,
    SessionCreationError, SessionPickle,
};
use vodozemac::{Curve25519PublicKey, KeyId};

use crate::Clock;

/// Rotate the fallback key at least this often.
pub const ROTATION_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Keep a retired fallback key this long after its retirement.
pub const ARCHIVE_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// The one-time and fallback key algorithm.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// Why a message could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The message is not an Olm message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// No session decrypts it and no key this device holds can start one.
    #[error("no session and no key for this message: {0}")]
    NoSession(String),
}

/// A fallback key retired by a rotation, with the account as it was, to answer pre-key
/// messages built on that key.
#[derive(Serialize, Deserialize)]
struct Retired {
    public_key: String,
    retired_ms: u64,
    snapshot: AccountPickle,
}

/// What a device keeps (see [`Device::save`]).
#[derive(Serialize, Deserialize)]
pub struct DeviceState {
    user_id: String,
    device_id: String,
    account: AccountPickle,
    current_fallback: Option<String>,
    fallback_created_ms: u64,
    archive: Vec<Retired>,
    sessions: BTreeMap<String, Vec<SessionPickle>>,
}

/// One device's keys and sessions.
pub struct Device {
    user_id: String,
    device_id: String,
    account: Account,
    /// The current fallback key (vodozemac shows it only until it is published).
    current_fallback: Option<String>,
    fallback_created_ms: u64,
    archive: Vec<Retired>,
    /// Sessions per peer identity key (curve25519, base64), newest last.
    sessions: BTreeMap<String, Vec<Session>>,
}

fn canonical(value: &Value) -> String {
    // serde_json's maps are sorted and its output compact: canonical for the JSON used here.
    value.to_string()
}

impl Device {
    /// A new device with fresh identity keys and no fallback key yet.
    pub fn new(user_id: &str, device_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            account: Account::new(),
            current_fallback: None,
            fallback_created_ms: 0,
            archive: Vec::new(),
            sessions: BTreeMap::new(),
        }
    }

    /// The device's curve25519 identity key.
    pub fn curve25519_key(&self) -> Curve25519PublicKey {
        self.account.curve25519_key()
    }

    /// The current fallback key, if one was made.
    pub fn current_fallback_key(&self) -> Option<&str> {
        self.current_fallback.as_deref()
    }

    /// Whether a session with the device of this identity key exists.
    pub fn has_session(&self, their_identity: Curve25519PublicKey) -> bool {
        self.sessions
            .get(&their_identity.to_base64())
            .is_some_and(|s| !s.is_empty())
    }

    /// Retired fallback keys still answered, oldest first.
    pub fn archived_fallback_keys(&self) -> Vec<&str> {
        self.archive.iter().map(|r| r.public_key.as_str()).collect()
    }

    /// Signs `value` (without `signatures` and `unsigned`) with the device's ed25519 key.
    fn sign(&self, mut value: Value) -> Value {
        let signature = self.account.sign(canonical(&value)).to_base64();
        value["signatures"] = json!({
            &self.user_id: { format!("ed25519:{}", self.device_id): signature }
        });
        value
    }

    /// The signed device keys for `/keys/upload`.
    pub fn device_keys(&self) -> Value {
        let keys = self.account.identity_keys();
        self.sign(json!({
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{}", self.device_id): keys.curve25519.to_base64(),
                format!("ed25519:{}", self.device_id): keys.ed25519.to_base64(),
            },
        }))
    }

    /// `count` new signed one-time keys, `{"signed_curve25519:<id>": key}`, unpublished until
    /// [`Self::mark_published`].
    pub fn new_one_time_keys(&mut self, count: usize) -> Map<String, Value> {
        self.account.generate_one_time_keys(count);
        self.signed_keys(self.account.one_time_keys(), false)
    }

    fn signed_keys(
        &self,
        keys: std::collections::HashMap<KeyId, Curve25519PublicKey>,
        fallback: bool,
    ) -> Map<String, Value> {
        keys.into_iter()
            .map(|(id, key)| {
                let mut body = json!({ "key": key.to_base64() });
                if fallback {
                    body["fallback"] = true.into();
                }
                (
                    format!("{SIGNED_CURVE25519}:{}", id.to_base64()),
                    self.sign(body),
                )
            })
            .collect()
    }

    /// The fallback key to upload, if there is a new one: the first, or a rotation that is
    /// due (weekly, or after a pre-key message built on it decrypted).
    pub fn fallback_key_to_upload(&mut self, clock: &dyn Clock) -> Option<Map<String, Value>> {
        let now = clock.now_ms();
        if self.current_fallback.is_none() || now >= self.fallback_created_ms + ROTATION_MS {
            self.rotate_fallback(now);
        }
        let unpublished = self.account.fallback_key();
        (!unpublished.is_empty()).then(|| self.signed_keys(unpublished, true))
    }

    /// The uploaded keys reached the server: they are no longer offered again.
    pub fn mark_published(&mut self) {
        self.account.mark_keys_as_published();
    }

    /// Replaces the fallback key; the one it replaces goes to the archive, which drops keys
    /// retired more than [`ARCHIVE_MS`] ago but always keeps the newest.
    fn rotate_fallback(&mut self, now: u64) {
        if let Some(current) = self.current_fallback.take() {
            self.archive.push(Retired {
                public_key: current,
                retired_ms: now,
                snapshot: self.account.pickle(),
            });
        }
        self.account.generate_fallback_key();
        self.current_fallback = self
            .account
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_base64());
        self.fallback_created_ms = now;
        let newest = self.archive.len().saturating_sub(1);
        let mut index = 0;
        self.archive.retain(|r| {
            let keep = index == newest || r.retired_ms + ARCHIVE_MS >= now;
            index += 1;
            keep
        });
    }

    /// Encrypts for a peer device: with the newest session with it, else a new one built on
    /// `their_key` (a one-time or fallback key claimed for it). Returns `(type, body)`.
    pub fn encrypt(
        &mut self,
        their_identity: Curve25519PublicKey,
        their_key: Option<Curve25519PublicKey>,
        plaintext: &[u8],
    ) -> Result<(usize, String), SessionCreationError> {
        let sessions = self.sessions.entry(their_identity.to_base64()).or_default();
        if sessions.is_empty() {
            let Some(key) = their_key else {
                return Err(SessionCreationError::MissingOneTimeKey(their_identity));
            };
            let session = self.account.create_outbound_session(
                SessionConfig::version_1(),
                their_identity,
                key,
            )?;
            sessions.push(session);
        }
        let session = sessions.last_mut().expect("a session was just ensured");
        let message = session
            .encrypt(plaintext)
            .map_err(|_| SessionCreationError::NonContributoryKey)?;
        let (kind, bytes) = message.to_parts();
        Ok((kind, STANDARD_NO_PAD.encode(bytes)))
    }

    /// Decrypts a message from the device whose identity key is `their_identity`. A pre-key
    /// message that starts a session on the current fallback key rotates it (decision 22); one
    /// built on an archived key is answered by that key's snapshot.
    pub fn decrypt(
        &mut self,
        their_identity: Curve25519PublicKey,
        kind: usize,
        body: &str,
        clock: &dyn Clock,
    ) -> Result<Vec<u8>, DecryptError> {
        let bytes = STANDARD_NO_PAD
            .decode(body.trim_end_matches('='))
            .map_err(|e| DecryptError::Malformed(e.to_string()))?;
        let message = OlmMessage::from_parts(kind, &bytes)
            .map_err(|e| DecryptError::Malformed(e.to_string()))?;
        let sessions = self.sessions.entry(their_identity.to_base64()).or_default();
        for session in sessions.iter_mut().rev() {
            let fits = match &message {
                OlmMessage::PreKey(m) => m.session_id() == session.session_id(),
                OlmMessage::Normal(_) => true,
            };
            if fits && let Ok(plaintext) = session.decrypt(&message) {
                return Ok(plaintext);
            }
        }
        let OlmMessage::PreKey(pre_key) = message else {
            return Err(DecryptError::NoSession("no session decrypts it".into()));
        };
        self.start_inbound(their_identity, &pre_key, clock.now_ms())
    }

    fn start_inbound(
        &mut self,
        their_identity: Curve25519PublicKey,
        message: &PreKeyMessage,
        now: u64,
    ) -> Result<Vec<u8>, DecryptError> {
        let key = message.one_time_key().to_base64();
        let created = match self.account.create_inbound_session(
            SessionConfig::version_1(),
            their_identity,
            message,
        ) {
            Ok(created) => created,
            Err(SessionCreationError::MissingOneTimeKey(_)) => {
                // Only a message naming an archived fallback key reaches a snapshot.
                let retired = self
                    .archive
                    .iter()
                    .find(|r| r.public_key == key)
                    .ok_or_else(|| DecryptError::NoSession(format!("unknown key {key}")))?;
                let mut snapshot = Account::from_pickle(clone_pickle(&retired.snapshot));
                snapshot
                    .create_inbound_session(SessionConfig::version_1(), their_identity, message)
                    .map_err(|e| DecryptError::NoSession(e.to_string()))?
            }
            Err(err) => return Err(DecryptError::NoSession(err.to_string())),
        };
        self.sessions
            .entry(their_identity.to_base64())
            .or_default()
            .push(created.session);
        if self.current_fallback.as_deref() == Some(key.as_str()) {
            self.rotate_fallback(now);
        }
        Ok(created.plaintext)
    }

    /// Everything the device keeps, to store between runs.
    pub fn save(&self) -> DeviceState {
        DeviceState {
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            account: self.account.pickle(),
            current_fallback: self.current_fallback.clone(),
            fallback_created_ms: self.fallback_created_ms,
            archive: self
                .archive
                .iter()
                .map(|r| Retired {
                    public_key: r.public_key.clone(),
                    retired_ms: r.retired_ms,
                    snapshot: clone_pickle(&r.snapshot),
                })
                .collect(),
            sessions: self
                .sessions
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(Session::pickle).collect()))
                .collect(),
        }
    }

    /// A device as [`Self::save`] kept it.
    pub fn restore(state: DeviceState) -> Self {
        Self {
            user_id: state.user_id,
            device_id: state.device_id,
            account: Account::from_pickle(state.account),
            current_fallback: state.current_fallback,
            fallback_created_ms: state.fallback_created_ms,
            archive: state.archive,
            sessions: state
                .sessions
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().map(Session::from_pickle).collect()))
                .collect(),
        }
    }
}

/// Account pickles are not `Clone`; a serde round trip copies one.
fn clone_pickle(pickle: &AccountPickle) -> AccountPickle {
    let json = serde_json::to_string(pickle).expect("an account pickle serialises");
    serde_json::from_str(&json).expect("an account pickle deserialises")
}

#[cfg(test)]
mod tests;
