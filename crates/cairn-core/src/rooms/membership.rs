//! Joining, inviting, leaving, kicking and banning: each is an `m.room.member` event, allowed or
//! refused by the room version's authorisation rules.

use ruma::{OwnedRoomId, OwnedServerName, RoomId, UserId};
use serde_json::{Value, json};

use super::pdu::EventDraft;
use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, Result};

impl Homeserver {
    /// Joins a room by ID or alias and returns the room ID. A room this server is not in is
    /// joined through `via` (and the server named in the room ID).
    pub async fn join_room(
        &self,
        me: &Requester,
        room_id_or_alias: &str,
        via: &[OwnedServerName],
    ) -> Result<OwnedRoomId> {
        let mut via = via.to_vec();
        let room_id = if room_id_or_alias.starts_with('#') {
            let alias = Self::parse_alias(room_id_or_alias)?;
            let (room_id, servers) = self.resolve_alias(&alias).await?;
            via.extend(
                servers
                    .iter()
                    .filter_map(|s| OwnedServerName::try_from(s.as_str()).ok()),
            );
            room_id
        } else {
            RoomId::parse(room_id_or_alias).map_err(|_| Error::invalid_param("Invalid room ID"))?
        };
        let known = self.store().room_version(&room_id).await?.is_some();
        let resident = known
            && self
                .store()
                .members_with(&room_id, "join")
                .await?
                .iter()
                .any(|u| self.is_local(u));
        if !resident {
            let mut servers: Vec<OwnedServerName> = via.to_vec();
            // Invited from another server: that server is in the room.
            let mine = [("m.room.member".to_owned(), me.user_id.to_string())];
            for invite in self.store().state_events(&room_id, &mine).await? {
                if invite.membership().as_deref() == Some("invite") {
                    servers.push(invite.sender.server_name().to_owned());
                }
            }
            if let Some(server) = room_id.server_name()
                && !servers.iter().any(|s| s == server)
            {
                servers.push(server.to_owned());
            }
            if !known && servers.iter().all(|s| *s == self.config().server_name) {
                return Err(Error::not_found("Unknown room"));
            }
            if servers.iter().any(|s| *s != self.config().server_name) {
                self.join_remote(&me.user_id, &room_id, &servers).await?;
                return Ok(room_id);
            }
        }
        // Joining a room one is already in sends a fresh join: a profile refresh, as in Synapse.
        let content = self.member_content(&me.user_id, "join").await?;
        self.append_event(
            &room_id,
            &me.user_id,
            &EventDraft::state("m.room.member", me.user_id.as_str(), content),
            None,
        )
        .await?;
        Ok(room_id)
    }

    /// Invites `target` to the room.
    pub async fn invite(
        &self,
        me: &Requester,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<()> {
        if !self.is_local(target) {
            let mut content = json!({ "membership": "invite" });
            if is_direct {
                content["is_direct"] = true.into();
            }
            if let Some(reason) = reason {
                content["reason"] = reason.into();
            }
            return self.invite_remote(me, room_id, target, content).await;
        }
        if self.store().user(target).await?.is_none() {
            return Err(Error::not_found(format!("Unknown user {target}")));
        }
        let mut content = self.member_content(target, "invite").await?;
        if is_direct {
            content["is_direct"] = true.into();
        }
        self.change_membership(me, room_id, target, content, reason)
            .await
    }

    /// Leaves a room (also declines an invite).
    pub async fn leave_room(
        &self,
        me: &Requester,
        room_id: &RoomId,
        reason: Option<&str>,
    ) -> Result<()> {
        if self
            .store()
            .membership(room_id, &me.user_id)
            .await?
            .is_none()
        {
            return Err(self.not_in_room(room_id).await?);
        }
        // Invited to a room this server is not in: decline through the inviting server.
        let resident = self
            .store()
            .members_with(room_id, "join")
            .await?
            .iter()
            .any(|u| self.is_local(u));
        let mine = [("m.room.member".to_owned(), me.user_id.to_string())];
        if !resident
            && let Some(invite) = self.store().state_events(room_id, &mine).await?.pop()
            && invite.membership().as_deref() == Some("invite")
            && !self.is_local(&invite.sender)
        {
            return self.decline_remote_invite(me, room_id, &invite).await;
        }
        self.change_membership(
            me,
            room_id,
            &me.user_id,
            json!({ "membership": "leave" }),
            reason,
        )
        .await
    }

    /// Kicks `target` out of the room.
    pub async fn kick(
        &self,
        me: &Requester,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        match self.store().membership(room_id, target).await? {
            Some(m) if m.membership == "join" || m.membership == "invite" => {}
            _ => return Err(Error::forbidden("The user is not in the room")),
        }
        self.change_membership(
            me,
            room_id,
            target,
            json!({ "membership": "leave" }),
            reason,
        )
        .await
    }

    /// Bans `target` from the room.
    pub async fn ban(
        &self,
        me: &Requester,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        self.change_membership(me, room_id, target, json!({ "membership": "ban" }), reason)
            .await
    }

    /// Lifts a ban.
    pub async fn unban(&self, me: &Requester, room_id: &RoomId, target: &UserId) -> Result<()> {
        match self.store().membership(room_id, target).await? {
            Some(m) if m.membership == "ban" => {}
            _ => return Err(Error::forbidden("The user is not banned")),
        }
        self.change_membership(me, room_id, target, json!({ "membership": "leave" }), None)
            .await
    }

    async fn change_membership(
        &self,
        me: &Requester,
        room_id: &RoomId,
        target: &UserId,
        mut content: Value,
        reason: Option<&str>,
    ) -> Result<()> {
        if let Some(reason) = reason {
            content["reason"] = reason.into();
        }
        if self.store().room_version(room_id).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        let draft = EventDraft::state("m.room.member", target.as_str(), content);
        self.append_event(room_id, &me.user_id, &draft, None)
            .await?;
        Ok(())
    }

    /// Member content with the user's profile, as joins and invites carry it.
    async fn member_content(&self, user_id: &UserId, membership: &str) -> Result<Value> {
        let mut content = json!({ "membership": membership });
        if let Some(profile) = self.store().profile(user_id).await? {
            if let Some(name) = profile.displayname {
                content["displayname"] = name.into();
            }
            if let Some(url) = profile.avatar_url {
                content["avatar_url"] = url.into();
            }
        }
        Ok(content)
    }

    /// 404 for an unknown room, 403 for a known one the user is not in.
    pub(crate) async fn not_in_room(&self, room_id: &RoomId) -> Result<Error> {
        Ok(if self.store().room_version(room_id).await?.is_none() {
            Error::not_found("Unknown room")
        } else {
            Error::forbidden("You are not in this room")
        })
    }
}
