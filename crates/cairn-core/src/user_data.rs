//! Per-user data that clients read and write: profile, global account data, filters.

use ruma::UserId;
use serde_json::value::RawValue;

use crate::Homeserver;
use crate::error::{Error, ErrorKind, Result};
use crate::store::Profile;

/// Longest display name, in characters (Synapse's limit).
pub const MAX_DISPLAYNAME_CHARS: usize = 256;
/// Longest avatar URL, in characters (Synapse's limit).
pub const MAX_AVATAR_URL_CHARS: usize = 1000;

/// Account data types that the server manages itself; clients may not set them.
const SERVER_MANAGED_ACCOUNT_DATA: [&str; 2] = ["m.fully_read", "m.push_rules"];

impl Homeserver {
    /// A user's profile, `M_NOT_FOUND` for an unknown one; a remote user's is asked of their
    /// server (404 also when that server cannot say).
    pub async fn profile(&self, user_id: &UserId) -> Result<Profile> {
        if user_id.server_name() != self.config().server_name {
            let answer = self
                .federation()
                .query_profile(user_id.server_name(), user_id)
                .await
                .map_err(|e| Error::not_found(format!("Profile not found: {e}")))?;
            let text = |field: &str| {
                answer
                    .get(field)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            return Ok(Profile {
                displayname: text("displayname"),
                avatar_url: text("avatar_url"),
            });
        }
        self.store()
            .profile(user_id)
            .await?
            .ok_or_else(|| Error::not_found("Profile not found"))
    }

    /// `GET /_matrix/federation/v1/query/profile`: a local user's profile, or one `field` of it
    /// (`displayname` or `avatar_url`); 404 for an unknown user, 400 for another field.
    pub async fn federation_query_profile(
        &self,
        user_id: &UserId,
        field: Option<&str>,
    ) -> Result<serde_json::Value> {
        // Only our own users: never relay a look-up to a third server.
        if !self.is_local(user_id) {
            return Err(Error::not_found("Profile not found"));
        }
        let profile = self.profile(user_id).await?;
        let mut answer = serde_json::Map::new();
        let wanted = |name: &str| field.is_none_or(|f| f == name);
        if !matches!(field, None | Some("displayname") | Some("avatar_url")) {
            return Err(Error::invalid_param("Unknown profile field"));
        }
        if wanted("displayname")
            && let Some(name) = profile.displayname
        {
            answer.insert("displayname".into(), name.into());
        }
        if wanted("avatar_url")
            && let Some(url) = profile.avatar_url
        {
            answer.insert("avatar_url".into(), url.into());
        }
        Ok(answer.into())
    }

    /// Sets the requester's own display name.
    pub async fn set_displayname(
        &self,
        requester: &UserId,
        target: &UserId,
        name: Option<&str>,
    ) -> Result<()> {
        ensure_self(requester, target, "Cannot set another user's display name")?;
        if name.is_some_and(|n| n.chars().count() > MAX_DISPLAYNAME_CHARS) {
            return Err(Error::invalid_param("Display name is too long"));
        }
        self.store().set_displayname(target, name).await?;
        Ok(())
    }

    /// Sets the requester's own avatar URL.
    pub async fn set_avatar_url(
        &self,
        requester: &UserId,
        target: &UserId,
        url: Option<&str>,
    ) -> Result<()> {
        ensure_self(requester, target, "Cannot set another user's avatar URL")?;
        if url.is_some_and(|u| u.chars().count() > MAX_AVATAR_URL_CHARS) {
            return Err(Error::invalid_param("Avatar URL is too long"));
        }
        self.store().set_avatar_url(target, url).await?;
        Ok(())
    }

    /// Reads the requester's own global account data.
    pub async fn account_data(
        &self,
        requester: &UserId,
        target: &UserId,
        data_type: &str,
    ) -> Result<Box<RawValue>> {
        ensure_self(requester, target, "Cannot read another user's account data")?;
        self.store()
            .account_data(target, data_type)
            .await?
            .ok_or_else(|| Error::not_found("Account data not found"))
    }

    /// Writes the requester's own global account data; `content` must be a JSON object.
    pub async fn put_account_data(
        &self,
        requester: &UserId,
        target: &UserId,
        data_type: &str,
        content: &RawValue,
    ) -> Result<()> {
        ensure_self(requester, target, "Cannot add account data for other users")?;
        if SERVER_MANAGED_ACCOUNT_DATA.contains(&data_type) {
            return Err(Error::new(
                ErrorKind::ServerManagedAccountData,
                format!("Cannot set {data_type} through this API"),
            ));
        }
        ensure_object(content)?;
        self.store()
            .put_account_data(target, data_type, content)
            .await?;
        self.notifier().notify(&[target]);
        Ok(())
    }

    /// Stores a filter for the requester and returns its ID.
    pub async fn create_filter(
        &self,
        requester: &UserId,
        target: &UserId,
        filter: &RawValue,
    ) -> Result<String> {
        ensure_self(requester, target, "Cannot create filters for other users")?;
        ensure_object(filter)?;
        Ok(self.store().create_filter(target, filter).await?)
    }

    /// Reads one of the requester's filters.
    pub async fn filter(
        &self,
        requester: &UserId,
        target: &UserId,
        filter_id: &str,
    ) -> Result<Box<RawValue>> {
        ensure_self(requester, target, "Cannot get filters for other users")?;
        self.store()
            .filter(target, filter_id)
            .await?
            .ok_or_else(|| Error::not_found("No such filter"))
    }
}

fn ensure_self(requester: &UserId, target: &UserId, message: &str) -> Result<()> {
    if requester == target {
        Ok(())
    } else {
        Err(Error::forbidden(message))
    }
}

fn ensure_object(value: &RawValue) -> Result<()> {
    if value.get().trim_start().starts_with('{') {
        Ok(())
    } else {
        Err(Error::bad_json("Content must be a JSON object"))
    }
}
