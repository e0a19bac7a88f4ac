//! Cross-signing over HTTP (peer-test area XS), with real ed25519 keys and signatures.

use ruma::CanonicalJsonObject;
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, Client, Session, TestServer};

both_backends!(
    cross_signing_keys_upload_replace_and_query,
    signatures_are_verified_and_shown
);

const UPLOAD: &str = "/_matrix/client/v3/keys/device_signing/upload";
const SIGNATURES: &str = "/_matrix/client/v3/keys/signatures/upload";

/// An ed25519 key whose key ID is `ed25519:<version>` (the public key, or a device ID).
struct Key {
    pair: Ed25519KeyPair,
    public: String,
}

impl Key {
    fn new(version: Option<&str>) -> Self {
        let der = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&der, String::new()).unwrap();
        let public = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(
            probe.public_key().to_vec(),
        )
        .encode();
        let pair = Ed25519KeyPair::from_der(&der, version.unwrap_or(&public).to_owned()).unwrap();
        Self { pair, public }
    }

    fn sign(&self, user: &str, value: &mut Value) {
        let mut object: CanonicalJsonObject = serde_json::from_value(value.clone()).unwrap();
        ruma::signatures::sign_json(user, &self.pair, &mut object).unwrap();
        *value = serde_json::to_value(object).unwrap();
    }

    fn cross_signing(&self, user: &str, usage: &str) -> Value {
        json!({ "user_id": user, "usage": [usage], "keys": { format!("ed25519:{}", self.public): self.public } })
    }
}

fn auth(s: &Session, session: Option<&str>) -> Value {
    let mut auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": s.user_id }, "password": "pw" });
    if let Some(session) = session {
        auth["session"] = session.into();
    }
    auth
}

async fn query(c: &Client, by: &Session, user: &str) -> Value {
    c.post(
        "/_matrix/client/v3/keys/query",
        Some(&by.token),
        json!({ "device_keys": { user: [] } }),
    )
    .await
    .ok()
}

async fn cross_signing_keys_upload_replace_and_query(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let u = alice.user_id.as_str();
    let t = Some(alice.token.as_str());

    // XS-03: a self-signing key without a master key.
    let (master, ssk) = (Key::new(None), Key::new(None));
    let mut ssk_json = ssk.cross_signing(u, "self_signing");
    master.sign(u, &mut ssk_json);
    c.post(UPLOAD, t, json!({ "self_signing_key": ssk_json }))
        .await
        .assert_error(400, "M_MISSING_PARAM");

    // XS-01 / XS-09: the first master key needs no auth, and reads back exactly.
    let master_json = master.cross_signing(u, "master");
    c.post(UPLOAD, t, json!({ "master_key": master_json }))
        .await
        .ok();
    c.post(UPLOAD, t, json!({ "master_key": master_json }))
        .await
        .ok(); // identical: still no auth
    assert_eq!(query(&c, &alice, u).await["master_keys"][u], master_json);

    // XS-09 (4, 5): a self-signing key now needs the password.
    let challenge = c
        .post(UPLOAD, t, json!({ "self_signing_key": ssk_json }))
        .await;
    assert_eq!(challenge.status, 401);
    assert_eq!(
        challenge.body["flows"],
        json!([{ "stages": ["m.login.password"] }])
    );
    let session = challenge.body["session"].as_str().unwrap();
    c.post(
        UPLOAD,
        t,
        json!({ "self_signing_key": ssk_json, "auth": auth(&alice, Some(session)) }),
    )
    .await
    .ok();
    let q = query(&c, &alice, u).await;
    assert_eq!(
        q["self_signing_keys"][u], ssk_json,
        "including the master's signature"
    );

    // An SSK not signed by the master is refused.
    let rogue = Key::new(None);
    c.post(UPLOAD, t, json!({ "self_signing_key": rogue.cross_signing(u, "self_signing"), "auth": auth(&alice, None) }))
        .await
        .assert_error(400, "M_INVALID_SIGNATURE");

    // XS-02 / XS-10: replacing the master needs auth, then replaces it.
    let master2 = Key::new(None);
    let master2_json = master2.cross_signing(u, "master");
    assert_eq!(
        c.post(UPLOAD, t, json!({ "master_key": master2_json }))
            .await
            .status,
        401
    );
    c.post(
        UPLOAD,
        t,
        json!({ "master_key": master2_json, "auth": auth(&alice, None) }),
    )
    .await
    .ok();
    assert_eq!(
        query(&c, &alice, u).await["master_keys"],
        json!({ u: master2_json })
    );
}

async fn signatures_are_verified_and_shown(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let u = alice.user_id.as_str();
    let t = Some(alice.token.as_str());

    let device = Key::new(Some(&alice.device_id));
    let mut device_keys = json!({
        "user_id": u, "device_id": alice.device_id, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": { format!("ed25519:{}", alice.device_id): device.public, format!("curve25519:{}", alice.device_id): "curve" },
    });
    device.sign(u, &mut device_keys);
    let self_sig = device_keys["signatures"][u][format!("ed25519:{}", alice.device_id)].clone();
    c.post(
        "/_matrix/client/v3/keys/upload",
        t,
        json!({ "device_keys": device_keys }),
    )
    .await
    .ok();

    let (master, ssk, usk) = (Key::new(None), Key::new(None), Key::new(None));
    let mut ssk_json = ssk.cross_signing(u, "self_signing");
    master.sign(u, &mut ssk_json);
    let mut usk_json = usk.cross_signing(u, "user_signing");
    master.sign(u, &mut usk_json);
    c.post(UPLOAD, t, json!({ "master_key": master.cross_signing(u, "master"), "self_signing_key": ssk_json, "user_signing_key": usk_json })).await.ok();

    // XS-04: alice signs her device with the SSK; everyone sees both signatures.
    let mut signed_device = device_keys.clone();
    ssk.sign(u, &mut signed_device);
    let cross_sig = signed_device["signatures"][u][format!("ed25519:{}", ssk.public)].clone();
    let res = c
        .post(
            SIGNATURES,
            t,
            json!({ u: { alice.device_id.as_str(): signed_device } }),
        )
        .await
        .ok();
    assert_eq!(res["failures"], json!({}));
    for by in [&alice, &bob] {
        let q = query(&c, by, u).await;
        assert_eq!(
            q["device_keys"][u][&alice.device_id]["signatures"][u],
            json!({ format!("ed25519:{}", alice.device_id): self_sig, format!("ed25519:{}", ssk.public): cross_sig })
        );
    }
    // Only alice sees her user-signing key.
    assert!(
        query(&c, &alice, u).await["user_signing_keys"]
            .get(u)
            .is_some()
    );
    assert!(
        query(&c, &bob, u).await["user_signing_keys"]
            .get(u)
            .is_none()
    );

    // A forged signature is refused per key, not for the whole request.
    let mut forged = device_keys.clone();
    Key::new(Some(&ssk.public)).sign(u, &mut forged);
    let res = c
        .post(
            SIGNATURES,
            t,
            json!({ u: { alice.device_id.as_str(): forged } }),
        )
        .await
        .ok();
    assert_eq!(
        res["failures"][u][&alice.device_id]["errcode"],
        "M_INVALID_SIGNATURE"
    );

    // Alice signs bob's master key with her USK: she sees the signature, a third party would not.
    let bob_master = Key::new(None);
    let b = bob.user_id.as_str();
    let bob_master_json = bob_master.cross_signing(b, "master");
    c.post(
        UPLOAD,
        Some(&bob.token),
        json!({ "master_key": bob_master_json }),
    )
    .await
    .ok();
    let mut signed = bob_master_json.clone();
    usk.sign(u, &mut signed);
    let res = c
        .post(
            SIGNATURES,
            t,
            json!({ b: { bob_master.public.as_str(): signed } }),
        )
        .await
        .ok();
    assert_eq!(res["failures"], json!({}));
    let seen = query(&c, &alice, b).await;
    assert!(seen["master_keys"][b]["signatures"][u][format!("ed25519:{}", usk.public)].is_string());
    let carol = c.register("carol", "pw").await;
    assert!(
        query(&c, &carol, b).await["master_keys"][b]
            .get("signatures")
            .is_none()
    );
}
