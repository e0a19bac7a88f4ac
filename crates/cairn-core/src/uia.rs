//! User-interactive authentication (UIA): the 401 challenge, sessions and stages.
//!
//! Cairn offers single-stage flows: `m.login.dummy` to register, `m.login.password` to confirm
//! a sensitive operation (deleting devices). A session is created with the first challenge and
//! bound to its operation and user, so that a session from one request cannot authorise another.
//! Sessions live in the store so that any process sharing the database can finish them.

use ruma::UserId;
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::store::{UiaSessionRecord, UserRecord};
use crate::{Homeserver, ids, secrets};

/// How long a UIA session stays usable.
const SESSION_TTL_MS: u64 = 60 * 60 * 1000;

/// Stage type for registration without any check.
pub const DUMMY: &str = "m.login.dummy";
/// Stage type that re-checks the user's password.
pub const PASSWORD: &str = "m.login.password";

/// An operation that needs user-interactive authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiaOperation {
    /// `POST /register`.
    Register,
    /// `DELETE /devices/{id}` and `POST /delete_devices`.
    DeleteDevices,
    /// Replacing cross-signing keys.
    DeviceSigning,
}

impl UiaOperation {
    fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::DeleteDevices => "delete_devices",
            Self::DeviceSigning => "device_signing",
        }
    }

    fn stage(self) -> &'static str {
        match self {
            Self::Register => DUMMY,
            Self::DeleteDevices | Self::DeviceSigning => PASSWORD,
        }
    }
}

/// The body of a 401 UIA answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiaChallenge {
    /// The session ID to send back.
    pub session: String,
    /// The flows on offer, each a list of stage types.
    pub flows: Vec<Vec<&'static str>>,
    /// Stages already completed in this session.
    pub completed: Vec<String>,
    /// Why the last attempt failed, if it did (rendered as `errcode`).
    pub failure: Option<ErrorKind>,
}

/// The `auth` object of a request, as far as Cairn's stages read it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthData {
    /// The stage type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The session ID from the challenge.
    pub session: Option<String>,
    /// `m.login.password`: the password.
    pub password: Option<String>,
    /// `m.login.password`: who is authenticating.
    pub identifier: Option<UserIdentifier>,
    /// `m.login.password`: the deprecated form of `identifier`.
    pub user: Option<String>,
}

/// A user identifier (`m.id.user`; other types are refused).
#[derive(Debug, Clone, Deserialize)]
pub struct UserIdentifier {
    /// The identifier type.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `m.id.user`: the localpart or user ID.
    pub user: Option<String>,
}

impl AuthData {
    /// The user named by `identifier` (or the deprecated `user`), if it is a local user ID.
    pub fn named_user(&self, hs: &Homeserver) -> Option<ruma::OwnedUserId> {
        let name = match &self.identifier {
            Some(id) if id.kind == "m.id.user" => id.user.as_deref()?,
            Some(_) => return None,
            None => self.user.as_deref()?,
        };
        ids::login_user_id(name, &hs.config().server_name)
    }
}

impl Homeserver {
    /// Runs user-interactive authentication for `operation` by `user` (if authenticated).
    ///
    /// Returns `Ok(())` once the flow is complete, after which the caller performs the operation.
    /// Otherwise returns a [`ErrorKind::UserInteractive`] error holding the challenge, with a
    /// failure reason if the client's attempt was wrong.
    pub async fn authorize(
        &self,
        operation: UiaOperation,
        user: Option<&UserId>,
        auth: Option<AuthData>,
    ) -> Result<()> {
        let now = self.now_ms();
        let Some(auth) = auth else {
            return Err(self.new_challenge(operation, user, now).await?);
        };
        let session = match auth.session.as_deref() {
            Some(id) => {
                let record = self.store().uia_session(id).await?;
                match record {
                    Some(r)
                        if r.operation == operation.name()
                            && r.user_id.as_deref() == user
                            && r.created_ms + SESSION_TTL_MS > now =>
                    {
                        r
                    }
                    _ => return Err(Error::new(ErrorKind::Unknown, "Unknown session ID")),
                }
            }
            None => self.store_session(operation, user, now).await?,
        };
        let failure = match auth.kind.as_deref() {
            Some(kind) if kind == operation.stage() => self.check_stage(kind, user, &auth).await,
            Some(_) => Some(Error::new(
                ErrorKind::Unrecognized,
                "Unrecognised authentication type",
            )),
            None => Some(Error::new(
                ErrorKind::MissingParam,
                "Missing authentication type",
            )),
        };
        match failure {
            None => {
                self.store().delete_uia_session(&session.session_id).await?;
                Ok(())
            }
            Some(err) => Err(Error::new(
                ErrorKind::UserInteractive(Box::new(UiaChallenge {
                    session: session.session_id,
                    flows: vec![vec![operation.stage()]],
                    completed: session.completed,
                    failure: Some(err.kind),
                })),
                err.message,
            )),
        }
    }

    /// Checks one stage; `None` means it passed.
    async fn check_stage(
        &self,
        kind: &str,
        user: Option<&UserId>,
        auth: &AuthData,
    ) -> Option<Error> {
        if kind == DUMMY {
            return None;
        }
        let wrong = || Some(Error::forbidden("Invalid username or password"));
        let (Some(user), Some(password)) = (user, auth.password.clone()) else {
            return wrong();
        };
        if auth.named_user(self).is_some_and(|named| named != user) {
            return wrong();
        }
        match self.store().user(user).await {
            Ok(Some(UserRecord {
                password_hash: Some(hash),
                ..
            })) => {
                if secrets::verify_password(password, hash).await {
                    None
                } else {
                    wrong()
                }
            }
            Ok(Some(_)) => wrong(),
            Ok(None) => wrong(),
            Err(err) => Some(err.into()),
        }
    }

    async fn store_session(
        &self,
        operation: UiaOperation,
        user: Option<&UserId>,
        now: u64,
    ) -> Result<UiaSessionRecord> {
        let record = UiaSessionRecord {
            session_id: secrets::random_string(18),
            operation: operation.name().to_owned(),
            user_id: user.map(ToOwned::to_owned),
            completed: Vec::new(),
            created_ms: now,
        };
        self.store()
            .create_uia_session(&record, now.saturating_sub(SESSION_TTL_MS))
            .await?;
        Ok(record)
    }

    async fn new_challenge(
        &self,
        operation: UiaOperation,
        user: Option<&UserId>,
        now: u64,
    ) -> Result<Error> {
        let session = self.store_session(operation, user, now).await?;
        Ok(Error::new(
            ErrorKind::UserInteractive(Box::new(UiaChallenge {
                session: session.session_id,
                flows: vec![vec![operation.stage()]],
                completed: Vec::new(),
                failure: None,
            })),
            "Authentication required",
        ))
    }
}
