//! `cairn user add`, including while the server runs on the same database.

use crate::both_backends;
use crate::harness::{Backend, TestServer};

both_backends!(user_add_creates_a_user_the_running_server_sees);

async fn user_add_creates_a_user_the_running_server_sees(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let out = server
        .cli(&["user", "add", "Carol", "--password", "pw1"], "")
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Created @carol:localhost:8448"
    );
    // Without --password, a non-terminal stdin supplies it.
    let out = server.cli(&["user", "add", "dan"], "pw2\n").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let c = server.client();
    c.login("carol", "pw1", None).await.ok();
    c.login("dan", "pw2", None).await.ok();

    let taken = server
        .cli(&["user", "add", "carol", "--password", "x"], "")
        .await;
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already taken"));
    let invalid = server
        .cli(&["user", "add", "bad name", "--password", "x"], "")
        .await;
    assert!(!invalid.status.success());
}
