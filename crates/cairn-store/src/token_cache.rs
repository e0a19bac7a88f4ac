//! Access tokens already resolved, kept in memory on SQLite.
//!
//! Every authenticated request resolves its token, and on SQLite each statement is a hop to a
//! connection's thread; the cache saves that hop. It is used only where one process owns the
//! database (SQLite), so that every deletion of a token passes through this store and clears
//! the cache. Invariant: after a deletion commits and [`TokenCache::forget`] returns, no lookup
//! finds the deleted tokens. A lookup that read the database before the deletion committed
//! carries an older generation and is not kept.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_core::store::TokenOwner;
use ruma::{DeviceId, UserId};

/// Most tokens held; past this the cache starts again empty (it only saves a read).
const MAX_TOKENS: usize = 100_000;

#[derive(Default)]
pub(crate) struct TokenCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every deletion.
    generation: u64,
    /// Token hash to owner.
    owners: HashMap<String, TokenOwner>,
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; it stays usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached owner of `token_hash`, or the generation to pass to [`Self::keep`] after
    /// reading the database.
    pub(crate) fn get(&self, token_hash: &str) -> Result<TokenOwner, u64> {
        let inner = self.lock();
        inner
            .owners
            .get(token_hash)
            .cloned()
            .ok_or(inner.generation)
    }

    /// Keeps what the database said, unless a deletion happened since `generation` was read.
    pub(crate) fn keep(&self, generation: u64, token_hash: &str, owner: &TokenOwner) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.owners.len() >= MAX_TOKENS {
            inner.owners.clear();
        }
        inner.owners.insert(token_hash.to_owned(), owner.clone());
    }

    /// Drops the tokens of `user_id`'s devices (all of them if `device_ids` is `None`); called
    /// after their deletion committed.
    pub(crate) fn forget(&self, user_id: &UserId, device_ids: Option<&[&DeviceId]>) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.owners.retain(|_, owner| {
            owner.user_id != user_id
                || device_ids.is_some_and(|ids| !ids.contains(&owner.device_id.as_ref()))
        });
    }

    /// Records that the device was seen at `now_ms`.
    pub(crate) fn seen(&self, user_id: &UserId, device_id: &DeviceId, now_ms: u64) {
        for owner in self.lock().owners.values_mut() {
            if owner.user_id == user_id && owner.device_id == device_id {
                owner.last_seen_ms = Some(now_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::{device_id, user_id};

    fn owner(device: &DeviceId) -> TokenOwner {
        TokenOwner {
            user_id: user_id!("@a:x").to_owned(),
            device_id: device.to_owned(),
            last_seen_ms: None,
        }
    }

    #[test]
    fn a_read_from_before_a_deletion_is_not_kept() {
        let cache = TokenCache::default();
        let generation = cache.get("t1").unwrap_err();
        cache.forget(user_id!("@a:x"), Some(&[device_id!("D1")]));
        cache.keep(generation, "t1", &owner(device_id!("D1")));
        assert!(cache.get("t1").is_err());
    }

    #[test]
    fn forgetting_a_device_keeps_the_others() {
        let cache = TokenCache::default();
        let generation = cache.get("t1").unwrap_err();
        cache.keep(generation, "t1", &owner(device_id!("D1")));
        cache.keep(generation, "t2", &owner(device_id!("D2")));
        cache.forget(user_id!("@a:x"), Some(&[device_id!("D1")]));
        assert!(cache.get("t1").is_err());
        assert_eq!(cache.get("t2").unwrap().device_id, "D2");
        cache.seen(user_id!("@a:x"), device_id!("D2"), 7);
        assert_eq!(cache.get("t2").unwrap().last_seen_ms, Some(7));
        cache.forget(user_id!("@a:x"), None);
        assert!(cache.get("t2").is_err());
    }
}
