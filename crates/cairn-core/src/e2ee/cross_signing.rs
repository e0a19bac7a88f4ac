//! Cross-signing: `/keys/device_signing/upload` and `/keys/signatures/upload`.
//!
//! Unlike device keys, these signatures are verified: a self-signing or user-signing key must be
//! signed by the master key, a device signature by the self-signing key, a master-key signature
//! by one of the user's devices, and another user's master key by the user-signing key. The first
//! upload of a master key needs no user-interactive authentication (MSC3967); an identical
//! re-upload neither; any replacement needs the password.

use std::collections::BTreeMap;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::signatures::{PublicKeyMap, PublicKeySet, verify_json};
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{KeySignature, KeyUsage};
use crate::uia::{AuthData, UiaOperation};

/// The body of `POST /keys/device_signing/upload`.
#[derive(Debug, Default, Deserialize)]
pub struct DeviceSigningUpload {
    /// The master key.
    pub master_key: Option<Box<RawValue>>,
    /// The self-signing key.
    pub self_signing_key: Option<Box<RawValue>>,
    /// The user-signing key.
    pub user_signing_key: Option<Box<RawValue>>,
    /// User-interactive authentication.
    pub auth: Option<AuthData>,
}

/// `user -> key ID -> signed object`, the body of `/keys/signatures/upload`.
pub type SignaturesUpload = BTreeMap<OwnedUserId, BTreeMap<String, Box<RawValue>>>;

/// The one public key of a cross-signing key object (`keys: {"ed25519:<pub>": "<pub>"}`).
fn public_key(object: &Value) -> Option<String> {
    let keys = object.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, key) = keys.iter().next()?;
    let public = id.strip_prefix("ed25519:")?;
    (key.as_str() == Some(public)).then(|| public.to_owned())
}

fn parse(raw: &RawValue) -> Result<Value> {
    serde_json::from_str(raw.get()).map_err(|_| Error::bad_json("Key must be a JSON object"))
}

fn invalid_signature(message: &str) -> Error {
    Error::new(ErrorKind::InvalidSignature, message.to_owned())
}

/// Whether `object` carries a valid signature by `signer`'s ed25519 key `public_key`.
pub(crate) fn signed_by(
    object: &Value,
    signer: &UserId,
    public_key_id: &str,
    public_key: &str,
) -> bool {
    let Ok(canonical) = serde_json::from_value::<CanonicalJsonObject>(object.clone()) else {
        return false;
    };
    let Some(sig) = object.pointer(&format!(
        "/signatures/{}/{}",
        json_pointer(signer.as_str()),
        json_pointer(&format!("ed25519:{public_key_id}"))
    )) else {
        return false;
    };
    if !sig.is_string() {
        return false;
    }
    let Ok(key) = ruma::serde::Base64::parse(public_key) else {
        return false;
    };
    let mut set = PublicKeySet::new();
    set.insert(format!("ed25519:{public_key_id}"), key);
    let mut map = PublicKeyMap::new();
    map.insert(signer.to_string(), set);
    // Only this signer's signatures are checked: keep just them.
    let mut only = canonical;
    if let Some(ruma::CanonicalJsonValue::Object(sigs)) = only.get_mut("signatures") {
        sigs.retain(|user, _| user == signer.as_str());
        if let Some(ruma::CanonicalJsonValue::Object(mine)) = sigs.get_mut(signer.as_str()) {
            mine.retain(|id, _| id == &format!("ed25519:{public_key_id}"));
        }
    }
    verify_json(&map, &only).is_ok()
}

/// Escapes a JSON-pointer segment (public keys in base64 contain `/`).
fn json_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Two key objects without their `signatures` and `unsigned`.
fn same_unsigned(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(map) = &mut v {
            map.remove("signatures");
            map.remove("unsigned");
        }
        v
    };
    strip(a) == strip(b)
}

impl Homeserver {
    /// `POST /keys/device_signing/upload`.
    pub async fn upload_device_signing(
        &self,
        me: &Requester,
        req: DeviceSigningUpload,
    ) -> Result<()> {
        let stored: BTreeMap<KeyUsage, Value> = self
            .store()
            .cross_signing_keys(&me.user_id)
            .await?
            .into_iter()
            .map(|(u, raw)| (u, serde_json::from_str(raw.get()).unwrap_or(Value::Null)))
            .collect();
        let mut uploads = Vec::new();
        for (usage, raw) in [
            (KeyUsage::Master, &req.master_key),
            (KeyUsage::SelfSigning, &req.self_signing_key),
            (KeyUsage::UserSigning, &req.user_signing_key),
        ] {
            let Some(raw) = raw else { continue };
            let key = parse(raw)?;
            if key.get("user_id").and_then(Value::as_str) != Some(me.user_id.as_str()) {
                return Err(Error::invalid_param(format!(
                    "{} key is for another user",
                    usage.as_str()
                )));
            }
            let usages = key.get("usage").and_then(Value::as_array);
            if !usages.is_some_and(|u| u.iter().any(|x| x.as_str() == Some(usage.as_str()))) {
                return Err(Error::invalid_param(format!(
                    "{} key lacks usage {}",
                    usage.as_str(),
                    usage.as_str()
                )));
            }
            if public_key(&key).is_none() {
                return Err(Error::invalid_param(
                    "A cross-signing key has exactly one ed25519 key",
                ));
            }
            uploads.push((usage, raw.clone(), key));
        }
        if uploads.is_empty() {
            return Ok(());
        }
        let master = uploads
            .iter()
            .find(|(u, _, _)| *u == KeyUsage::Master)
            .map(|(_, _, k)| k.clone())
            .or_else(|| stored.get(&KeyUsage::Master).cloned())
            .ok_or_else(|| Error::new(ErrorKind::MissingParam, "No master key available"))?;
        let master_public =
            public_key(&master).ok_or_else(|| Error::invalid_param("Invalid master key"))?;
        for (usage, _, key) in &uploads {
            if *usage != KeyUsage::Master
                && !signed_by(key, &me.user_id, &master_public, &master_public)
            {
                return Err(invalid_signature(&format!(
                    "{} key is not signed by the master key",
                    usage.as_str()
                )));
            }
        }
        let identical = uploads
            .iter()
            .all(|(usage, _, key)| stored.get(usage) == Some(key));
        if identical {
            return Ok(());
        }
        if stored.contains_key(&KeyUsage::Master) {
            self.authorize(UiaOperation::DeviceSigning, Some(&me.user_id), req.auth)
                .await?;
        }
        let keys: Vec<(KeyUsage, Box<RawValue>)> =
            uploads.into_iter().map(|(u, raw, _)| (u, raw)).collect();
        self.store()
            .set_cross_signing_keys(&me.user_id, &keys)
            .await?;
        self.notify_device_list_change(&me.user_id).await
    }

    /// `POST /keys/signatures/upload`: verifies and stores each signature; returns failures as
    /// `user -> key -> {errcode, error}`.
    pub async fn upload_signatures(
        &self,
        me: &Requester,
        body: SignaturesUpload,
    ) -> Result<BTreeMap<OwnedUserId, BTreeMap<String, Value>>> {
        let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, Value>> = BTreeMap::new();
        let mut accepted = Vec::new();
        let my_keys = self.cross_signing_map(&me.user_id).await?;
        for (user, objects) in body {
            for (key_id, raw) in objects {
                match self
                    .check_signature(me, &my_keys, &user, &key_id, &raw)
                    .await
                {
                    Ok(signature) => accepted.push(signature),
                    Err(err) => {
                        failures.entry(user.clone()).or_default().insert(
                            key_id,
                            json!({ "errcode": err.kind.errcode(), "error": err.message }),
                        );
                    }
                }
            }
        }
        if !accepted.is_empty() {
            self.store().add_key_signatures(&accepted).await?;
            let mut targets: Vec<&OwnedUserId> = accepted.iter().map(|s| &s.target_user).collect();
            targets.dedup();
            for user in targets {
                self.notify_device_list_change(user).await?;
            }
        }
        Ok(failures)
    }

    async fn cross_signing_map(&self, user_id: &UserId) -> Result<BTreeMap<KeyUsage, Value>> {
        Ok(self
            .store()
            .cross_signing_keys(user_id)
            .await?
            .into_iter()
            .filter_map(|(u, raw)| serde_json::from_str(raw.get()).ok().map(|v| (u, v)))
            .collect())
    }

    async fn check_signature(
        &self,
        me: &Requester,
        my_keys: &BTreeMap<KeyUsage, Value>,
        user: &UserId,
        key_id: &str,
        raw: &RawValue,
    ) -> Result<KeySignature> {
        let object = parse(raw)?;
        let make = |signer_key: &str| -> Result<KeySignature> {
            let signature = object
                .pointer(&format!(
                    "/signatures/{}/{}",
                    json_pointer(me.user_id.as_str()),
                    json_pointer(&format!("ed25519:{signer_key}"))
                ))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid_signature("Missing signature"))?;
            Ok(KeySignature {
                target_user: user.to_owned(),
                target_key: key_id.to_owned(),
                signer_user: me.user_id.clone(),
                signer_key_id: format!("ed25519:{signer_key}"),
                signature: signature.to_owned(),
            })
        };
        if user == me.user_id {
            if let Some(device_keys) = self.store().device_keys(&me.user_id, key_id.into()).await? {
                // My device, signed by my self-signing key.
                let stored: Value = serde_json::from_str(device_keys.get()).unwrap_or(Value::Null);
                let ssk = my_keys
                    .get(&KeyUsage::SelfSigning)
                    .and_then(public_key)
                    .ok_or_else(|| Error::not_found("No self-signing key"))?;
                if !same_unsigned(&stored, &object) || !signed_by(&object, &me.user_id, &ssk, &ssk)
                {
                    return Err(invalid_signature(
                        "Invalid signature by the self-signing key",
                    ));
                }
                return make(&ssk);
            }
            let master = my_keys
                .get(&KeyUsage::Master)
                .ok_or_else(|| Error::not_found("Unknown key"))?;
            if public_key(master).as_deref() != Some(key_id) || !same_unsigned(master, &object) {
                return Err(Error::not_found("Unknown key"));
            }
            // My master key, signed by one of my devices.
            let signer_device = me.device_id.as_str();
            let device_keys = self
                .store()
                .device_keys(&me.user_id, &me.device_id)
                .await?
                .ok_or_else(|| invalid_signature("The signing device has no keys"))?;
            let device: Value = serde_json::from_str(device_keys.get()).unwrap_or(Value::Null);
            let device_key = device
                .pointer(&format!(
                    "/keys/{}",
                    json_pointer(&format!("ed25519:{signer_device}"))
                ))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !signed_by(&object, &me.user_id, signer_device, device_key) {
                return Err(invalid_signature("Invalid signature by the device"));
            }
            return make(signer_device);
        }
        // Another user's master key, signed by my user-signing key.
        let theirs = self.cross_signing_map(user).await?;
        let master = theirs
            .get(&KeyUsage::Master)
            .ok_or_else(|| Error::not_found("Unknown key"))?;
        if public_key(master).as_deref() != Some(key_id) || !same_unsigned(master, &object) {
            return Err(Error::not_found("Unknown key"));
        }
        let usk = my_keys
            .get(&KeyUsage::UserSigning)
            .and_then(public_key)
            .ok_or_else(|| Error::not_found("No user-signing key"))?;
        if !signed_by(&object, &me.user_id, &usk, &usk) {
            return Err(invalid_signature(
                "Invalid signature by the user-signing key",
            ));
        }
        make(&usk)
    }

    /// Adds stored signatures to a key object's `signatures`.
    pub(crate) fn merge_signatures(
        object: &mut Map<String, Value>,
        signatures: &[KeySignature],
        target_key: &str,
        visible_to: Option<&UserId>,
    ) {
        for sig in signatures.iter().filter(|s| s.target_key == target_key) {
            if visible_to
                .is_some_and(|v| v != sig.signer_user && sig.signer_user != sig.target_user)
            {
                continue;
            }
            let all = object
                .entry("signatures")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(all) = all {
                let by = all
                    .entry(sig.signer_user.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(by) = by {
                    by.insert(sig.signer_key_id.clone(), sig.signature.clone().into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::signatures::Ed25519KeyPair;
    use ruma::user_id;

    /// A key whose unpadded-base64 public key contains `/`, which JSON pointers must escape.
    fn key_with_slash() -> (Ed25519KeyPair, String) {
        loop {
            let der = Ed25519KeyPair::generate();
            let probe = Ed25519KeyPair::from_der(&der, String::new()).unwrap();
            let public = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(
                probe.public_key().to_vec(),
            )
            .encode();
            if public.contains('/') {
                return (
                    Ed25519KeyPair::from_der(&der, public.clone()).unwrap(),
                    public,
                );
            }
        }
    }

    #[test]
    fn signatures_verify_by_keys_with_any_base64_characters() {
        let user = user_id!("@alice:example.org");
        let (key, public) = key_with_slash();
        let mut object: CanonicalJsonObject =
            serde_json::from_value(json!({ "user_id": user, "usage": ["self_signing"], "keys": { format!("ed25519:{public}"): public } })).unwrap();
        ruma::signatures::sign_json(user.as_str(), &key, &mut object).unwrap();
        let value = serde_json::to_value(&object).unwrap();
        assert_eq!(public_key(&value).as_deref(), Some(public.as_str()));
        assert!(signed_by(&value, user, &public, &public));
        let (_, other_public) = key_with_slash();
        assert!(
            !signed_by(&value, user, &other_public, &other_public),
            "a different key does not verify"
        );
        let mut tampered = value.clone();
        tampered["usage"] = json!(["master"]);
        assert!(!signed_by(&tampered, user, &public, &public));
    }
}
