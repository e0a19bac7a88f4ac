//! Other servers' signing keys: checking a key document (`GET /_matrix/key/v2/server`) before
//! its keys are trusted, and the [`KeyRing`] that caches them in the store and authenticates
//! inbound requests with them.
//!
//! A document is accepted only if it names the server we asked, every signature by that server
//! is made with a key the document itself lists under `verify_keys` and verifies, and there is
//! at least one such signature. Its validity is capped at seven days from now, as the spec asks
//! of servers that cache keys.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use cairn_core::store::{Backoff, RemoteKey};
use cairn_core::{Clock, Store};
use ruma::signatures::{PublicKeyMap, PublicKeySet, verify_json};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};

use crate::{FederationClient, XMatrix, XMatrixError};

/// The longest a fetched key is trusted before it is fetched again.
pub const MAX_KEY_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Why a key document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unacceptable key document: {0}")]
pub struct KeyDocumentError(pub String);

/// Checks `document`, fetched from `server` at `now_ms`, and returns the keys it vouches for:
/// the current ones (`verify_keys`) and the old ones (`old_verify_keys`, marked expired).
pub fn check_key_document(
    document: &CanonicalJsonObject,
    server: &ServerName,
    now_ms: u64,
) -> Result<Vec<RemoteKey>, KeyDocumentError> {
    let bad = |why: &str| KeyDocumentError(why.to_owned());
    if document
        .get("server_name")
        .and_then(CanonicalJsonValue::as_str)
        != Some(server.as_str())
    {
        return Err(bad("server_name is not the server asked"));
    }
    let valid_until = match document.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
        _ => return Err(bad("valid_until_ts is missing")),
    };
    let valid_until_ms = valid_until.min(now_ms.saturating_add(MAX_KEY_VALIDITY_MS));

    let verify_keys = object(document, "verify_keys")?.ok_or_else(|| bad("no verify_keys"))?;
    let mut current = PublicKeySet::new();
    let mut keys = Vec::new();
    for (key_id, entry) in verify_keys {
        let key = public_key(key_id, entry)?;
        current.insert(
            key_id.clone(),
            ruma::serde::Base64::parse(&key).map_err(|_| bad("unreadable key"))?,
        );
        keys.push(RemoteKey {
            key_id: key_id.clone(),
            key,
            valid_until_ms,
            expired_ms: None,
        });
    }

    let signatures = object(document, "signatures")?
        .and_then(|by_server| by_server.get(server.as_str()))
        .and_then(CanonicalJsonValue::as_object)
        .filter(|sigs| !sigs.is_empty())
        .ok_or_else(|| bad("not signed by the server"))?;
    for key_id in signatures.keys() {
        let Some(key) = current.get(key_id) else {
            return Err(bad("signed with a key it does not list"));
        };
        let mut only = PublicKeySet::new();
        only.insert(key_id.clone(), key.clone());
        let mut map = PublicKeyMap::new();
        map.insert(server.to_string(), only);
        // verify_json checks every signature of the server it has a key for: one at a time.
        let mut signed_once = document.clone();
        keep_only_signature(&mut signed_once, server, key_id);
        verify_json(&map, &signed_once).map_err(|e| KeyDocumentError(e.to_string()))?;
    }

    if let Some(old) = object(document, "old_verify_keys")? {
        for (key_id, entry) in old {
            let expired = match entry.as_object().and_then(|e| e.get("expired_ts")) {
                Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
                _ => return Err(bad("old key without expired_ts")),
            };
            keys.push(RemoteKey {
                key_id: key_id.clone(),
                key: public_key(key_id, entry)?,
                valid_until_ms,
                expired_ms: Some(expired),
            });
        }
    }
    Ok(keys)
}

/// How long fetching a key document may take while a request waits on it.
const KEY_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Other servers' keys: cached in the store, fetched when missing or stale.
#[derive(Clone)]
pub struct KeyRing {
    us: OwnedServerName,
    store: Arc<dyn Store>,
    client: FederationClient,
    clock: Arc<dyn Clock>,
}

impl KeyRing {
    /// A key ring for the server `us`.
    pub fn new(
        us: OwnedServerName,
        store: Arc<dyn Store>,
        client: FederationClient,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            us,
            store,
            client,
            clock,
        }
    }

    /// The current key `key_id` of `server` for verifying a request, fetched if it is not
    /// cached or no longer valid. Old (expired) keys never verify requests.
    pub async fn request_key(&self, server: &ServerName, key_id: &str) -> Result<String, String> {
        let now = self.clock.now_ms();
        let usable = |key: &RemoteKey| key.expired_ms.is_none() && key.valid_until_ms >= now;
        let cached = self
            .store
            .remote_key(server, key_id)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(key) = cached.filter(usable) {
            return Ok(key.key);
        }
        let document = self
            .client
            .key_document(server, KEY_FETCH_TIMEOUT)
            .await
            .map_err(|e| format!("cannot fetch the keys of {server}: {e}"))?;
        let keys = check_key_document(&document, server, now).map_err(|e| e.to_string())?;
        self.store
            .store_remote_keys(server, &keys)
            .await
            .map_err(|e| e.to_string())?;
        keys.into_iter()
            .find(|key| key.key_id == key_id && usable(key))
            .map(|key| key.key)
            .ok_or_else(|| format!("{server} does not publish the key {key_id}"))
    }

    /// Authenticates an inbound request from its `Authorization` header, returning the origin.
    /// `uri` is the request target as received; `body` the raw body, if any.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<&[u8]>,
    ) -> Result<OwnedServerName, XMatrixError> {
        let credential = XMatrix::parse(authorization.ok_or(XMatrixError::Missing)?)?;
        let content: Option<CanonicalJsonValue> = body
            .filter(|b| !b.is_empty())
            .map(serde_json::from_slice)
            .transpose()
            .map_err(|e| XMatrixError::BadSignature(format!("body is not canonical JSON: {e}")))?;
        let key = self
            .request_key(&credential.origin, &credential.key_id)
            .await
            .map_err(XMatrixError::BadSignature)?;
        credential.verify(&self.us, method, uri, content.as_ref(), &key)?;
        self.heard_from(&credential.origin).await;
        Ok(credential.origin)
    }

    /// Checks an event's signatures (by the servers the room version requires, with their
    /// current keys) and its content hash. An event whose hash does not match is refused; a
    /// server would keep its redacted form, which Cairn does not do yet.
    pub async fn verify_event(
        &self,
        event: &CanonicalJsonObject,
        version: &ruma::RoomVersionId,
    ) -> Result<(), String> {
        let rules = version
            .rules()
            .ok_or_else(|| format!("unsupported room version {version}"))?;
        let signatures = match event.get("signatures") {
            Some(CanonicalJsonValue::Object(by_server)) => by_server,
            _ => return Err("event is not signed".into()),
        };
        let mut map = PublicKeyMap::new();
        for (server, keys) in signatures {
            let Ok(server_name) = ServerName::parse(server) else {
                continue;
            };
            let Some(keys) = keys.as_object() else {
                continue;
            };
            let mut set = PublicKeySet::new();
            for key_id in keys.keys().filter(|id| id.starts_with("ed25519:")) {
                // Keys that cannot be had are left out: the check then fails only if that
                // server's signature is one the room version requires.
                if let Ok(key) = self.request_key(&server_name, key_id).await
                    && let Ok(key) = ruma::serde::Base64::parse(&key)
                {
                    set.insert(key_id.clone(), key);
                }
            }
            map.insert(server.clone(), set);
        }
        match ruma::signatures::verify_event(&map, event, &rules) {
            Ok(ruma::signatures::Verified::All) => Ok(()),
            Ok(ruma::signatures::Verified::Signatures) => Err("content hash mismatch".into()),
            Err(err) => Err(err.to_string()),
        }
    }

    /// A server that just sent a valid request is up: its backoff ends and its queue goes now.
    async fn heard_from(&self, origin: &ServerName) {
        match self.store.backoff(origin).await {
            Ok(backoff) if backoff != Backoff::default() => {
                if let Err(err) = self.store.set_backoff(origin, Backoff::default()).await {
                    tracing::warn!(%err, %origin, "cannot clear the backoff");
                }
                tracing::info!(%origin, "server is back; sending its queue");
                self.client.sender_wake().notify_one();
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, %origin, "cannot read the backoff"),
        }
    }
}

fn object<'a>(
    document: &'a CanonicalJsonObject,
    field: &str,
) -> Result<Option<&'a CanonicalJsonObject>, KeyDocumentError> {
    match document.get(field) {
        None => Ok(None),
        Some(CanonicalJsonValue::Object(object)) => Ok(Some(object)),
        Some(_) => Err(KeyDocumentError(format!("{field} is not an object"))),
    }
}

/// The `key` of one `verify_keys` entry, checked to be an Ed25519 key under an `ed25519:` ID.
fn public_key(key_id: &str, entry: &CanonicalJsonValue) -> Result<String, KeyDocumentError> {
    let bad = |why: &str| KeyDocumentError(format!("{key_id}: {why}"));
    let version = key_id
        .strip_prefix("ed25519:")
        .ok_or_else(|| bad("not an ed25519 key"))?;
    if version.is_empty()
        || !version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(bad("bad key version"));
    }
    let key = entry
        .as_object()
        .and_then(|e| e.get("key"))
        .and_then(CanonicalJsonValue::as_str)
        .ok_or_else(|| bad("no key"))?;
    match STANDARD_NO_PAD.decode(key.trim_end_matches('=')) {
        Ok(bytes) if bytes.len() == 32 => Ok(key.trim_end_matches('=').to_owned()),
        _ => Err(bad("not a 32-byte base64 key")),
    }
}

fn keep_only_signature(document: &mut CanonicalJsonObject, server: &ServerName, key_id: &str) {
    if let Some(CanonicalJsonValue::Object(by_server)) = document.get_mut("signatures") {
        by_server.retain(|name, _| name == server.as_str());
        if let Some(CanonicalJsonValue::Object(sigs)) = by_server.get_mut(server.as_str()) {
            sigs.retain(|id, _| id == key_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerIdentity;
    use cairn_core::memory_store::MemoryStore;
    use ruma::server_name;

    async fn document(name: &str, now_ms: u64) -> (ServerIdentity, CanonicalJsonObject) {
        let identity =
            ServerIdentity::load_or_create(&MemoryStore::new(), name.try_into().unwrap(), 0)
                .await
                .unwrap();
        let doc = serde_json::from_value(identity.key_document(now_ms)).unwrap();
        (identity, doc)
    }

    #[tokio::test]
    async fn a_genuine_document_gives_its_key_capped_at_seven_days() {
        let (identity, doc) = document("remote.test", 1_000).await;
        let keys = check_key_document(&doc, server_name!("remote.test"), 1_000).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key_id, identity.key_id());
        assert_eq!(keys[0].key, identity.public_key_base64());
        assert_eq!(keys[0].expired_ms, None);
        // Our own documents are valid for a day: under the cap.
        assert_eq!(keys[0].valid_until_ms, 1_000 + 24 * 60 * 60 * 1000);
        // Checked long before that day ends, a far-future validity is capped.
        let mut far = doc.clone();
        far.insert(
            "valid_until_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::MAX),
        );
        identity.sign_json(&mut far).unwrap();
        let keys = check_key_document(&far, server_name!("remote.test"), 5).unwrap();
        assert_eq!(keys[0].valid_until_ms, 5 + MAX_KEY_VALIDITY_MS);
    }

    #[tokio::test]
    async fn forged_or_foreign_documents_are_refused() {
        let (_, doc) = document("remote.test", 1_000).await;
        // Asked another server.
        assert!(check_key_document(&doc, server_name!("other.test"), 0).is_err());
        // Altered after signing.
        let mut altered = doc.clone();
        altered.insert(
            "valid_until_ts".into(),
            CanonicalJsonValue::Integer(9u32.into()),
        );
        assert!(check_key_document(&altered, server_name!("remote.test"), 0).is_err());
        // Unsigned.
        let mut unsigned = doc.clone();
        unsigned.remove("signatures");
        assert!(check_key_document(&unsigned, server_name!("remote.test"), 0).is_err());
        // Its key swapped for an impostor's, signatures kept.
        let (impostor, _) = document("remote.test", 1_000).await;
        let mut swapped = doc.clone();
        let mut entry = CanonicalJsonObject::new();
        entry.insert(
            "key".into(),
            CanonicalJsonValue::String(impostor.public_key_base64()),
        );
        let key_id = match doc.get("verify_keys") {
            Some(CanonicalJsonValue::Object(keys)) => keys.keys().next().unwrap().clone(),
            _ => unreachable!(),
        };
        let mut keys = CanonicalJsonObject::new();
        keys.insert(key_id, CanonicalJsonValue::Object(entry));
        swapped.insert("verify_keys".into(), CanonicalJsonValue::Object(keys));
        assert!(check_key_document(&swapped, server_name!("remote.test"), 0).is_err());
    }
}
