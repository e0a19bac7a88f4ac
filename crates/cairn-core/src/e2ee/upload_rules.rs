//! The rules an upload's one-time keys are checked by, as pure functions.
//!
//! The store applies [`KeyWrite::new_one_time_keys`] inside the upload's own transaction, to
//! what the device holds at that moment. Checked earlier, in a read of its own, two concurrent
//! uploads of one device could both pass the cap, or store two different keys under one ID
//! (the second silently dropped, yet acknowledged).

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::store::{KeyWrite, OneTimeKeyRefusal, OneTimeKeysHeld, UploadedKey};

/// Most unclaimed one-time keys a device may hold. vodozemac keeps at most 5000 private
/// one-time keys, so a server holding more would hand out keys the client has forgotten.
pub const MAX_ONE_TIME_KEYS_PER_DEVICE: u64 = 5000;

/// What an upload adds to a device's one-time keys.
#[derive(Debug)]
pub struct NewOneTimeKeys<'a> {
    /// The keys not held yet, in upload order.
    pub keys: Vec<&'a UploadedKey>,
    /// The device's counts once they are added (absent when zero).
    pub counts: BTreeMap<String, u64>,
}

impl KeyWrite {
    /// Sorts the upload's one-time keys against those the device holds (`held` names those of
    /// the upload's key IDs that are stored, and the device's counts): a key held with the same
    /// content, signatures aside, is already there (re-uploads are idempotent); one held with
    /// other content refuses the whole upload; the rest are new, and the device may then hold
    /// at most [`MAX_ONE_TIME_KEYS_PER_DEVICE`].
    pub fn new_one_time_keys(
        &self,
        held: &OneTimeKeysHeld,
    ) -> Result<NewOneTimeKeys<'_>, OneTimeKeyRefusal> {
        let mut keys = Vec::new();
        for key in &self.one_time_keys {
            match held
                .existing
                .iter()
                .find(|old| old.algorithm == key.algorithm && old.key_id == key.key_id)
            {
                Some(old) if same_json(&old.key, &key.key, true) => {}
                Some(old) => {
                    return Err(OneTimeKeyRefusal::Changed {
                        old: Box::new(old.clone()),
                        new: Box::new(key.clone()),
                    });
                }
                None => keys.push(key),
            }
        }
        let mut counts = held.counts.clone();
        if counts.values().sum::<u64>() + keys.len() as u64 > MAX_ONE_TIME_KEYS_PER_DEVICE {
            return Err(OneTimeKeyRefusal::TooMany);
        }
        for key in &keys {
            *counts.entry(key.algorithm.clone()).or_insert(0) += 1;
        }
        Ok(NewOneTimeKeys { keys, counts })
    }
}

/// Whether two JSON values are the same, optionally ignoring a top-level `signatures` field
/// (a re-signed one-time key is still the same key).
pub(crate) fn same_json(a: &RawValue, b: &RawValue, ignore_signatures: bool) -> bool {
    if a.get() == b.get() {
        return true;
    }
    match (
        serde_json::from_str::<Value>(a.get()),
        serde_json::from_str::<Value>(b.get()),
    ) {
        (Ok(mut a), Ok(mut b)) => {
            if ignore_signatures {
                for v in [&mut a, &mut b] {
                    if let Value::Object(map) = v {
                        map.remove("signatures");
                    }
                }
            }
            a == b
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::{device_id, user_id};

    fn key(key_id: &str, json: &str) -> UploadedKey {
        UploadedKey {
            algorithm: "alg".into(),
            key_id: key_id.into(),
            key: RawValue::from_string(json.into()).unwrap(),
        }
    }

    fn upload(keys: Vec<UploadedKey>) -> KeyWrite {
        KeyWrite {
            user_id: user_id!("@a:x").to_owned(),
            device_id: device_id!("D").to_owned(),
            device_keys: None,
            one_time_keys: keys,
            fallback_keys: vec![],
            eager_share_fallback_keys: None,
            owes_update: false,
        }
    }

    #[test]
    fn held_keys_are_skipped_even_resigned_and_new_ones_counted() {
        let write = upload(vec![
            key("a", r#"{"key":"A","signatures":{"x":1}}"#),
            key("b", r#""B""#),
        ]);
        let held = OneTimeKeysHeld {
            existing: vec![key("a", r#"{"signatures":{"y":2},"key":"A"}"#)],
            counts: BTreeMap::from([("alg".into(), 1), ("other".into(), 3)]),
        };
        let new = write.new_one_time_keys(&held).unwrap();
        assert_eq!(
            new.keys
                .iter()
                .map(|k| k.key_id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(
            new.counts,
            BTreeMap::from([("alg".into(), 2), ("other".into(), 3)])
        );
    }

    #[test]
    fn a_changed_key_refuses_the_upload() {
        let write = upload(vec![key("b", r#""new""#), key("a", r#""A2""#)]);
        let held = OneTimeKeysHeld {
            existing: vec![key("a", r#""A""#)],
            counts: BTreeMap::new(),
        };
        match write.new_one_time_keys(&held) {
            Err(OneTimeKeyRefusal::Changed { old, new }) => {
                assert_eq!((old.key.get(), new.key.get()), (r#""A""#, r#""A2""#));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_cap_counts_what_is_held_plus_what_is_new() {
        let write = upload(vec![key("a", r#""A""#), key("b", r#""B""#)]);
        let held = |n| OneTimeKeysHeld {
            existing: vec![],
            counts: BTreeMap::from([("alg".into(), n)]),
        };
        assert!(
            write
                .new_one_time_keys(&held(MAX_ONE_TIME_KEYS_PER_DEVICE - 2))
                .is_ok()
        );
        assert!(matches!(
            write.new_one_time_keys(&held(MAX_ONE_TIME_KEYS_PER_DEVICE - 1)),
            Err(OneTimeKeyRefusal::TooMany)
        ));
    }
}
