//! The server's signing key and the key document other servers fetch to verify us.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use cairn_core::store::{ServerKeyStore, SigningKeyRecord, StoreError};
use ruma::CanonicalJsonObject;
use ruma::signatures::Ed25519KeyPair;
use ruma::{OwnedServerName, canonical_json::to_canonical_value};
use serde_json::json;

/// How long other servers may cache our key document (Synapse's default, one day).
const KEY_VALIDITY_MS: u64 = 24 * 60 * 60 * 1000;

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored key is not a valid Ed25519 PKCS#8 document.
    #[error("stored signing key is unreadable: {0}")]
    BadKey(String),
}

/// Who this server is: its name and its signing key. Cheap to clone.
#[derive(Clone)]
pub struct ServerIdentity {
    server_name: OwnedServerName,
    key_pair: Arc<Ed25519KeyPair>,
}

impl ServerIdentity {
    /// Loads the signing key from the store, generating and storing one on first start.
    /// Processes sharing a database all get the same key.
    pub async fn load_or_create(
        store: &dyn ServerKeyStore,
        server_name: OwnedServerName,
        now_ms: u64,
    ) -> Result<Self, IdentityError> {
        let candidate = SigningKeyRecord {
            version: format!("a_{}", cairn_core::secrets::random_alphanumeric(4)),
            pkcs8: Ed25519KeyPair::generate().to_vec(),
            created_ms: now_ms,
        };
        let stored = store.signing_key_or_insert(&candidate).await?;
        let key_pair = Ed25519KeyPair::from_der(&stored.pkcs8, stored.version)
            .map_err(|e| IdentityError::BadKey(e.to_string()))?;
        Ok(Self {
            server_name,
            key_pair: Arc::new(key_pair),
        })
    }

    /// The server name.
    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// The key ID, `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.key_pair.version())
    }

    /// The public key, unpadded base64 as Matrix writes keys.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.key_pair.public_key())
    }

    /// Signs a JSON object in place (adds `signatures.<server_name>.<key_id>`).
    pub fn sign_json(
        &self,
        object: &mut CanonicalJsonObject,
    ) -> Result<(), ruma::signatures::JsonError> {
        ruma::signatures::sign_json(self.server_name.as_str(), &*self.key_pair, object)
    }

    /// The signed `/_matrix/key/v2/server` document, valid for a day from `now_ms`.
    pub fn key_document(&self, now_ms: u64) -> serde_json::Value {
        let unsigned = json!({
            "server_name": self.server_name,
            "verify_keys": { self.key_id(): { "key": self.public_key_base64() } },
            "old_verify_keys": {},
            "valid_until_ts": now_ms + KEY_VALIDITY_MS,
        });
        let mut object = match to_canonical_value(&unsigned) {
            Ok(ruma::CanonicalJsonValue::Object(object)) => object,
            _ => unreachable!("a literal object with integer timestamps is canonical JSON"),
        };
        self.sign_json(&mut object)
            .expect("a fresh object without signatures can be signed");
        serde_json::to_value(object).expect("canonical JSON is JSON")
    }

    /// Exposes the key pair for request signing.
    pub fn key_pair(&self) -> &Ed25519KeyPair {
        &self.key_pair
    }
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("server_name", &self.server_name)
            .field("key_id", &self.key_id())
            .finish()
    }
}

impl cairn_core::EventSigner for ServerIdentity {
    fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    fn hash_and_sign(
        &self,
        event: &mut CanonicalJsonObject,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> cairn_core::Result<()> {
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            &*self.key_pair,
            event,
            &rules.redaction,
        )
        .map_err(|e| {
            cairn_core::Error::new(
                cairn_core::ErrorKind::Internal,
                format!("cannot sign event: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::memory_store::MemoryStore;
    use ruma::signatures::{PublicKeyMap, PublicKeySet, verify_json};

    #[tokio::test]
    async fn key_is_created_once_and_documents_verify() {
        let store = MemoryStore::new();
        let name: OwnedServerName = "example.org".try_into().unwrap();
        let first = ServerIdentity::load_or_create(&store, name.clone(), 1)
            .await
            .unwrap();
        let second = ServerIdentity::load_or_create(&store, name.clone(), 2)
            .await
            .unwrap();
        assert_eq!(first.key_id(), second.key_id());
        assert_eq!(first.public_key_base64(), second.public_key_base64());
        assert!(first.key_id().starts_with("ed25519:a_"));

        let doc = first.key_document(1_000);
        assert_eq!(doc["valid_until_ts"], 1_000 + KEY_VALIDITY_MS);
        assert_eq!(
            doc["verify_keys"][first.key_id()]["key"],
            first.public_key_base64()
        );
        let object: CanonicalJsonObject = serde_json::from_value(doc.clone()).unwrap();
        let mut keys = PublicKeySet::new();
        keys.insert(
            first.key_id(),
            ruma::serde::Base64::parse(first.public_key_base64()).unwrap(),
        );
        let mut map = PublicKeyMap::new();
        map.insert("example.org".into(), keys);
        verify_json(&map, &object).expect("the key document verifies with its own key");

        let mut tampered = object.clone();
        tampered.insert(
            "valid_until_ts".into(),
            ruma::CanonicalJsonValue::Integer(5u32.into()),
        );
        assert!(verify_json(&map, &tampered).is_err());
    }
}
