//! Keys of users on other servers: one request per server, all in parallel under one deadline.
//!
//! Answers are trusted only for the server's own users and for what was asked: a server cannot
//! slip in keys of another server's users, or devices nobody asked about in a claim.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId};
use serde_json::Value;
use serde_json::value::RawValue;

use super::keys::{ClaimResponse, QueryResponse};
use super::remote_lists::names;
use crate::Homeserver;
use crate::federation::{Federation, RemoteError};

/// How long a client waits for other servers when its request names no `timeout` (the spec's
/// default for `/keys/query` and `/keys/claim`).
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which federation request to make.
#[derive(Clone, Copy)]
enum Ask {
    Query,
    Claim,
}

/// `server -> user -> what is asked of that user` (device list, or device -> algorithm).
pub(crate) type PerServer<T> = BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>>;

impl Homeserver {
    /// Asks each server for its users' device and cross-signing keys and folds the answers into
    /// `response`.
    pub(crate) async fn query_remote_keys(
        &self,
        wanted: PerServer<Vec<OwnedDeviceId>>,
        timeout: Duration,
        response: &mut QueryResponse,
    ) {
        let bodies = wanted
            .iter()
            .map(|(server, users)| (server.clone(), serde_json::json!({ "device_keys": users })))
            .collect();
        for (server, answer) in self.ask(Ask::Query, bodies, timeout).await {
            let answer = match answer {
                Ok(answer) => answer,
                Err(err) => {
                    response
                        .failures
                        .insert(server.to_string(), err.to_failure());
                    continue;
                }
            };
            let users = &wanted[&server];
            for (user_id, asked) in users {
                let devices = answer["device_keys"][user_id.as_str()]
                    .as_object()
                    .map(|devices| {
                        devices
                            .iter()
                            .filter(|(device, _)| {
                                asked.is_empty() || asked.iter().any(|d| d.as_str() == *device)
                            })
                            .filter(|(device, keys)| names(keys, user_id.as_str(), Some(device)))
                            .map(|(device, keys)| (device.as_str().into(), keys.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                response.device_keys.insert(user_id.clone(), devices);
                for (field, target) in [
                    ("master_keys", &mut response.master_keys),
                    ("self_signing_keys", &mut response.self_signing_keys),
                ] {
                    let key = &answer[field][user_id.as_str()];
                    if key.get("user_id").and_then(Value::as_str) == Some(user_id.as_str()) {
                        target.insert(user_id.clone(), key.clone());
                    }
                }
            }
        }
    }

    /// Claims keys from each server and folds the answers into `response`. A server that
    /// cannot answer (in backoff, or failing as MSC4081 decision 13 lists) is answered from the
    /// fallback keys its users' devices shared (decisions 14-17): a server in backoff whose every
    /// requested device has one is not asked at all; a server answered that way is named in
    /// `response.cached` and left out of `failures` unless some device got nothing.
    pub(crate) async fn claim_remote_keys(
        &self,
        wanted: PerServer<BTreeMap<OwnedDeviceId, String>>,
        timeout: Duration,
        response: &mut ClaimResponse,
    ) {
        let timeout = timeout.min(Duration::from_millis(self.config().claim_timeout_ms));
        let now = self.now_ms();
        let mut bodies = BTreeMap::new();
        for (server, users) in &wanted {
            let backoff = self.store().backoff(server).await.unwrap_or_default();
            if backoff.retry_after_ms > now {
                let found = self.cached_claims(users, now).await;
                if found.complete {
                    found.record("backoff");
                    self.recheck_when_back(&found.keys).await;
                    response.fold_cached(
                        server,
                        "backoff",
                        backoff.retry_after_ms - now,
                        found.keys,
                    );
                    continue;
                }
            }
            bodies.insert(
                server.clone(),
                serde_json::json!({ "one_time_keys": users }),
            );
        }
        for (server, answer) in self.ask(Ask::Claim, bodies, timeout).await {
            let answer = match answer {
                Ok(answer) => {
                    self.remote_answered(&server).await;
                    answer
                }
                Err(err) => {
                    let users = &wanted[&server];
                    match err.unreachable_reason() {
                        Some(reason) => {
                            let retry_after = self.remote_failed(&server).await;
                            let found = self.cached_claims(users, now).await;
                            if !found.complete {
                                response
                                    .failures
                                    .insert(server.to_string(), err.to_failure());
                            }
                            if !found.keys.is_empty() {
                                found.record(reason);
                                self.recheck_when_back(&found.keys).await;
                                response.fold_cached(&server, reason, retry_after, found.keys);
                            }
                        }
                        None => {
                            response
                                .failures
                                .insert(server.to_string(), err.to_failure());
                        }
                    }
                    continue;
                }
            };
            for (user_id, devices) in &wanted[&server] {
                for device_id in devices.keys() {
                    let Some(keys) =
                        answer["one_time_keys"][user_id.as_str()][device_id.as_str()].as_object()
                    else {
                        continue;
                    };
                    let keys: BTreeMap<String, Box<RawValue>> = keys
                        .iter()
                        .filter_map(|(id, key)| {
                            Some((id.clone(), serde_json::value::to_raw_value(key).ok()?))
                        })
                        .collect();
                    if !keys.is_empty() {
                        response
                            .one_time_keys
                            .entry(user_id.clone())
                            .or_default()
                            .insert(device_id.clone(), keys);
                    }
                }
            }
        }
    }

    /// Sends one request per server, all at once, each bounded by `timeout`.
    async fn ask(
        &self,
        ask: Ask,
        bodies: BTreeMap<OwnedServerName, Value>,
        timeout: Duration,
    ) -> Vec<(OwnedServerName, Result<Value, RemoteError>)> {
        let mut tasks = tokio::task::JoinSet::new();
        for (server, body) in bodies {
            let federation: Arc<dyn Federation> = self.federation().clone();
            tasks.spawn(async move {
                let call = async {
                    match ask {
                        Ask::Query => federation.query_keys(&server, body, timeout).await,
                        Ask::Claim => federation.claim_keys(&server, body, timeout).await,
                    }
                };
                let answer = tokio::time::timeout(timeout, call)
                    .await
                    .unwrap_or(Err(RemoteError::TimedOut));
                (server, answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(answer) => answers.push(answer),
                Err(err) => tracing::error!(%err, "a federation request task failed"),
            }
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use ruma::ServerName;
    use serde_json::json;

    use super::*;
    use crate::testing::{homeserver_with, user};

    /// Answers per server: a canned body, an error, or never.
    #[derive(Default)]
    struct Scripted {
        answers: BTreeMap<String, Option<Result<Value, RemoteError>>>,
        asked: Mutex<Vec<(String, Value)>>,
    }

    impl Scripted {
        async fn answer(&self, server: &ServerName, body: Value) -> Result<Value, RemoteError> {
            self.asked.lock().unwrap().push((server.to_string(), body));
            match self.answers.get(server.as_str()).cloned().flatten() {
                Some(answer) => answer,
                None => std::future::pending().await,
            }
        }
    }

    #[async_trait]
    impl Federation for Scripted {
        async fn query_keys(
            &self,
            s: &ServerName,
            b: Value,
            _: Duration,
        ) -> Result<Value, RemoteError> {
            self.answer(s, b).await
        }
        async fn claim_keys(
            &self,
            s: &ServerName,
            b: Value,
            _: Duration,
        ) -> Result<Value, RemoteError> {
            self.answer(s, b).await
        }

        async fn verify_event(
            &self,
            _: &ruma::CanonicalJsonObject,
            _: &ruma::RoomVersionId,
        ) -> Result<(), RemoteError> {
            Ok(())
        }
    }

    fn keys_of(user: &str, device: &str) -> Value {
        json!({ "user_id": user, "device_id": device, "algorithms": [], "keys": {}, "signatures": {} })
    }

    #[tokio::test(start_paused = true)]
    async fn remote_queries_keep_only_what_each_server_may_answer() {
        let good = json!({
            "device_keys": {
                "@a:good.test": { "A1": keys_of("@a:good.test", "A1"), "A2": keys_of("@a:good.test", "A2"),
                                   "LIE": keys_of("@a:good.test", "OTHER") },
                "@x:elsewhere.test": { "X1": keys_of("@x:elsewhere.test", "X1") },
            },
            "master_keys": { "@a:good.test": { "user_id": "@a:good.test", "usage": ["master"], "keys": {} } },
        });
        let fed = Arc::new(Scripted {
            answers: [
                ("good.test".to_owned(), Some(Ok(good))),
                (
                    "down.test".to_owned(),
                    Some(Err(RemoteError::Unreachable("connection refused".into()))),
                ),
                ("hung.test".to_owned(), None),
            ]
            .into(),
            ..Default::default()
        });
        let (hs, _) = homeserver_with(true, fed.clone());
        let me = user(&hs, "me", "D").await;
        let req = serde_json::from_value(json!({
            "device_keys": { "@a:good.test": [], "@b:down.test": [], "@c:hung.test": ["C1"] },
            "timeout": 3000,
        }))
        .unwrap();
        let res = hs.query_keys(&me.user_id, req).await.unwrap();

        let a: &OwnedUserId = &"@a:good.test".try_into().unwrap();
        let devices: Vec<&str> = res.device_keys[a].keys().map(|d| d.as_str()).collect();
        assert_eq!(devices, ["A1", "A2"], "the mislabelled device is dropped");
        assert!(res.master_keys.contains_key(a));
        assert_eq!(
            res.device_keys.len(),
            1,
            "no keys of users nobody asked for"
        );
        assert_eq!(res.failures["down.test"]["status"], 503);
        assert_eq!(
            res.failures["hung.test"]["status"], 503,
            "the deadline ends the wait"
        );
        assert!(!res.failures.contains_key("good.test"));
        let asked = fed.asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 3, "one request per server");
        let hung = asked.iter().find(|(s, _)| s == "hung.test").unwrap();
        assert_eq!(hung.1, json!({ "device_keys": { "@c:hung.test": ["C1"] } }));
    }

    #[tokio::test(start_paused = true)]
    async fn remote_claims_keep_only_asked_devices_and_report_statuses() {
        let good = json!({ "one_time_keys": {
            "@a:good.test": { "A1": { "signed_curve25519:k": { "key": "K" } },
                               "UNASKED": { "signed_curve25519:u": { "key": "U" } } },
            "@x:elsewhere.test": { "X1": { "signed_curve25519:x": { "key": "X" } } },
        }});
        let fed = Arc::new(Scripted {
            answers: [
                ("good.test".to_owned(), Some(Ok(good))),
                (
                    "limited.test".to_owned(),
                    Some(Err(RemoteError::Status {
                        status: 429,
                        message: "slow down".into(),
                    })),
                ),
            ]
            .into(),
            ..Default::default()
        });
        let (hs, _) = homeserver_with(true, fed.clone());
        let req = serde_json::from_value(json!({ "one_time_keys": {
            "@a:good.test": { "A1": "signed_curve25519" },
            "@l:limited.test": { "L1": "signed_curve25519" },
        }}))
        .unwrap();
        let res = hs.claim_keys(req).await.unwrap();
        let a: OwnedUserId = "@a:good.test".try_into().unwrap();
        let got = &res.one_time_keys[&a];
        assert_eq!(got.keys().map(|d| d.as_str()).collect::<Vec<_>>(), ["A1"]);
        assert_eq!(
            got[&OwnedDeviceId::from("A1")]["signed_curve25519:k"].get(),
            r#"{"key":"K"}"#
        );
        assert_eq!(res.one_time_keys.len(), 1);
        assert_eq!(res.failures["limited.test"]["status"], 429);
    }

    /// Caches one fallback key for each `(user, device)`, received at `received_ms`.
    async fn cache_keys(hs: &Homeserver, devices: &[(&str, &str)], received_ms: u64) {
        use crate::e2ee::msc4081::{RECEIVED_FIELD, UNSTABLE_FIELD};
        let mut by_user: BTreeMap<&str, Vec<Box<RawValue>>> = BTreeMap::new();
        for (user, device) in devices {
            let object = json!({ "device_id": device,
                UNSTABLE_FIELD: { "signed_curve25519:FB": { "key": device, "fallback": true } },
                RECEIVED_FIELD: { "signed_curve25519:FB": received_ms } });
            by_user
                .entry(user)
                .or_default()
                .push(serde_json::value::to_raw_value(&object).unwrap());
        }
        for (user, devices) in by_user {
            let list = crate::store::RemoteDeviceList {
                user_id: user.try_into().unwrap(),
                stream_id: 1,
                stale: false,
                devices,
                master_key: None,
                self_signing_key: None,
            };
            hs.store().replace_remote_device_list(&list).await.unwrap();
        }
    }

    /// MSC4081 decisions 13, 14 and 17: which failures the cache answers, a server in backoff
    /// answered without a request, and when a server is still listed in `failures`.
    #[tokio::test(start_paused = true)]
    async fn claims_fall_back_to_shared_keys_only_when_a_server_cannot_answer() {
        let refused = RemoteError::Unreachable("connection refused".into());
        let not_found = RemoteError::Status {
            status: 404,
            message: "no".into(),
        };
        let bad_gateway = RemoteError::Status {
            status: 502,
            message: "proxy".into(),
        };
        let fed = Arc::new(Scripted {
            answers: [
                ("down.test".to_owned(), Some(Err(refused))),
                ("denies.test".to_owned(), Some(Err(not_found))),
                ("partial.test".to_owned(), Some(Err(bad_gateway))),
                ("hung.test".to_owned(), None),
            ]
            .into(),
            ..Default::default()
        });
        let (hs, _) = homeserver_with(true, fed.clone());
        let now = hs.now_ms();
        cache_keys(
            &hs,
            &[
                ("@d:down.test", "D1"),
                ("@n:denies.test", "N1"),
                ("@p:partial.test", "P1"),
                ("@h:hung.test", "H1"),
                ("@b:backoff.test", "B1"),
            ],
            now,
        )
        .await;
        let backoff = crate::store::Backoff {
            retry_after_ms: now + 60_000,
            interval_ms: 60_000,
        };
        hs.store()
            .set_backoff(ServerName::parse("backoff.test").unwrap().as_ref(), backoff)
            .await
            .unwrap();
        let req = serde_json::from_value(json!({ "one_time_keys": {
            "@d:down.test": { "D1": "signed_curve25519" },
            "@n:denies.test": { "N1": "signed_curve25519" },
            "@p:partial.test": { "P1": "signed_curve25519", "P2": "signed_curve25519" },
            "@h:hung.test": { "H1": "signed_curve25519" },
            "@b:backoff.test": { "B1": "signed_curve25519" },
        }, "timeout": 60_000 }))
        .unwrap();
        let started = tokio::time::Instant::now();
        let res = hs.claim_keys(req).await.unwrap();
        let waited = started.elapsed();

        let served = |user: &str, device: &str| {
            let user: OwnedUserId = user.try_into().unwrap();
            res.one_time_keys
                .get(&user)
                .and_then(|d| d.get(&OwnedDeviceId::from(device)))
                .is_some_and(|k| k.contains_key("signed_curve25519:FB"))
        };
        assert!(served("@d:down.test", "D1") && served("@h:hung.test", "H1"));
        assert!(served("@b:backoff.test", "B1") && served("@p:partial.test", "P1"));
        assert!(
            !served("@n:denies.test", "N1"),
            "a 404 is the server's word"
        );
        let reasons: BTreeMap<&str, &str> = res
            .cached
            .iter()
            .map(|(s, c)| (s.as_str(), c["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(
            reasons,
            BTreeMap::from([
                ("backoff.test", "backoff"),
                ("down.test", "connect"),
                ("hung.test", "timeout"),
                ("partial.test", "http_5xx"),
            ])
        );
        assert_eq!(res.cached["backoff.test"]["retry_after_ms"], 60_000);
        let listed: Vec<&str> = res.failures.keys().map(String::as_str).collect();
        assert_eq!(listed, ["denies.test", "partial.test"], "P2 got nothing");
        let asked: Vec<String> = fed
            .asked
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect();
        assert!(
            !asked.contains(&"backoff.test".to_owned()),
            "answered without a request"
        );
        // The hung server was cut off at the claim deadline (5 s), not the client's 60 s.
        assert_eq!(waited, Duration::from_secs(5));
        let down = hs
            .store()
            .backoff(ServerName::parse("down.test").unwrap().as_ref())
            .await;
        assert!(
            down.unwrap().retry_after_ms > now,
            "a server that could not answer backs off"
        );
    }
}
