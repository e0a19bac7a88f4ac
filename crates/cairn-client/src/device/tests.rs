//! The device's rules over weeks of a fake clock: sessions on one-time and fallback keys,
//! rotation on use and weekly, the 30-day archive, and consumed one-time keys staying consumed.

use super::*;
use crate::FakeClock;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn key(raw: &Map<String, Value>) -> Curve25519PublicKey {
    let (_, body) = raw.iter().next().expect("one key");
    Curve25519PublicKey::from_base64(body["key"].as_str().unwrap()).unwrap()
}

fn devices() -> (Device, Device, FakeClock) {
    (
        Device::new("@alice:a.test", "ALICE"),
        Device::new("@bob:b.test", "BOB"),
        FakeClock::at(1_000),
    )
}

/// `from` starts a session with `to` on `to_key` and sends `text`; `to` decrypts it.
fn send(
    from: &mut Device,
    to: &mut Device,
    to_key: Option<Curve25519PublicKey>,
    text: &str,
    clock: &FakeClock,
) -> Result<String, DecryptError> {
    let (kind, body) = from
        .encrypt(to.curve25519_key(), to_key, text.as_bytes())
        .unwrap();
    to.decrypt(from.curve25519_key(), kind, &body, clock)
        .map(|p| String::from_utf8(p).unwrap())
}

#[test]
fn keys_are_signed_and_the_fallback_key_says_so() {
    let (_, mut bob, clock) = devices();
    let keys = bob.device_keys();
    assert!(keys["signatures"]["@bob:b.test"]["ed25519:BOB"].is_string());
    let fallback = bob.fallback_key_to_upload(&clock).unwrap();
    let (id, body) = fallback.iter().next().unwrap();
    assert!(id.starts_with("signed_curve25519:"));
    assert_eq!(body["fallback"], true);
    bob.mark_published();
    assert!(
        bob.fallback_key_to_upload(&clock).is_none(),
        "nothing new before a week"
    );
}

#[test]
fn a_session_on_the_fallback_key_decrypts_and_rotates_it() {
    let (mut alice, mut bob, clock) = devices();
    let fallback = key(&bob.fallback_key_to_upload(&clock).unwrap());
    bob.mark_published();
    let before = bob.current_fallback_key().unwrap().to_owned();
    assert_eq!(
        send(&mut alice, &mut bob, Some(fallback), "hi", &clock).unwrap(),
        "hi"
    );
    assert_ne!(
        bob.current_fallback_key().unwrap(),
        before,
        "rotated on use"
    );
    assert!(
        bob.fallback_key_to_upload(&clock).is_some(),
        "the new one is to be uploaded"
    );
    // The session goes on both ways.
    assert_eq!(
        send(&mut bob, &mut alice, None, "back", &clock).unwrap(),
        "back"
    );
    assert_eq!(
        send(&mut alice, &mut bob, None, "again", &clock).unwrap(),
        "again"
    );
}

#[test]
fn an_archived_fallback_key_still_starts_sessions_for_thirty_days() {
    let (mut alice, mut bob, clock) = devices();
    let first = key(&bob.fallback_key_to_upload(&clock).unwrap());
    bob.mark_published();
    // Two weekly rotations: vodozemac keeps only the two newest keys.
    for _ in 0..2 {
        clock.advance_ms(7 * DAY_MS);
        bob.fallback_key_to_upload(&clock).unwrap();
        bob.mark_published();
    }
    assert_eq!(bob.archived_fallback_keys().len(), 2);
    assert_eq!(
        send(&mut alice, &mut bob, Some(first), "old key", &clock).unwrap(),
        "old key"
    );

    // 30 days after its retirement (and newer retirements since), the first key is gone.
    let mut carol = Device::new("@carol:c.test", "CAROL");
    clock.advance_ms(31 * DAY_MS);
    bob.fallback_key_to_upload(&clock).unwrap();
    assert!(
        !bob.archived_fallback_keys()
            .contains(&first.to_base64().as_str())
    );
    assert!(send(&mut carol, &mut bob, Some(first), "too old", &clock).is_err());
    assert!(
        !bob.archived_fallback_keys().is_empty(),
        "at least one old key is kept"
    );
}

#[test]
fn a_consumed_one_time_key_never_works_again_not_even_through_the_archive() {
    let (mut alice, mut bob, clock) = devices();
    let otk = key(&bob.new_one_time_keys(1));
    bob.fallback_key_to_upload(&clock).unwrap();
    bob.mark_published();
    assert_eq!(
        send(&mut alice, &mut bob, Some(otk), "once", &clock).unwrap(),
        "once"
    );
    // A rotation snapshots the account; the snapshot must not hand the key out again.
    clock.advance_ms(8 * DAY_MS);
    bob.fallback_key_to_upload(&clock).unwrap();
    let mut carol = Device::new("@carol:c.test", "CAROL");
    assert!(send(&mut carol, &mut bob, Some(otk), "replayed", &clock).is_err());
}

#[test]
fn the_state_survives_a_restart() {
    let (mut alice, mut bob, clock) = devices();
    let first = key(&bob.fallback_key_to_upload(&clock).unwrap());
    bob.mark_published();
    clock.advance_ms(8 * DAY_MS);
    bob.fallback_key_to_upload(&clock).unwrap();
    let saved = serde_json::to_string(&bob.save()).unwrap();
    let mut bob = Device::restore(serde_json::from_str(&saved).unwrap());
    assert_eq!(
        send(&mut alice, &mut bob, Some(first), "after", &clock).unwrap(),
        "after"
    );
}

#[test]
fn a_homeserver_accepts_the_signed_fallback_key() {
    let (_, mut bob, clock) = devices();
    let fallback = Value::Object(bob.fallback_key_to_upload(&clock).unwrap());
    let user = ruma::UserId::parse("@bob:b.test").unwrap();
    let (kept, refused) = cairn_core::e2ee::msc4081::checked_fallback_keys(
        &fallback,
        &user,
        "BOB",
        Some(&bob.device_keys()),
    );
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(kept.len(), 1);
}
