//! One conformance suite, run against both SQLite and PostgreSQL.
//!
//! Each case is an async function over a fresh, empty store; the `conformance!` macro runs it
//! once per backend. PostgreSQL cases use a throw-away database (see `cairn_store::testing`).

use std::sync::Arc;

use cairn_core::store::*;
use cairn_store::testing::TempDatabase;
use cairn_store::{SqlStore, StoreOptions};
use ruma::{OwnedDeviceId, UserId, user_id};
use serde_json::value::RawValue;

/// A store and whatever keeps its database alive; `reopen` gives a second handle on the same data.
pub(crate) struct Harness {
    pub(crate) store: SqlStore,
    url: String,
    _keep: Box<dyn std::any::Any + Send>,
}

impl Harness {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/cairn.db", dir.path().display());
        Self {
            store: open(&url).await,
            url,
            _keep: Box::new(dir),
        }
    }

    async fn postgres() -> Self {
        let db = TempDatabase::create().await;
        let url = db.url().to_owned();
        Self {
            store: open(&url).await,
            url,
            _keep: Box::new(db),
        }
    }

    async fn reopen(&self) -> SqlStore {
        open(&self.url).await
    }
}

async fn open(url: &str) -> SqlStore {
    SqlStore::open(&StoreOptions {
        url: url.to_owned(),
        max_connections: 4,
    })
    .await
    .unwrap()
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $case() { super::$case(&super::Harness::sqlite().await).await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $case() { super::$case(&super::Harness::postgres().await).await; })*
        }
    };
}

mod e2ee;
mod federation;
use e2ee::*;
use federation::*;

conformance!(
    keys_are_written_and_read_back_exactly,
    claims_take_one_time_keys_in_upload_order_then_the_fallback,
    concurrent_claims_never_hand_out_a_key_twice,
    concurrent_uploads_and_claims_all_land,
    a_changed_one_time_key_refuses_the_whole_upload,
    concurrent_uploads_of_one_device_are_checked_together,
    deleting_a_device_deletes_its_keys_and_inbox,
    to_device_batches_are_deduplicated_and_paged,
    positions_order_account_data_and_device_list_changes,
    users_are_unique_and_conflicts_write_nothing,
    tokens_belong_to_devices_and_die_with_them,
    logging_in_again_keeps_the_device,
    devices_are_listed_renamed_and_touched,
    uia_sessions_round_trip_and_expire,
    profiles_account_data_and_filters,
    signing_key_is_stored_once,
    remote_keys_are_cached_and_replaced,
    queued_items_keep_their_order_until_delivered,
    backoff_leases_and_inbound_transactions_persist,
    remote_device_lists_only_move_forward,
    data_survives_reopening,
    concurrent_registrations_of_one_name_let_one_win,
);

pub(crate) fn alice() -> &'static UserId {
    user_id!("@alice:example.org")
}

pub(crate) fn new_user(user_id: &UserId) -> NewUser {
    NewUser {
        user_id: user_id.to_owned(),
        password_hash: Some("$argon2id$fake".into()),
        displayname: Some(user_id.localpart().into()),
        created_ms: 1_000,
    }
}

pub(crate) fn new_device(user_id: &UserId, device_id: &str, token_hash: &str) -> NewDevice {
    NewDevice {
        user_id: user_id.to_owned(),
        device_id: device_id.into(),
        display_name: Some(format!("{device_id} name")),
        token_hash: token_hash.into(),
        created_ms: 2_000,
    }
}

pub(crate) fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.into()).unwrap()
}

async fn users_are_unique_and_conflicts_write_nothing(h: &Harness) {
    let s = &h.store;
    s.create_user(&new_user(alice()), Some(&new_device(alice(), "D1", "t1")))
        .await
        .unwrap();
    let err = s
        .create_user(&new_user(alice()), Some(&new_device(alice(), "D2", "t2")))
        .await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    assert!(
        s.token_owner("t2").await.unwrap().is_none(),
        "no token from the failed attempt"
    );
    assert!(s.device(alice(), "D2".into()).await.unwrap().is_none());
    let user = s.user(alice()).await.unwrap().unwrap();
    assert_eq!(user.password_hash.as_deref(), Some("$argon2id$fake"));
    assert_eq!(user.created_ms, 1_000);
    assert!(
        s.user(user_id!("@bob:example.org"))
            .await
            .unwrap()
            .is_none()
    );
    s.set_password_hash(alice(), "$argon2id$other")
        .await
        .unwrap();
    assert_eq!(
        s.user(alice())
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some("$argon2id$other")
    );
}

async fn tokens_belong_to_devices_and_die_with_them(h: &Harness) {
    let s = &h.store;
    s.create_user(&new_user(alice()), Some(&new_device(alice(), "D1", "t1")))
        .await
        .unwrap();
    s.add_device_token(&new_device(alice(), "D2", "t2"))
        .await
        .unwrap();
    s.add_device_token(&new_device(alice(), "D3", "t3"))
        .await
        .unwrap();
    let owner = s.token_owner("t2").await.unwrap().unwrap();
    assert_eq!(
        (owner.user_id.as_str(), owner.device_id.as_str()),
        ("@alice:example.org", "D2")
    );

    let gone: Vec<OwnedDeviceId> = vec!["D2".into(), "UNKNOWN".into()];
    s.delete_devices(alice(), &gone).await.unwrap();
    assert!(s.token_owner("t2").await.unwrap().is_none());
    assert!(s.token_owner("t1").await.unwrap().is_some());
    assert_eq!(s.devices(alice()).await.unwrap().len(), 2);

    s.delete_all_devices(alice()).await.unwrap();
    assert!(s.token_owner("t1").await.unwrap().is_none());
    assert!(s.token_owner("t3").await.unwrap().is_none());
    assert!(s.devices(alice()).await.unwrap().is_empty());
}

async fn logging_in_again_keeps_the_device(h: &Harness) {
    let s = &h.store;
    s.create_user(&new_user(alice()), Some(&new_device(alice(), "D1", "t1")))
        .await
        .unwrap();
    let mut again = new_device(alice(), "D1", "t1b");
    again.display_name = Some("ignored".into());
    s.add_device_token(&again).await.unwrap();
    let devices = s.devices(alice()).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].display_name.as_deref(), Some("D1 name"));
    assert!(s.token_owner("t1").await.unwrap().is_some());
    assert!(s.token_owner("t1b").await.unwrap().is_some());
}

async fn devices_are_listed_renamed_and_touched(h: &Harness) {
    let s = &h.store;
    s.create_user(&new_user(alice()), Some(&new_device(alice(), "B", "t1")))
        .await
        .unwrap();
    s.add_device_token(&new_device(alice(), "A", "t2"))
        .await
        .unwrap();
    let ids: Vec<_> = s
        .devices(alice())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(
        ids,
        vec![OwnedDeviceId::from("A"), OwnedDeviceId::from("B")]
    );

    assert!(
        s.set_device_display_name(alice(), "A".into(), Some("laptop"))
            .await
            .unwrap()
    );
    assert!(
        !s.set_device_display_name(alice(), "Z".into(), Some("x"))
            .await
            .unwrap()
    );
    assert!(
        s.set_device_display_name(alice(), "B".into(), None)
            .await
            .unwrap()
    );
    s.touch_device(alice(), "A".into(), 5_000, Some("127.0.0.1"))
        .await
        .unwrap();
    let a = s.device(alice(), "A".into()).await.unwrap().unwrap();
    assert_eq!(a.display_name.as_deref(), Some("laptop"));
    assert_eq!(
        (a.last_seen_ms, a.last_seen_ip.as_deref()),
        (Some(5_000), Some("127.0.0.1"))
    );
    assert_eq!(
        s.token_owner("t2").await.unwrap().unwrap().last_seen_ms,
        Some(5_000)
    );
    assert_eq!(
        s.device(alice(), "B".into())
            .await
            .unwrap()
            .unwrap()
            .display_name,
        None
    );
}

async fn uia_sessions_round_trip_and_expire(h: &Harness) {
    let s = &h.store;
    let session = |id: &str, created_ms| UiaSessionRecord {
        session_id: id.into(),
        operation: "delete_devices".into(),
        user_id: Some(alice().to_owned()),
        completed: vec!["m.login.dummy".into()],
        created_ms,
    };
    s.create_uia_session(&session("old", 100), 0).await.unwrap();
    assert_eq!(
        s.uia_session("old").await.unwrap(),
        Some(session("old", 100))
    );
    s.create_uia_session(&session("new", 10_000), 5_000)
        .await
        .unwrap();
    assert_eq!(
        s.uia_session("old").await.unwrap(),
        None,
        "expired sessions are purged"
    );
    s.delete_uia_session("new").await.unwrap();
    assert_eq!(s.uia_session("new").await.unwrap(), None);
    let anonymous = UiaSessionRecord {
        user_id: None,
        ..session("anon", 20_000)
    };
    s.create_uia_session(&anonymous, 0).await.unwrap();
    assert_eq!(s.uia_session("anon").await.unwrap(), Some(anonymous));
}

async fn profiles_account_data_and_filters(h: &Harness) {
    let s = &h.store;
    let bob = user_id!("@bob:example.org");
    s.create_user(&new_user(alice()), None).await.unwrap();
    s.create_user(&new_user(bob), None).await.unwrap();
    assert_eq!(
        s.profile(alice())
            .await
            .unwrap()
            .unwrap()
            .displayname
            .as_deref(),
        Some("alice")
    );
    assert!(s.set_displayname(alice(), Some("Alice")).await.unwrap());
    assert!(
        s.set_avatar_url(alice(), Some("mxc://example.org/abc"))
            .await
            .unwrap()
    );
    assert!(
        !s.set_displayname(user_id!("@nobody:example.org"), Some("x"))
            .await
            .unwrap()
    );
    let profile = s.profile(alice()).await.unwrap().unwrap();
    assert_eq!(profile.displayname.as_deref(), Some("Alice"));
    assert_eq!(profile.avatar_url.as_deref(), Some("mxc://example.org/abc"));
    assert!(
        s.profile(user_id!("@nobody:example.org"))
            .await
            .unwrap()
            .is_none()
    );

    // Account data is stored byte for byte and replaced on write.
    let exact = r#"{"b": [1, 2],  "a":"é"}"#;
    s.put_account_data(alice(), "org.example.x", &raw(r#"{"v":1}"#))
        .await
        .unwrap();
    s.put_account_data(alice(), "org.example.x", &raw(exact))
        .await
        .unwrap();
    assert_eq!(
        s.account_data(alice(), "org.example.x")
            .await
            .unwrap()
            .unwrap()
            .get(),
        exact
    );
    assert!(
        s.account_data(bob, "org.example.x")
            .await
            .unwrap()
            .is_none()
    );

    let f1 = s
        .create_filter(alice(), &raw(r#"{"room":{"timeline":{"limit":10}}}"#))
        .await
        .unwrap();
    let f2 = s.create_filter(alice(), &raw("{}")).await.unwrap();
    assert_ne!(f1, f2);
    assert!(!f1.starts_with('{'));
    assert_eq!(
        s.filter(alice(), &f1).await.unwrap().unwrap().get(),
        r#"{"room":{"timeline":{"limit":10}}}"#
    );
    assert!(
        s.filter(bob, &f1).await.unwrap().is_none(),
        "filters are per user"
    );
    assert!(s.filter(alice(), "not-a-number").await.unwrap().is_none());
}

async fn signing_key_is_stored_once(h: &Harness) {
    let s = &h.store;
    let key = |v: &str| SigningKeyRecord {
        version: v.into(),
        pkcs8: vec![1, 2, 3, 255],
        created_ms: 7,
    };
    assert_eq!(
        s.signing_key_or_insert(&key("a_first")).await.unwrap(),
        key("a_first")
    );
    assert_eq!(
        s.signing_key_or_insert(&key("a_second")).await.unwrap(),
        key("a_first")
    );
    assert_eq!(
        h.reopen()
            .await
            .signing_key_or_insert(&key("a_third"))
            .await
            .unwrap(),
        key("a_first")
    );
}

async fn remote_keys_are_cached_and_replaced(h: &Harness) {
    let s = &h.store;
    let server = ruma::server_name!("remote.test");
    let key = |id: &str, b64: &str, until: u64, expired: Option<u64>| RemoteKey {
        key_id: id.into(),
        key: b64.into(),
        valid_until_ms: until,
        expired_ms: expired,
    };
    assert_eq!(s.remote_key(server, "ed25519:a").await.unwrap(), None);
    s.store_remote_keys(
        server,
        &[
            key("ed25519:a", "AAA", 10, None),
            key("ed25519:old", "OLD", 20, Some(5)),
        ],
    )
    .await
    .unwrap();
    s.store_remote_keys(server, &[key("ed25519:a", "BBB", 30, None)])
        .await
        .unwrap();
    let store = h.reopen().await;
    assert_eq!(
        store.remote_key(server, "ed25519:a").await.unwrap(),
        Some(key("ed25519:a", "BBB", 30, None))
    );
    assert_eq!(
        store.remote_key(server, "ed25519:old").await.unwrap(),
        Some(key("ed25519:old", "OLD", 20, Some(5)))
    );
    assert_eq!(
        store
            .remote_key(ruma::server_name!("other.test"), "ed25519:a")
            .await
            .unwrap(),
        None
    );
}

async fn data_survives_reopening(h: &Harness) {
    h.store
        .create_user(&new_user(alice()), Some(&new_device(alice(), "D1", "t1")))
        .await
        .unwrap();
    h.store.close().await;
    let again = h.reopen().await; // migrations are not re-applied
    assert!(again.user(alice()).await.unwrap().is_some());
    assert_eq!(
        again
            .token_owner("t1")
            .await
            .unwrap()
            .unwrap()
            .device_id
            .as_str(),
        "D1"
    );
}

async fn concurrent_registrations_of_one_name_let_one_win(h: &Harness) {
    let store = Arc::new(h.store.clone());
    let attempts = (0..16).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_user(
                    &new_user(alice()),
                    Some(&new_device(alice(), &format!("D{i}"), &format!("t{i}"))),
                )
                .await
        })
    });
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.devices(alice()).await.unwrap().len(), 1);
}
