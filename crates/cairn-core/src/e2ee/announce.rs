//! Telling other servers about local users' devices: which servers start sharing a room with a
//! local user through a join (they are owed the user's whole device list, MSC4081 decision 5
//! and the spec's own rule), and the `m.device_list_update` / `m.signing_key_update` EDUs that
//! carry what is owed.
//!
//! EDUs carry each device's *current* state; `stream_id` is the position of the newest change
//! owed, and `prev_id` chains each user's EDUs: the first names what the destination last
//! acknowledged (empty if nothing, which makes it fetch the whole list), each later one the
//! EDU before it.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde_json::{Value, json};

use super::keys::{QueryResponse, Viewer};
use crate::Homeserver;
use crate::error::Result;
use crate::rooms::pdu::Pdu;
use crate::store::{CROSS_SIGNING_KEYS, DeviceUpdate};

impl Homeserver {
    /// [`Self::newly_sharing`] for an event about to be appended to a room this server is in.
    pub(crate) async fn announcements(
        &self,
        pdu: &Pdu,
    ) -> Result<Vec<(OwnedServerName, OwnedUserId)>> {
        if pdu.membership().as_deref() != Some("join") {
            return Ok(Vec::new());
        }
        let joined = self.store().members_with(&pdu.room_id, "join").await?;
        self.newly_sharing(pdu, &joined).await
    }

    /// The `(server, local user)` pairs that start sharing a room through `pdu`, a membership
    /// event whose room had `joined_before` as joined members. Only a user's first join counts:
    /// a join that only changes a profile shares nothing new.
    pub(crate) async fn newly_sharing(
        &self,
        pdu: &Pdu,
        joined_before: &[OwnedUserId],
    ) -> Result<Vec<(OwnedServerName, OwnedUserId)>> {
        let joiner = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok());
        let Some(joiner) = joiner.filter(|_| pdu.membership().as_deref() == Some("join")) else {
            return Ok(Vec::new());
        };
        if joined_before.contains(&joiner) {
            return Ok(Vec::new());
        }
        let mut pairs = Vec::new();
        if self.is_local(&joiner) {
            let mut servers: BTreeSet<OwnedServerName> = joined_before
                .iter()
                .map(|u| u.server_name().to_owned())
                .filter(|s| *s != self.config().server_name)
                .collect();
            for known in self
                .store()
                .servers_sharing_rooms(&joiner, &pdu.room_id)
                .await?
            {
                servers.remove(&known);
            }
            pairs.extend(servers.into_iter().map(|s| (s, joiner.clone())));
        } else {
            let server = joiner.server_name();
            if joined_before.iter().any(|u| u.server_name() == server) {
                return Ok(pairs);
            }
            for local in joined_before.iter().filter(|u| self.is_local(u)) {
                let known = self
                    .store()
                    .servers_sharing_rooms(local, &pdu.room_id)
                    .await?;
                if !known.iter().any(|s| s == server) {
                    pairs.push((server.to_owned(), local.clone()));
                }
            }
        }
        Ok(pairs)
    }

    /// The EDUs that deliver `updates` (owed to one destination, oldest first), in order.
    pub async fn device_list_edus(&self, updates: &[DeviceUpdate]) -> Result<Vec<Value>> {
        let mut published: BTreeMap<&UserId, QueryResponse> = BTreeMap::new();
        let mut last_sent: BTreeMap<&UserId, Option<u64>> = BTreeMap::new();
        let mut edus = Vec::with_capacity(updates.len());
        for update in updates {
            let user = update.user_id.as_ref();
            if !published.contains_key(user) {
                let mut keys = QueryResponse::default();
                self.add_local_keys(Viewer::Server, user, &[], &mut keys)
                    .await?;
                published.insert(user, keys);
            }
            let keys = &published[user];
            if update.device_id == CROSS_SIGNING_KEYS {
                edus.push(json!({
                    "edu_type": "m.signing_key_update",
                    "content": {
                        "user_id": user,
                        "master_key": keys.master_keys.get(user),
                        "self_signing_key": keys.self_signing_keys.get(user),
                    },
                }));
                continue;
            }
            let prev = last_sent.entry(user).or_insert(update.prev_sent);
            let mut content = json!({
                "user_id": user,
                "device_id": update.device_id,
                "stream_id": update.stream_id,
                "prev_id": prev.iter().collect::<Vec<_>>(),
            });
            *prev = Some(update.stream_id);
            let device = keys
                .device_keys
                .get(user)
                .and_then(|d| d.iter().find(|(id, _)| id.as_str() == update.device_id));
            match device {
                Some((device_id, device_keys)) => {
                    content["keys"] = device_keys.clone();
                    if let Some(fallback) = self.shared_fallback_keys(user, device_id).await? {
                        content[self.fallback_field()] = fallback;
                    }
                }
                None if self
                    .store()
                    .device(user, update.device_id.as_str().into())
                    .await?
                    .is_none() =>
                {
                    content["deleted"] = true.into();
                }
                // A device that exists but has published no keys yet.
                None => {}
            }
            edus.push(json!({ "edu_type": "m.device_list_update", "content": content }));
        }
        Ok(edus)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{homeserver, user};

    fn update(user_id: &UserId, device: &str, stream_id: u64, prev: Option<u64>) -> DeviceUpdate {
        DeviceUpdate {
            user_id: user_id.to_owned(),
            device_id: device.to_owned(),
            stream_id,
            prev_sent: prev,
        }
    }

    #[tokio::test]
    async fn updates_chain_per_user_and_carry_current_keys_or_deletion() {
        let (hs, _) = homeserver(true);
        let alice = user(&hs, "alice", "PHONE").await;
        let bob = user(&hs, "bob", "B").await;
        let keys = json!({ "user_id": alice.user_id, "device_id": "PHONE", "algorithms": [],
                           "keys": { "ed25519:PHONE": "k" }, "signatures": {} });
        let req = serde_json::from_value(json!({ "device_keys": keys })).unwrap();
        hs.upload_keys(&alice, req).await.unwrap();
        let master =
            json!({ "user_id": alice.user_id, "usage": ["master"], "keys": { "ed25519:M": "M" } });
        let req = serde_json::from_value(json!({ "master_key": master })).unwrap();
        hs.upload_device_signing(&alice, req).await.unwrap();

        let (a, b) = (&alice.user_id, &bob.user_id);
        let edus = hs
            .device_list_edus(&[
                update(a, "PHONE", 5, Some(3)),
                update(b, "B", 6, None),
                update(a, CROSS_SIGNING_KEYS, 7, Some(3)),
                update(a, "GONE", 8, Some(3)),
            ])
            .await
            .unwrap();
        let content = |i: usize| &edus[i]["content"];
        assert_eq!(edus[0]["edu_type"], "m.device_list_update");
        assert_eq!(
            content(0)["prev_id"],
            json!([3]),
            "what b.test acknowledged last"
        );
        assert_eq!(content(0)["stream_id"], 5);
        assert_eq!(content(0)["keys"], keys);
        assert_eq!(
            content(1)["prev_id"],
            json!([]),
            "bob's first: the receiver fetches his list"
        );
        assert!(
            content(1).get("keys").is_none(),
            "a device without keys yet"
        );
        assert_eq!(edus[2]["edu_type"], "m.signing_key_update");
        assert_eq!(content(2)["master_key"], master);
        assert_eq!(
            content(3)["prev_id"],
            json!([5]),
            "chained to the EDU before it"
        );
        assert_eq!(content(3)["deleted"], true);
        assert!(content(3).get("keys").is_none());
    }
}
