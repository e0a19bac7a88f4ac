//! `cairn`: the Matrix homeserver binary. Parses the command line, loads the configuration and
//! wires the crates together; it holds no homeserver rules itself.

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use clap::{Parser, Subcommand};

use cairn::config::{self, ConfigArgs};
use cairn::serve;

/// glibc's allocator spent about a sixth of a key upload's CPU in malloc and free, much of it
/// consolidating freed chunks; mimalloc's per-thread free lists suit a server's short-lived
/// request buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "A Matrix homeserver that keeps E2EE working across federation outages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Show MSC4081 at work: two servers in this process, a cut link, a message that still
    /// decrypts.
    Demo,
    /// Manage local users (works while the server runs; they share the database).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. Without --password, the password is prompted for (or read from stdin).
    Add {
        /// The localpart (`alice` for `@alice:<server_name>`).
        name: String,
        /// The password.
        #[arg(long)]
        password: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            runtime.block_on(serve::run(config.load()?))
        }
        Command::Demo => runtime.block_on(cairn::demo::run()),
        Command::User {
            command:
                UserCommand::Add {
                    name,
                    password,
                    config,
                },
        } => {
            let password = match password {
                Some(p) => p,
                None => read_password()?,
            };
            runtime.block_on(add_user(config.load()?, &name, password))
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == second, "the passwords differ");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

async fn add_user(config: config::Config, name: &str, password: String) -> anyhow::Result<()> {
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    let serve::Built { hs, store, .. } = serve::homeserver(&config).await?;
    let registered = hs
        .create_account(name, Some(password), None)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))
        .with_context(|| format!("cannot create user {name}"))?;
    println!("Created {}", registered.user_id);
    store.close().await;
    Ok(())
}
