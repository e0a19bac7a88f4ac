//! Which users' device lists a user must re-query: `device_lists.changed`/`left` in `/sync` and
//! `GET /keys/changes`.
//!
//! Changed: users sharing a room with me (and I) whose devices changed, users who joined a room
//! I am in, and everyone in a room I joined. Left: users who, after a leave, kick or ban in the
//! range, share no room with me any more.

use std::collections::BTreeSet;

use ruma::{OwnedUserId, UserId};

use crate::Homeserver;
use crate::error::Result;

/// The delta of a user's tracked device lists over a range of the stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceListDelta {
    /// Users to re-query.
    pub changed: Vec<OwnedUserId>,
    /// Users to stop tracking.
    pub left: Vec<OwnedUserId>,
}

impl Homeserver {
    /// The device-list delta for `me` over `(after, up_to]`.
    pub async fn device_list_delta(
        &self,
        me: &UserId,
        after: u64,
        up_to: u64,
    ) -> Result<DeviceListDelta> {
        let store = self.store();
        let mut changed: BTreeSet<OwnedUserId> = store
            .device_list_changes(me, after, up_to)
            .await?
            .into_iter()
            .collect();
        let mut departed: BTreeSet<OwnedUserId> = BTreeSet::new();
        let joined_now: BTreeSet<_> = store
            .memberships(me)
            .await?
            .into_iter()
            .filter(|m| m.membership == "join")
            .map(|m| m.room_id)
            .collect();
        for (room_id, user, membership) in store.membership_changes(me, after, up_to).await? {
            match (membership.as_str(), user == me) {
                ("join", false) if joined_now.contains(&room_id) => {
                    changed.insert(user);
                }
                ("join", true) if joined_now.contains(&room_id) => {
                    changed.extend(store.members_with(&room_id, "join").await?);
                }
                ("leave" | "ban", false) => {
                    departed.insert(user);
                }
                ("leave" | "ban", true) => {
                    departed.extend(store.members_with(&room_id, "join").await?);
                }
                _ => {}
            }
        }
        let mut left = Vec::new();
        for user in departed {
            if user != me && !store.share_a_room(me, &user).await? {
                changed.remove(&user);
                left.push(user);
            }
        }
        changed.retain(|u| u == me || !left.contains(u));
        Ok(DeviceListDelta {
            changed: changed.into_iter().collect(),
            left,
        })
    }
}
