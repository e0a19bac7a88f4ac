//! Rules for the identifiers that users choose or that the server generates.

use rand::RngExt;
use ruma::{OwnedDeviceId, OwnedUserId, ServerName, UserId};

use crate::error::{Error, ErrorKind, Result};

/// The longest user ID the spec allows, in bytes.
const MAX_USER_ID_BYTES: usize = 255;

/// Checks a localpart that someone asks to register and returns its canonical (lower-case)
/// form, or `M_INVALID_USERNAME`.
///
/// New localparts use only `a-z 0-9 . _ = - / +` (the spec's grammar for new user IDs). Capitals
/// are folded to lower case, as Synapse does. Localparts starting with `_` are reserved for
/// application services, and purely numeric ones for generated names.
pub fn canonical_localpart(requested: &str, server_name: &ServerName) -> Result<String> {
    let localpart = requested.to_lowercase();
    let invalid = |why: &str| Error::new(ErrorKind::InvalidUsername, why.to_owned());
    if localpart.is_empty() {
        return Err(invalid("User ID cannot be empty"));
    }
    if !localpart
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'))
    {
        return Err(invalid(
            "User ID can only contain characters a-z, 0-9, or '=_-./+'",
        ));
    }
    if localpart.starts_with('_') {
        return Err(invalid("User ID may not begin with '_'"));
    }
    if localpart.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("Numeric user IDs are reserved for generated names"));
    }
    if 2 + localpart.len() + server_name.as_str().len() > MAX_USER_ID_BYTES {
        return Err(invalid("User ID is too long"));
    }
    Ok(localpart)
}

/// The user ID of `localpart` on `server_name`; the localpart must already be valid.
pub fn user_id(localpart: &str, server_name: &ServerName) -> Result<OwnedUserId> {
    UserId::parse(format!("@{localpart}:{server_name}"))
        .map_err(|_| Error::new(ErrorKind::InvalidUsername, "Invalid user ID"))
}

/// Resolves what a client typed at login (`alice` or `@alice:server`) to a local user ID.
/// Returns `None` for a user of another server or a string that is no user ID.
pub fn login_user_id(input: &str, server_name: &ServerName) -> Option<OwnedUserId> {
    let full = if input.starts_with('@') {
        input.to_owned()
    } else {
        format!("@{input}:{server_name}")
    };
    // Accounts are registered in lower case; accept any case at login.
    let user_id = UserId::parse(full.to_lowercase()).ok()?;
    (user_id.server_name() == server_name).then_some(user_id)
}

/// A fresh random localpart for a registration that named none.
pub fn generated_localpart() -> String {
    format!(
        "u{}",
        crate::secrets::random_alphanumeric(10).to_lowercase()
    )
}

/// A fresh random device ID: ten upper-case letters, like Synapse's.
pub fn generated_device_id() -> OwnedDeviceId {
    let id: String = (0..10)
        .map(|_| char::from(b'A' + rand::rng().random_range(0..26u8)))
        .collect();
    id.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::server_name;

    #[test]
    fn localparts_are_folded_and_checked() {
        let sn = server_name!("example.org");
        assert_eq!(canonical_localpart("Alice", sn).unwrap(), "alice");
        assert_eq!(
            canonical_localpart("a.b_c=d-e/f+g", sn).unwrap(),
            "a.b_c=d-e/f+g"
        );
        for bad in [
            "",
            "al ice",
            "alice!",
            "_bridge",
            "12345",
            "élan",
            &"x".repeat(250),
        ] {
            let err = canonical_localpart(bad, sn).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidUsername, "{bad:?}");
        }
    }

    #[test]
    fn login_names_resolve_to_local_users_only() {
        let sn = server_name!("example.org");
        assert_eq!(
            login_user_id("alice", sn).unwrap().as_str(),
            "@alice:example.org"
        );
        assert_eq!(
            login_user_id("@Alice:example.org", sn).unwrap().as_str(),
            "@alice:example.org"
        );
        assert_eq!(login_user_id("@alice:other.org", sn), None);
        assert_eq!(login_user_id("@", sn), None);
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let sn = server_name!("example.org");
        let a = generated_localpart();
        assert_eq!(canonical_localpart(&a, sn).unwrap(), a);
        assert_ne!(a, generated_localpart());
        let d = generated_device_id();
        assert_eq!(d.as_str().len(), 10);
        assert!(d.as_str().bytes().all(|b| b.is_ascii_uppercase()));
    }
}
