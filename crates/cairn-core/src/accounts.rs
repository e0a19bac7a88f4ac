//! Accounts, logins and devices: who may use the server, and with which access token.

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::store::{DeviceRecord, NewDevice, NewUser, StoreError};
use crate::uia::{AuthData, UiaOperation};
use crate::{Homeserver, ids, secrets};

/// Longest device ID a client may choose, in bytes.
const MAX_DEVICE_ID_BYTES: usize = 255;
/// Longest device display name, in characters; longer initial names are cut.
pub const MAX_DEVICE_NAME_CHARS: usize = 256;
/// A device's "last seen" is rewritten at most this often, so that requests stay reads.
const LAST_SEEN_GRANULARITY_MS: u64 = 5 * 60 * 1000;

/// The body of `POST /register`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RegisterRequest {
    /// Desired localpart; generated if absent.
    pub username: Option<String>,
    /// Password; an account without one cannot log in with a password.
    pub password: Option<String>,
    /// Device ID for the first login.
    pub device_id: Option<String>,
    /// Display name for the first device.
    pub initial_device_display_name: Option<String>,
    /// Register without logging in.
    #[serde(default)]
    pub inhibit_login: bool,
    /// User-interactive authentication.
    pub auth: Option<AuthData>,
}

/// The body of `POST /login`.
#[derive(Debug, Clone, Deserialize)]
pub struct LoginRequest {
    /// The login type; only `m.login.password` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who logs in, and with what password (same fields as UIA's password stage).
    #[serde(flatten)]
    pub credentials: AuthData,
    /// Device ID to (re)use; generated if absent.
    pub device_id: Option<String>,
    /// Display name for a new device.
    pub initial_device_display_name: Option<String>,
}

/// A logged-in device and its new access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSession {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: OwnedDeviceId,
    /// The access token (returned to the client once, stored only hashed).
    pub access_token: String,
}

/// The outcome of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The new user.
    pub user_id: OwnedUserId,
    /// The first login, unless `inhibit_login` was set.
    pub session: Option<LoginSession>,
}

/// The requester, as established from an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device the token belongs to.
    pub device_id: OwnedDeviceId,
}

impl Homeserver {
    /// `POST /register`: checks the name, runs UIA, then creates the account (and logs in).
    pub async fn register(&self, req: RegisterRequest, guest: bool) -> Result<Registered> {
        if guest {
            return Err(Error::new(
                ErrorKind::GuestAccessForbidden,
                "Guest access is disabled",
            ));
        }
        if !self.config().registration_open {
            return Err(Error::forbidden("Registration is disabled"));
        }
        let localpart = match &req.username {
            Some(name) => {
                let localpart = self.check_username_available(name).await?;
                Some(localpart)
            }
            None => None,
        };
        if req
            .password
            .as_ref()
            .is_some_and(|p| p.len() > secrets::MAX_PASSWORD_BYTES)
        {
            return Err(Error::invalid_param("Password is too long"));
        }
        self.authorize(UiaOperation::Register, None, req.auth.clone())
            .await?;
        let localpart = localpart.unwrap_or_else(ids::generated_localpart);
        let device = (!req.inhibit_login).then_some((
            req.device_id.as_deref(),
            req.initial_device_display_name.as_deref(),
        ));
        self.create_account(&localpart, req.password, device).await
    }

    /// `GET /register/available`: refused while registration is closed; otherwise the name must
    /// be given, valid and free.
    pub async fn username_available(&self, username: Option<&str>) -> Result<()> {
        if !self.config().registration_open {
            return Err(Error::forbidden("Registration is disabled"));
        }
        let username =
            username.ok_or_else(|| Error::new(ErrorKind::MissingParam, "Missing username"))?;
        self.check_username_available(username).await.map(|_| ())
    }

    /// The canonical localpart if it is valid and free.
    pub async fn check_username_available(&self, username: &str) -> Result<String> {
        let localpart = ids::canonical_localpart(username, &self.config().server_name)?;
        let user_id = ids::user_id(&localpart, &self.config().server_name)?;
        if self.store().user(&user_id).await?.is_some() {
            return Err(Error::new(ErrorKind::UserInUse, "User ID already taken"));
        }
        Ok(localpart)
    }

    /// Creates an account without UIA or the registration switch (for `cairn user add`), and
    /// logs in when `device` is given (`(device_id, display_name)`).
    pub async fn create_account(
        &self,
        localpart: &str,
        password: Option<String>,
        device: Option<(Option<&str>, Option<&str>)>,
    ) -> Result<Registered> {
        let localpart = ids::canonical_localpart(localpart, &self.config().server_name)?;
        let user_id = ids::user_id(&localpart, &self.config().server_name)?;
        let password_hash = match password {
            Some(p) => Some(secrets::hash_password(p).await?),
            None => None,
        };
        let now = self.now_ms();
        let user = NewUser {
            user_id: user_id.clone(),
            password_hash,
            displayname: Some(localpart),
            created_ms: now,
        };
        let login = match device {
            Some((device_id, name)) => Some(self.new_device(&user_id, device_id, name)?),
            None => None,
        };
        match self
            .store()
            .create_user(&user, login.as_ref().map(|(d, _)| d))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Error::new(ErrorKind::UserInUse, "User ID already taken"));
            }
            Err(err) => return Err(err.into()),
        }
        Ok(Registered {
            user_id,
            session: login.map(|(_, session)| session),
        })
    }

    /// `POST /login` with `m.login.password`.
    pub async fn login(&self, req: LoginRequest) -> Result<LoginSession> {
        if req.kind != crate::uia::PASSWORD {
            return Err(Error::new(ErrorKind::Unknown, "Unknown login type"));
        }
        if req
            .credentials
            .identifier
            .as_ref()
            .is_some_and(|id| id.kind != "m.id.user")
        {
            return Err(Error::new(
                ErrorKind::Unknown,
                "Unsupported identifier type",
            ));
        }
        let wrong = || Error::forbidden("Invalid username or password");
        let user_id = req.credentials.named_user(self).ok_or_else(wrong)?;
        let password = req.credentials.password.clone().ok_or_else(wrong)?;
        let record = self.store().user(&user_id).await?.ok_or_else(wrong)?;
        let hash = record.password_hash.ok_or_else(wrong)?;
        if !secrets::verify_password(password, hash).await {
            return Err(wrong());
        }
        let (device, session) = self.new_device(
            &user_id,
            req.device_id.as_deref(),
            req.initial_device_display_name.as_deref(),
        )?;
        // A device ID equal to a cross-signing public key would make that key look like a device.
        for (_, key) in self.store().cross_signing_keys(&user_id).await? {
            let key: serde_json::Value = serde_json::from_str(key.get()).unwrap_or_default();
            let public = key
                .get("keys")
                .and_then(|k| k.as_object())
                .into_iter()
                .flat_map(|k| k.values());
            if public
                .filter_map(|v| v.as_str())
                .any(|p| p == device.device_id.as_str())
            {
                return Err(Error::invalid_param(
                    "This device ID is one of the user's cross-signing keys",
                ));
            }
        }
        self.store().add_device_token(&device).await?;
        self.notify_device_list_change(&user_id).await?;
        Ok(session)
    }

    /// Resolves an access token to its user and device, and notes that the device was seen.
    pub async fn authenticate(&self, access_token: &str, ip: Option<&str>) -> Result<Requester> {
        let owner = self
            .store()
            .token_owner(&secrets::token_hash(access_token))
            .await?
            .ok_or_else(|| Error::new(ErrorKind::UnknownToken, "Unknown access token"))?;
        let now = self.now_ms();
        if owner
            .last_seen_ms
            .is_none_or(|seen| now.saturating_sub(seen) >= LAST_SEEN_GRANULARITY_MS)
        {
            self.store()
                .touch_device(&owner.user_id, &owner.device_id, now, ip)
                .await?;
        }
        Ok(Requester {
            user_id: owner.user_id,
            device_id: owner.device_id,
        })
    }

    /// `POST /logout`: the token's device is deleted, and with it every token it holds.
    pub async fn logout(&self, requester: &Requester) -> Result<()> {
        let devices = [requester.device_id.clone()];
        self.store()
            .delete_devices(&requester.user_id, &devices)
            .await?;
        self.notify_device_list_change(&requester.user_id).await
    }

    /// `POST /logout/all`: every device of the user is deleted.
    pub async fn logout_all(&self, requester: &Requester) -> Result<()> {
        self.store().delete_all_devices(&requester.user_id).await?;
        self.notify_device_list_change(&requester.user_id).await
    }

    /// `GET /devices`.
    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceRecord>> {
        Ok(self.store().devices(user_id).await?)
    }

    /// `GET /devices/{deviceId}`.
    pub async fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<DeviceRecord> {
        self.store()
            .device(user_id, device_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown device"))
    }

    /// `PUT /devices/{deviceId}`.
    pub async fn rename_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<&str>,
    ) -> Result<()> {
        if display_name.is_some_and(|n| n.chars().count() > MAX_DEVICE_NAME_CHARS) {
            return Err(Error::invalid_param("Device display name is too long"));
        }
        if self
            .store()
            .set_device_display_name(user_id, device_id, display_name)
            .await?
        {
            self.notify_device_list_change(user_id).await
        } else {
            Err(Error::not_found("Unknown device"))
        }
    }

    /// `DELETE /devices/{deviceId}` and `POST /delete_devices`: after the user confirms with
    /// their password, the devices and their tokens are deleted. Unknown IDs are ignored.
    pub async fn delete_devices(
        &self,
        requester: &Requester,
        device_ids: &[OwnedDeviceId],
        auth: Option<AuthData>,
    ) -> Result<()> {
        self.authorize(UiaOperation::DeleteDevices, Some(&requester.user_id), auth)
            .await?;
        self.store()
            .delete_devices(&requester.user_id, device_ids)
            .await?;
        self.notify_device_list_change(&requester.user_id).await
    }

    /// A device record and a fresh token for it (not yet stored).
    fn new_device(
        &self,
        user_id: &UserId,
        device_id: Option<&str>,
        display_name: Option<&str>,
    ) -> Result<(NewDevice, LoginSession)> {
        let device_id: OwnedDeviceId = match device_id {
            Some(id) if id.is_empty() || id.len() > MAX_DEVICE_ID_BYTES => {
                return Err(Error::invalid_param("Invalid device ID"));
            }
            Some(id) => id.into(),
            None => ids::generated_device_id(),
        };
        let access_token = secrets::new_access_token();
        let device = NewDevice {
            user_id: user_id.to_owned(),
            device_id: device_id.clone(),
            display_name: display_name.map(|n| n.chars().take(MAX_DEVICE_NAME_CHARS).collect()),
            token_hash: secrets::token_hash(&access_token),
            created_ms: self.now_ms(),
        };
        let session = LoginSession {
            user_id: user_id.to_owned(),
            device_id,
            access_token,
        };
        Ok((device, session))
    }
}

#[cfg(test)]
mod tests;
