//! `cairn-client`: the reference MSC4081 client from the command line. Each command loads the
//! device's state from `--state FILE` (written by `login`) and saves it again.
//!
//! ```text
//! cairn-client login --homeserver URL --user NAME --password PW --device ID --state FILE
//! cairn-client sync  --state FILE [--timeout MS]
//! cairn-client send  --state FILE --to @user:server --device ID TEXT
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_client::SystemClock;
use cairn_client::client::{Client, KeySource};

const USAGE: &str = "usage:
  cairn-client login --homeserver URL --user NAME --password PW --device ID --state FILE
  cairn-client sync  --state FILE [--timeout MS]
  cairn-client send  --state FILE --to @user:server --device ID TEXT";

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(err) = runtime.block_on(run()) {
        eprintln!("cairn-client: {err}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let command = args.next().ok_or(USAGE)?;
    let mut flags = BTreeMap::new();
    let mut rest = Vec::new();
    while let Some(arg) = args.next() {
        match arg.strip_prefix("--") {
            Some(flag) => {
                let value = args
                    .next()
                    .ok_or(format!("--{flag} needs a value\n{USAGE}"))?;
                flags.insert(flag.to_owned(), value);
            }
            None => rest.push(arg),
        }
    }
    let flag = |name: &str| {
        flags
            .get(name)
            .cloned()
            .ok_or(format!("--{name} is required\n{USAGE}"))
    };
    let clock = Arc::new(SystemClock);
    let state = PathBuf::from(flag("state")?);
    match command.as_str() {
        "login" => {
            let mut client = Client::login(
                &flag("homeserver")?,
                &flag("user")?,
                &flag("password")?,
                &flag("device")?,
                clock,
            )
            .await
            .map_err(|e| e.to_string())?;
            client.save_to(state).map_err(|e| e.to_string())?;
            println!(
                "logged in as {} ({}); fallback key {} shared with eager_share_fallback_keys",
                client.user_id(),
                client.device_id(),
                client.device().current_fallback_key().unwrap_or("-")
            );
        }
        "sync" => {
            let mut client = Client::load(state, clock).map_err(|e| e.to_string())?;
            let timeout = flags
                .get("timeout")
                .map_or(Ok(0), |t| t.parse())
                .map_err(|e| format!("--timeout: {e}"))?;
            for message in client.sync(timeout).await.map_err(|e| e.to_string())? {
                match message.text {
                    Ok(text) => println!("{}: {text}", message.sender),
                    Err(why) => println!("{}: (unable to decrypt: {why})", message.sender),
                }
            }
        }
        "send" => {
            let mut client = Client::load(state, clock).map_err(|e| e.to_string())?;
            let text = rest.join(" ");
            let source = client
                .send(&flag("to")?, &flag("device")?, &text, 10_000)
                .await
                .map_err(|e| e.to_string())?;
            match source {
                KeySource::Session => println!("sent on the existing session"),
                KeySource::Owner => println!("sent on a new session (key from the owner's server)"),
                KeySource::Cached(reason) => {
                    println!(
                        "sent on a new session (key from this server's MSC4081 cache: {reason})"
                    )
                }
            }
        }
        _ => return Err(USAGE.to_owned()),
    }
    Ok(())
}
