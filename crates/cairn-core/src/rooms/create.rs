//! `POST /createRoom`: the create event, the creator's join, power levels, the preset's rules,
//! initial state, name, topic and invites, in that order (the spec's).

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomVersionId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::pdu::EventDraft;
use super::{DEFAULT_ROOM_VERSION, SUPPORTED_ROOM_VERSIONS};
use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{AppendOutcome, NewEvent};

/// The body of `POST /createRoom`.
#[derive(Debug, Default, Deserialize)]
pub struct CreateRoomRequest {
    /// `public` or `private` (the default).
    pub visibility: Option<String>,
    /// Local part of an alias to create.
    pub room_alias_name: Option<String>,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Users to invite.
    #[serde(default)]
    pub invite: Vec<OwnedUserId>,
    /// The room version.
    pub room_version: Option<String>,
    /// Extra content for the create event.
    pub creation_content: Option<Map<String, Value>>,
    /// State events to send after the preset's.
    #[serde(default)]
    pub initial_state: Vec<InitialState>,
    /// `private_chat`, `trusted_private_chat` or `public_chat`.
    pub preset: Option<String>,
    /// Marks invites as direct chats.
    #[serde(default)]
    pub is_direct: bool,
    /// Merged into the default power levels.
    pub power_level_content_override: Option<Map<String, Value>>,
}

/// One `initial_state` entry.
#[derive(Debug, Deserialize)]
pub struct InitialState {
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The state key (default empty).
    #[serde(default)]
    pub state_key: String,
    /// The content.
    pub content: Map<String, Value>,
}

impl Homeserver {
    /// Creates a room and returns its ID.
    pub async fn create_room(&self, me: &Requester, req: CreateRoomRequest) -> Result<OwnedRoomId> {
        let version_str = req.room_version.as_deref().unwrap_or(DEFAULT_ROOM_VERSION);
        if !SUPPORTED_ROOM_VERSIONS.contains(&version_str) {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                format!("Room version {version_str} is not supported"),
            ));
        }
        let version = RoomVersionId::try_from(version_str)
            .map_err(|_| Error::invalid_param("Invalid room version"))?;
        let rules = super::pdu::rules(&version)?;
        let alias = match &req.room_alias_name {
            Some(name) => {
                let alias = RoomAliasId::parse(format!("#{name}:{}", self.config().server_name))
                    .map_err(|_| Error::invalid_param("Invalid room alias name"))?;
                if self.store().alias(&alias).await?.is_some() {
                    return Err(Error::new(ErrorKind::RoomInUse, "Room alias already taken"));
                }
                Some(alias)
            }
            None => None,
        };
        for invitee in &req.invite {
            if self.is_local(invitee) && self.store().user(invitee).await?.is_none() {
                return Err(Error::not_found(format!("Unknown user {invitee}")));
            }
        }
        let preset = match (req.preset.as_deref(), req.visibility.as_deref()) {
            (Some(p @ ("private_chat" | "trusted_private_chat" | "public_chat")), _) => p,
            (Some(_), _) => return Err(Error::invalid_param("Unknown preset")),
            (None, Some("public")) => "public_chat",
            (None, _) => "private_chat",
        };

        // The create event first: it makes the room (and, from version 12, its ID).
        let mut create_content = req.creation_content.clone().unwrap_or_default();
        create_content.insert("room_version".into(), version_str.into());
        if !rules.authorization.use_room_create_sender {
            create_content.insert("creator".into(), me.user_id.as_str().into());
        }
        let create = EventDraft::state("m.room.create", "", Value::Object(create_content));
        // Before version 12 the room ID is chosen; from 12 on it is the create event's hash.
        let chosen_id = match rules.room_id_format {
            ruma::room_version_rules::RoomIdFormatVersion::V1 => Some(
                OwnedRoomId::try_from(format!(
                    "!{}:{}",
                    crate::secrets::random_alphanumeric(18),
                    self.config().server_name
                ))
                .map_err(|_| Error::new(ErrorKind::Internal, "bad room ID"))?,
            ),
            _ => None,
        };
        let create_pdu = self
            .build_checked(chosen_id.as_deref(), &version, &me.user_id, &create, &[], 1)
            .await?;
        let room_id = create_pdu.room_id.clone();
        self.store_create(create_pdu, &version).await?;

        let profile = self.store().profile(&me.user_id).await?.unwrap_or_default();
        let mut join = json!({ "membership": "join" });
        if let Some(name) = profile.displayname {
            join["displayname"] = name.into();
        }
        if let Some(url) = profile.avatar_url {
            join["avatar_url"] = url.into();
        }
        let mut drafts = vec![EventDraft::state(
            "m.room.member",
            me.user_id.as_str(),
            join,
        )];

        let mut users = Map::new();
        if !rules.authorization.explicitly_privilege_room_creators {
            users.insert(me.user_id.to_string(), 100.into());
        }
        if preset == "trusted_private_chat" {
            for invitee in &req.invite {
                users.insert(invitee.to_string(), 100.into());
            }
        }
        let mut power_levels = json!({
            "users": users, "users_default": 0, "events_default": 0, "state_default": 50,
            "ban": 50, "kick": 50, "redact": 50, "invite": 0,
            "events": {
                "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
                "m.room.server_acl": 100, "m.room.encryption": 100,
            },
            "notifications": { "room": 50 },
        });
        if let Some(overrides) = req.power_level_content_override {
            for (key, value) in overrides {
                power_levels[key] = value;
            }
        }
        drafts.push(EventDraft::state("m.room.power_levels", "", power_levels));
        if let Some(alias) = &alias {
            drafts.push(EventDraft::state(
                "m.room.canonical_alias",
                "",
                json!({ "alias": alias }),
            ));
        }
        let join_rule = if preset == "public_chat" {
            "public"
        } else {
            "invite"
        };
        drafts.push(EventDraft::state(
            "m.room.join_rules",
            "",
            json!({ "join_rule": join_rule }),
        ));
        drafts.push(EventDraft::state(
            "m.room.history_visibility",
            "",
            json!({ "history_visibility": "shared" }),
        ));
        let guest_access = if preset == "public_chat" {
            "forbidden"
        } else {
            "can_join"
        };
        drafts.push(EventDraft::state(
            "m.room.guest_access",
            "",
            json!({ "guest_access": guest_access }),
        ));
        for state in req.initial_state {
            drafts.push(EventDraft::state(
                &state.kind,
                &state.state_key,
                Value::Object(state.content),
            ));
        }
        if let Some(name) = req.name {
            drafts.push(EventDraft::state(
                "m.room.name",
                "",
                json!({ "name": name }),
            ));
        }
        if let Some(topic) = req.topic {
            drafts.push(EventDraft::state(
                "m.room.topic",
                "",
                json!({ "topic": topic }),
            ));
        }
        for draft in &drafts {
            self.append_event(&room_id, &me.user_id, draft, None)
                .await?;
        }
        if let Some(alias) = alias {
            self.store()
                .create_alias(&alias, &room_id, &me.user_id)
                .await?;
        }
        for invitee in req.invite {
            self.invite(me, &room_id, &invitee, None, req.is_direct)
                .await?;
        }
        Ok(room_id)
    }

    async fn store_create(&self, pdu: super::pdu::Pdu, version: &RoomVersionId) -> Result<()> {
        let event = NewEvent {
            outbound: Vec::new(),
            announce: Vec::new(),
            state_after: crate::store::StateAfter::New {
                parent: None,
                changes: vec![(pdu.kind_str(), String::new(), pdu.event_id.clone())],
            },
            make_current: vec![pdu.event_id.clone()],
            pdu,
            expected_extremities: Vec::new(),
            txn: None,
            creates_room: Some(version.clone()),
        };
        match self.store().append_event(&event).await? {
            AppendOutcome::Appended(_) => Ok(()),
            _ => Err(Error::new(ErrorKind::Internal, "room ID collision")),
        }
    }

    /// Points a local alias at a room (`PUT /directory/room/{alias}`).
    pub async fn create_alias(
        &self,
        me: &Requester,
        alias: &RoomAliasId,
        room_id: &ruma::RoomId,
    ) -> Result<()> {
        if alias.server_name() != self.config().server_name {
            return Err(Error::invalid_param("Alias must be on this server"));
        }
        if self.store().room_version(room_id).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        if self
            .store()
            .create_alias(alias, room_id, &me.user_id)
            .await?
        {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::RoomInUse, "Room alias already taken"))
        }
    }

    /// Resolves an alias (`GET /directory/room/{alias}`).
    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<String>)> {
        let server = alias.server_name();
        if server != self.config().server_name {
            // Another server's alias: that server says where it points.
            let answer = self
                .federation()
                .query_directory(server, alias)
                .await
                .map_err(|e| match e {
                    crate::federation::RemoteError::Status { status: 404, .. } => {
                        Error::not_found("Room alias not found")
                    }
                    e => Error::new(ErrorKind::Unknown, format!("Could not ask {server}: {e}")),
                })?;
            let room_id = answer["room_id"]
                .as_str()
                .and_then(|id| ruma::RoomId::parse(id).ok())
                .ok_or_else(|| {
                    Error::new(ErrorKind::Unknown, format!("{server} gave no room ID"))
                })?;
            let servers = answer["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .filter(|s| ruma::ServerName::parse(s).is_ok())
                .map(str::to_owned)
                .collect();
            return Ok((room_id, servers));
        }
        let (room_id, _) = self
            .store()
            .alias(alias)
            .await?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        Ok((room_id, vec![self.config().server_name.to_string()]))
    }

    /// Removes an alias that the requester created (`DELETE /directory/room/{alias}`).
    pub async fn delete_alias(&self, me: &Requester, alias: &RoomAliasId) -> Result<()> {
        let (_, creator) = self
            .store()
            .alias(alias)
            .await?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        if creator != me.user_id {
            return Err(Error::forbidden("Only the alias's creator may remove it"));
        }
        self.store().delete_alias(alias).await?;
        Ok(())
    }

    /// `GET /_matrix/federation/v1/query/directory`: the room a local alias names and the
    /// servers in it (this one first).
    pub async fn federation_query_directory(
        &self,
        alias: &RoomAliasId,
    ) -> Result<serde_json::Value> {
        if alias.server_name() != self.config().server_name {
            return Err(Error::not_found("Room alias not found"));
        }
        let (room_id, _) = self.resolve_alias(alias).await?;
        let mut servers = vec![self.config().server_name.to_string()];
        for member in self.store().members_with(&room_id, "join").await? {
            let server = member.server_name().to_string();
            if !servers.contains(&server) {
                servers.push(server);
            }
        }
        Ok(serde_json::json!({ "room_id": room_id, "servers": servers }))
    }

    /// The alias as an owned ID (helper for callers holding strings).
    pub fn parse_alias(raw: &str) -> Result<OwnedRoomAliasId> {
        RoomAliasId::parse(raw).map_err(|_| Error::invalid_param("Invalid room alias"))
    }
}
