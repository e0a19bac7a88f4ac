//! X-Matrix request authentication: the `Authorization` header every federation request carries.
//!
//! The origin signs a JSON object made of the request's method, URI (path and query, exactly as
//! sent), origin, destination and body. The receiver rebuilds that object from what it received
//! and checks the signature with the origin's published key. Header parsing follows RFC 9110
//! auth-params (case-insensitive names in any order, quoted or token values, backslash escapes)
//! and also accepts unquoted values with colons, as the spec asks of recipients. The signature
//! parameter is `sig`, as every implementation sends it (the spec's prose says `signature`).

use ruma::signatures::{PublicKeyMap, PublicKeySet, verify_json};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};

use crate::ServerIdentity;

/// Why a request's authorization was refused. Every case is a 401 `M_UNAUTHORIZED` except
/// [`XMatrixError::Malformed`], which Synapse answers with 400 `M_UNAUTHORIZED`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XMatrixError {
    /// No `Authorization: X-Matrix ...` header.
    #[error("missing X-Matrix authorization")]
    Missing,
    /// The header is not a well-formed X-Matrix credential.
    #[error("malformed X-Matrix authorization header: {0}")]
    Malformed(String),
    /// The request names another server as its destination.
    #[error("request is addressed to {0}, not to this server")]
    WrongDestination(String),
    /// The signature does not verify with the origin's key.
    #[error("invalid request signature: {0}")]
    BadSignature(String),
}

/// The parameters of one X-Matrix credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    /// The server that signed the request.
    pub origin: OwnedServerName,
    /// The server it was meant for; optional before Matrix 1.3.
    pub destination: Option<OwnedServerName>,
    /// The signing key's ID, e.g. `ed25519:a_1`.
    pub key_id: String,
    /// The unpadded base64 signature.
    pub sig: String,
}

impl XMatrix {
    /// Parses an `Authorization` header value.
    pub fn parse(header: &str) -> Result<Self, XMatrixError> {
        let malformed = |why: &str| XMatrixError::Malformed(why.to_owned());
        let header = header.trim();
        let (scheme, params) = header
            .split_once([' ', '\t'])
            .ok_or_else(|| malformed("no parameters"))?;
        if !scheme.eq_ignore_ascii_case("X-Matrix") {
            return Err(XMatrixError::Missing);
        }
        let (mut origin, mut destination, mut key_id, mut sig) = (None, None, None, None);
        for (name, value) in auth_params(params).map_err(|why| malformed(&why))? {
            let slot = match name.to_ascii_lowercase().as_str() {
                "origin" => &mut origin,
                "destination" => &mut destination,
                "key" => &mut key_id,
                "sig" => &mut sig,
                _ => continue,
            };
            *slot = Some(value);
        }
        let server = |name: String| {
            ServerName::parse(&name)
                .map_err(|_| malformed("origin or destination is not a server name"))
        };
        Ok(Self {
            origin: server(origin.ok_or_else(|| malformed("no origin"))?)?,
            destination: destination.map(server).transpose()?,
            key_id: key_id.ok_or_else(|| malformed("no key"))?,
            sig: sig.ok_or_else(|| malformed("no sig"))?,
        })
    }

    /// The header value, in the form every implementation reads: one space after the scheme,
    /// lower-case names, quoted values, no spaces around commas.
    pub fn to_header(&self) -> String {
        let mut header = format!(
            "X-Matrix origin=\"{}\",key=\"{}\",sig=\"{}\"",
            self.origin, self.key_id, self.sig
        );
        if let Some(destination) = &self.destination {
            header.push_str(&format!(",destination=\"{destination}\""));
        }
        header
    }

    /// Checks this credential against the request it came with. `public_key` is the origin's
    /// key named by [`XMatrix::key_id`] (unpadded base64); `uri` is the request target exactly as
    /// received (path and query).
    pub fn verify(
        &self,
        us: &ServerName,
        method: &str,
        uri: &str,
        content: Option<&CanonicalJsonValue>,
        public_key: &str,
    ) -> Result<(), XMatrixError> {
        if let Some(destination) = &self.destination
            && destination != us
        {
            return Err(XMatrixError::WrongDestination(destination.to_string()));
        }
        let mut object = request_object(method, uri, &self.origin, us, content);
        let mut signature = CanonicalJsonObject::new();
        signature.insert(
            self.key_id.clone(),
            CanonicalJsonValue::String(self.sig.clone()),
        );
        let mut by_server = CanonicalJsonObject::new();
        by_server.insert(
            self.origin.to_string(),
            CanonicalJsonValue::Object(signature),
        );
        object.insert("signatures".into(), CanonicalJsonValue::Object(by_server));

        let key = ruma::serde::Base64::parse(public_key)
            .map_err(|e| XMatrixError::BadSignature(format!("unreadable public key: {e}")))?;
        let mut keys = PublicKeySet::new();
        keys.insert(self.key_id.clone(), key);
        let mut map = PublicKeyMap::new();
        map.insert(self.origin.to_string(), keys);
        verify_json(&map, &object).map_err(|e| XMatrixError::BadSignature(e.to_string()))
    }
}

/// The object an X-Matrix signature covers.
fn request_object(
    method: &str,
    uri: &str,
    origin: &ServerName,
    destination: &ServerName,
    content: Option<&CanonicalJsonValue>,
) -> CanonicalJsonObject {
    let mut object = CanonicalJsonObject::new();
    object.insert(
        "method".into(),
        CanonicalJsonValue::String(method.to_owned()),
    );
    object.insert("uri".into(), CanonicalJsonValue::String(uri.to_owned()));
    object.insert(
        "origin".into(),
        CanonicalJsonValue::String(origin.to_string()),
    );
    object.insert(
        "destination".into(),
        CanonicalJsonValue::String(destination.to_string()),
    );
    if let Some(content) = content {
        object.insert("content".into(), content.clone());
    }
    object
}

impl ServerIdentity {
    /// Signs an outbound request and returns its `Authorization` header value.
    pub fn authorize(
        &self,
        destination: &ServerName,
        method: &str,
        uri: &str,
        content: Option<&CanonicalJsonValue>,
    ) -> String {
        let mut object = request_object(method, uri, self.server_name(), destination, content);
        self.sign_json(&mut object)
            .expect("a request object without signatures can be signed");
        let sig = match object
            .get("signatures")
            .and_then(|s| s.as_object()?.get(self.server_name().as_str()))
            .and_then(|s| s.as_object()?.get(&self.key_id()))
        {
            Some(CanonicalJsonValue::String(sig)) => sig.clone(),
            _ => unreachable!("sign_json adds our signature under our name and key ID"),
        };
        XMatrix {
            origin: self.server_name().clone(),
            destination: Some(destination.to_owned()),
            key_id: self.key_id(),
            sig,
        }
        .to_header()
    }
}

/// Splits `name=value, name="quoted \" value"` into pairs.
fn auth_params(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = input.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("a parameter without a value")?;
        let name = rest[..eq].trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!("bad parameter name {name:?}"));
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut unescaped = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => unescaped.push(c),
                        None => return Err("unterminated escape".into()),
                    },
                    Some((_, c)) => unescaped.push(c),
                    None => return Err("unterminated quoted value".into()),
                }
            };
            value = unescaped;
            rest = &quoted[end + 1..];
        } else {
            // A token, or (accepted for compatibility) an unquoted value containing colons.
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim_end().to_owned();
            if value.is_empty() || !value.bytes().all(|b| is_token_byte(b) || b == b':') {
                return Err(format!("bad unquoted value {value:?}"));
            }
            rest = &rest[end..];
        }
        pairs.push((name.to_owned(), value));
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() => {}
            None => return Err("expected a comma between parameters".into()),
        }
    }
    Ok(pairs)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::memory_store::MemoryStore;
    use ruma::server_name;

    async fn identity(name: &str) -> ServerIdentity {
        ServerIdentity::load_or_create(&MemoryStore::new(), name.try_into().unwrap(), 0)
            .await
            .unwrap()
    }

    fn body() -> CanonicalJsonValue {
        serde_json::from_str(r#"{"device_keys":{"@a:origin.test":[]}}"#).unwrap()
    }

    #[tokio::test]
    async fn a_signed_request_verifies_and_any_change_breaks_it() {
        let origin = identity("origin.test").await;
        let us = server_name!("dest.test");
        let uri = "/_matrix/federation/v1/user/keys/query?x=1";
        let header = origin.authorize(us, "POST", uri, Some(&body()));
        let parsed = XMatrix::parse(&header).unwrap();
        assert_eq!(parsed.origin, "origin.test");
        assert_eq!(parsed.destination.as_deref(), Some(us));
        assert_eq!(parsed.key_id, origin.key_id());
        let key = origin.public_key_base64();
        parsed.verify(us, "POST", uri, Some(&body()), &key).unwrap();

        let other_body: CanonicalJsonValue = serde_json::from_str(r#"{"device_keys":{}}"#).unwrap();
        for (method, uri, content) in [
            ("PUT", uri, Some(&body())),
            (
                "POST",
                "/_matrix/federation/v1/user/keys/query",
                Some(&body()),
            ),
            ("POST", uri, Some(&other_body)),
            ("POST", uri, None),
        ] {
            assert!(matches!(
                parsed.verify(us, method, uri, content, &key),
                Err(XMatrixError::BadSignature(_))
            ));
        }
        // Another server's key does not verify it.
        let impostor = identity("origin.test").await;
        assert!(matches!(
            parsed.verify(
                us,
                "POST",
                uri,
                Some(&body()),
                &impostor.public_key_base64()
            ),
            Err(XMatrixError::BadSignature(_))
        ));
    }

    #[tokio::test]
    async fn a_request_for_another_destination_is_refused() {
        let origin = identity("origin.test").await;
        let header = origin.authorize(server_name!("elsewhere.test"), "GET", "/x", None);
        let parsed = XMatrix::parse(&header).unwrap();
        assert_eq!(
            parsed.verify(
                server_name!("dest.test"),
                "GET",
                "/x",
                None,
                &origin.public_key_base64()
            ),
            Err(XMatrixError::WrongDestination("elsewhere.test".into()))
        );
    }

    #[tokio::test]
    async fn a_request_without_destination_is_checked_against_our_name() {
        let origin = identity("origin.test").await;
        let us = server_name!("dest.test");
        let mut parsed = XMatrix::parse(&origin.authorize(us, "GET", "/x", None)).unwrap();
        parsed.destination = None;
        let header = parsed.to_header();
        assert!(!header.contains("destination"));
        let reparsed = XMatrix::parse(&header).unwrap();
        reparsed
            .verify(us, "GET", "/x", None, &origin.public_key_base64())
            .unwrap();
    }

    #[test]
    fn headers_parse_as_rfc_9110_auth_params() {
        let parsed = XMatrix::parse(
            "x-matrix  Origin=origin.test:8448 , KEY=\"ed25519:a_1\",sig=\"ab\\\"c\", other=token,destination=\"d.test\"",
        )
        .unwrap();
        assert_eq!(parsed.origin, "origin.test:8448");
        assert_eq!(parsed.key_id, "ed25519:a_1");
        assert_eq!(parsed.sig, "ab\"c");
        assert_eq!(
            parsed.destination.as_deref().map(|d| d.as_str()),
            Some("d.test")
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(XMatrix::parse("Bearer abc"), Err(XMatrixError::Missing));
        for header in [
            "X-Matrix",
            "X-Matrix origin=\"o.test\",key=\"ed25519:a\"",
            "X-Matrix key=\"ed25519:a\",sig=\"s\"",
            "X-Matrix origin=\"o.test\",key=\"ed25519:a\",sig=\"unterminated",
            "X-Matrix origin=\"o.test\" key=\"ed25519:a\",sig=\"s\"",
            "X-Matrix origin=\"not a name\",key=\"ed25519:a\",sig=\"s\"",
            "X-Matrix origin=o test,key=\"ed25519:a\",sig=\"s\"",
        ] {
            assert!(
                matches!(XMatrix::parse(header), Err(XMatrixError::Malformed(_))),
                "{header}"
            );
        }
    }
}
