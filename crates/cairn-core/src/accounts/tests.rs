//! Unit tests of the account rules over the in-memory store and a fake clock.

use std::sync::Arc;

use ruma::OwnedDeviceId;

use super::*;
use crate::clock::FakeClock;
use crate::uia::{AuthData, UserIdentifier};

fn homeserver(open: bool) -> (Homeserver, Arc<FakeClock>) {
    crate::testing::homeserver(open)
}

fn dummy(session: Option<String>) -> Option<AuthData> {
    Some(AuthData {
        kind: Some("m.login.dummy".into()),
        session,
        ..Default::default()
    })
}

fn password_auth(session: Option<String>, password: &str) -> Option<AuthData> {
    Some(AuthData {
        kind: Some("m.login.password".into()),
        session,
        password: Some(password.into()),
        identifier: Some(UserIdentifier {
            kind: "m.id.user".into(),
            user: Some("alice".into()),
        }),
        user: None,
    })
}

fn challenge(err: Error) -> UiaChallenge {
    match err.kind {
        ErrorKind::UserInteractive(c) => *c,
        other => panic!("expected a UIA challenge, got {other:?}"),
    }
}
use crate::uia::UiaChallenge;

fn register_req(name: &str) -> RegisterRequest {
    RegisterRequest {
        username: Some(name.into()),
        password: Some("hunter2".into()),
        device_id: Some("DEV1".into()),
        initial_device_display_name: Some("phone".into()),
        ..Default::default()
    }
}

async fn register_alice(hs: &Homeserver) -> LoginSession {
    let mut req = register_req("alice");
    req.auth = dummy(None);
    hs.register(req, false).await.unwrap().session.unwrap()
}

#[tokio::test]
async fn registration_challenges_then_creates_and_logs_in() {
    let (hs, _) = homeserver(true);
    let c = challenge(hs.register(register_req("Alice"), false).await.unwrap_err());
    assert_eq!(c.flows, vec![vec!["m.login.dummy"]]);
    assert!(c.failure.is_none());

    let mut req = register_req("Alice");
    req.auth = dummy(Some(c.session.clone()));
    let done = hs.register(req, false).await.unwrap();
    assert_eq!(done.user_id.as_str(), "@alice:example.org");
    let session = done.session.unwrap();
    assert_eq!(session.device_id.as_str(), "DEV1");
    let me = hs.authenticate(&session.access_token, None).await.unwrap();
    assert_eq!(me.user_id, done.user_id);
    assert_eq!(
        hs.devices(&me.user_id).await.unwrap()[0]
            .display_name
            .as_deref(),
        Some("phone")
    );

    // The session was used up.
    let mut again = register_req("bob");
    again.auth = dummy(Some(c.session));
    assert_eq!(
        hs.register(again, false).await.unwrap_err().kind,
        ErrorKind::Unknown
    );
}

#[tokio::test]
async fn registration_refusals() {
    let (closed, _) = homeserver(false);
    assert_eq!(
        closed
            .register(register_req("a1"), false)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Forbidden
    );
    let (hs, _) = homeserver(true);
    assert_eq!(
        hs.register(register_req("a1"), true)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::GuestAccessForbidden
    );
    assert_eq!(
        hs.register(register_req("bad name"), false)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::InvalidUsername
    );
    register_alice(&hs).await;
    assert_eq!(
        hs.register(register_req("ALICE"), false)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::UserInUse
    );
    assert_eq!(
        hs.check_username_available("alice").await.unwrap_err().kind,
        ErrorKind::UserInUse
    );
    assert_eq!(hs.check_username_available("Carol").await.unwrap(), "carol");
}

#[tokio::test]
async fn inhibit_login_and_generated_names() {
    let (hs, _) = homeserver(true);
    let req = RegisterRequest {
        inhibit_login: true,
        auth: dummy(None),
        ..Default::default()
    };
    let done = hs.register(req, false).await.unwrap();
    assert!(done.session.is_none());
    assert!(done.user_id.localpart().starts_with('u'));
}

#[tokio::test]
async fn login_checks_password_and_resolves_names() {
    let (hs, _) = homeserver(true);
    register_alice(&hs).await;
    let login = |user: &str, password: &str| LoginRequest {
        kind: "m.login.password".into(),
        credentials: AuthData {
            identifier: Some(UserIdentifier {
                kind: "m.id.user".into(),
                user: Some(user.into()),
            }),
            password: Some(password.into()),
            ..Default::default()
        },
        device_id: None,
        initial_device_display_name: None,
    };
    let ok = hs
        .login(login("@Alice:example.org", "hunter2"))
        .await
        .unwrap();
    assert_eq!(ok.user_id.as_str(), "@alice:example.org");
    assert_ne!(ok.device_id.as_str(), "DEV1");
    for (user, password) in [
        ("alice", "wrong"),
        ("nobody", "hunter2"),
        ("@alice:other.org", "hunter2"),
    ] {
        assert_eq!(
            hs.login(login(user, password)).await.unwrap_err().kind,
            ErrorKind::Forbidden
        );
    }
    let mut token = login("alice", "hunter2");
    token.kind = "m.login.token".into();
    assert_eq!(hs.login(token).await.unwrap_err().kind, ErrorKind::Unknown);
}

#[tokio::test]
async fn logout_revokes_the_token_and_deletes_the_device() {
    let (hs, _) = homeserver(true);
    let session = register_alice(&hs).await;
    let me = hs.authenticate(&session.access_token, None).await.unwrap();
    hs.logout(&me).await.unwrap();
    assert_eq!(
        hs.authenticate(&session.access_token, None)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::UnknownToken
    );
    assert!(hs.devices(&me.user_id).await.unwrap().is_empty());
}

#[tokio::test]
async fn deleting_devices_needs_the_password() {
    let (hs, _) = homeserver(true);
    let session = register_alice(&hs).await;
    let me = hs.authenticate(&session.access_token, None).await.unwrap();
    let devices: Vec<OwnedDeviceId> = vec!["DEV1".into()];

    let c = challenge(hs.delete_devices(&me, &devices, None).await.unwrap_err());
    assert_eq!(c.flows, vec![vec!["m.login.password"]]);
    let failed = challenge(
        hs.delete_devices(
            &me,
            &devices,
            password_auth(Some(c.session.clone()), "nope"),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(failed.failure, Some(ErrorKind::Forbidden));
    assert_eq!(failed.session, c.session);
    assert!(hs.authenticate(&session.access_token, None).await.is_ok());

    hs.delete_devices(&me, &devices, password_auth(Some(c.session), "hunter2"))
        .await
        .unwrap();
    assert_eq!(
        hs.authenticate(&session.access_token, None)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::UnknownToken
    );
}

#[tokio::test]
async fn uia_sessions_expire_and_are_bound_to_their_operation() {
    let (hs, clock) = homeserver(true);
    let session = register_alice(&hs).await;
    let me = hs.authenticate(&session.access_token, None).await.unwrap();
    let register_session =
        challenge(hs.register(register_req("bob"), false).await.unwrap_err()).session;
    let devices: Vec<OwnedDeviceId> = vec!["DEV1".into()];
    // A registration session cannot authorise a device deletion.
    let err = hs
        .delete_devices(
            &me,
            &devices,
            password_auth(Some(register_session), "hunter2"),
        )
        .await;
    assert_eq!(err.unwrap_err().kind, ErrorKind::Unknown);

    let c = challenge(hs.delete_devices(&me, &devices, None).await.unwrap_err());
    clock.advance(2 * 60 * 60 * 1000);
    let err = hs
        .delete_devices(&me, &devices, password_auth(Some(c.session), "hunter2"))
        .await;
    assert_eq!(err.unwrap_err().kind, ErrorKind::Unknown);
}

#[tokio::test]
async fn last_seen_is_updated_coarsely() {
    let (hs, clock) = homeserver(true);
    let session = register_alice(&hs).await;
    let me = hs
        .authenticate(&session.access_token, Some("10.0.0.1"))
        .await
        .unwrap();
    let first = hs.device(&me.user_id, &me.device_id).await.unwrap();
    assert_eq!(first.last_seen_ip.as_deref(), Some("10.0.0.1"));
    clock.advance(1_000);
    hs.authenticate(&session.access_token, Some("10.0.0.2"))
        .await
        .unwrap();
    assert_eq!(hs.device(&me.user_id, &me.device_id).await.unwrap(), first);
    clock.advance(LAST_SEEN_GRANULARITY_MS);
    hs.authenticate(&session.access_token, Some("10.0.0.2"))
        .await
        .unwrap();
    let later = hs.device(&me.user_id, &me.device_id).await.unwrap();
    assert_eq!(later.last_seen_ip.as_deref(), Some("10.0.0.2"));
    assert!(later.last_seen_ms > first.last_seen_ms);
}

#[tokio::test]
async fn renaming_devices() {
    let (hs, _) = homeserver(true);
    let session = register_alice(&hs).await;
    let alice = session.user_id;
    hs.rename_device(&alice, "DEV1".into(), Some("laptop"))
        .await
        .unwrap();
    assert_eq!(
        hs.device(&alice, "DEV1".into())
            .await
            .unwrap()
            .display_name
            .as_deref(),
        Some("laptop")
    );
    assert_eq!(
        hs.rename_device(&alice, "NOPE".into(), Some("x"))
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    let long = "x".repeat(MAX_DEVICE_NAME_CHARS + 1);
    assert_eq!(
        hs.rename_device(&alice, "DEV1".into(), Some(&long))
            .await
            .unwrap_err()
            .kind,
        ErrorKind::InvalidParam
    );
}
