//! Waking long-polling `/sync` requests when something concerns their user.
//!
//! A sync takes a [`Notifier::listener`] *before* it reads the store, then waits on it only if it
//! found nothing; a change committed in between still wakes it, so no wake-up is lost.
//! [`LocalNotifier`] covers one process. (Processes sharing a PostgreSQL database do not see
//! each other's wake-ups yet; their long-polls then end at the client's timeout.)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

/// A future that completes when the user is notified or the timeout passes.
pub type Listener = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Wakes waiting syncs.
pub trait Notifier: Send + Sync + 'static {
    /// Wakes every listener of these users.
    fn notify(&self, users: &[&UserId]);
    /// A listener for `user` that gives up after `timeout`.
    fn listener(&self, user: &UserId, timeout: Duration) -> Listener;
}

/// In-process notifier: one version counter per user that has a listener.
#[derive(Default)]
pub struct LocalNotifier {
    users: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
}

impl LocalNotifier {
    /// A notifier with no listeners.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Notifier for LocalNotifier {
    fn notify(&self, users: &[&UserId]) {
        let mut map = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for user in users {
            if let Some(sender) = map.get(*user) {
                sender.send_modify(|v| *v += 1);
                if sender.receiver_count() == 0 {
                    map.remove(*user);
                }
            }
        }
    }

    fn listener(&self, user: &UserId, timeout: Duration) -> Listener {
        let mut receiver = {
            let mut map = self.users.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(user.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        Box::pin(async move {
            let _ = tokio::time::timeout(timeout, receiver.changed()).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::user_id;

    #[tokio::test]
    async fn a_notification_after_the_listener_was_taken_wakes_it() {
        let notifier = LocalNotifier::new();
        let listener = notifier.listener(user_id!("@a:x"), Duration::from_secs(30));
        notifier.notify(&[user_id!("@b:x"), user_id!("@a:x")]);
        tokio::time::timeout(Duration::from_secs(5), listener)
            .await
            .expect("woken, not timed out");
    }

    #[tokio::test(start_paused = true)]
    async fn listeners_give_up_after_their_timeout() {
        let notifier = LocalNotifier::new();
        let started = tokio::time::Instant::now();
        notifier
            .listener(user_id!("@a:x"), Duration::from_millis(500))
            .await;
        assert!(started.elapsed() >= Duration::from_millis(500));
        notifier.notify(&[user_id!("@a:x")]); // no listener left: the entry is dropped
        assert!(notifier.users.lock().unwrap().is_empty());
    }
}
