//! The command line, end to end against a Cairn server in this process: two devices log in,
//! one sends, the other syncs and reads the message; state lives in files between commands.

use std::process::Command;

fn cli(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn-client"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_exchange_a_message_through_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = cairn::config::Config {
        server_name: "localhost:8448".into(),
        data_dir: dir.path().join("server"),
        ..cairn::config::Config::default()
    };
    config.registration.open = true;
    config.metrics.enabled = false;
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = cairn::serve::start_on(&config, bind(), bind())
        .await
        .unwrap();
    let base = format!("http://{}", server.client_addr);
    let http = reqwest::Client::new();
    for user in ["alice", "bob"] {
        http.post(format!("{base}/_matrix/client/v3/register"))
            .json(
                &serde_json::json!({ "username": user, "password": "pw", "inhibit_login": true,
                                       "auth": { "type": "m.login.dummy" } }),
            )
            .send()
            .await
            .unwrap();
    }
    let (alice, bob) = (dir.path().join("alice.json"), dir.path().join("bob.json"));
    let (alice, bob) = (alice.to_str().unwrap(), bob.to_str().unwrap());
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&refs)
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let login = run(args(&[
        "login",
        "--homeserver",
        &base,
        "--user",
        "alice",
        "--password",
        "pw",
        "--device",
        "ALICE",
        "--state",
        alice,
    ]))
    .await
    .unwrap();
    assert!(
        login.contains("logged in as @alice:localhost:8448 (ALICE)"),
        "{login}"
    );
    run(args(&[
        "login",
        "--homeserver",
        &base,
        "--user",
        "bob",
        "--password",
        "pw",
        "--device",
        "BOB",
        "--state",
        bob,
    ]))
    .await
    .unwrap();
    let sent = run(args(&[
        "send",
        "--state",
        alice,
        "--to",
        "@bob:localhost:8448",
        "--device",
        "BOB",
        "hello",
        "bob",
    ]))
    .await
    .unwrap();
    assert!(
        sent.contains("new session (key from the owner's server)"),
        "{sent}"
    );
    let synced = run(args(&["sync", "--state", bob])).await.unwrap();
    assert_eq!(synced.trim(), "@alice:localhost:8448: hello bob");
    server.stop().await.unwrap();
}
