//! `hangar user add|ls|token`: manage users on this machine's index database directly (the
//! server may be running: SQLite's WAL lets both use the file). A new token is printed once.

use anyhow::Context;
use clap::Subcommand;
use hangar_config::Config;
use hangar_store::{NewUser, Store};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user and an API token for them; prints the token once.
    Add {
        /// Unique short name (letters, digits, '-', '_', '.').
        login: String,
        /// Display name (default: the login).
        #[arg(long)]
        name: Option<String>,
        /// Email, for commit attribution.
        #[arg(long)]
        email: Option<String>,
        /// Give admin rights.
        #[arg(long)]
        admin: bool,
        /// Print `{"id", "login", "token"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List users.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: UserCommand, config: &Config) -> anyhow::Result<()> {
    let path = config.data_dir.join("index.db");
    let store = Store::open(&path).with_context(|| format!("opening {}", path.display()))?;
    match cmd {
        UserCommand::Add {
            login,
            name,
            email,
            admin,
            json,
        } => {
            let user = store.create_user(&NewUser {
                name: name.unwrap_or_else(|| login.clone()),
                login,
                email,
                is_admin: admin,
            })?;
            let (_, token) = store.create_token(user.id, "created by hangar user add")?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": user.id, "login": user.login, "token": token.expose()})
                );
            } else {
                println!(
                    "Created {}. Its API token is shown only this once:\n  {}",
                    user.login,
                    token.expose()
                );
            }
        }
        UserCommand::Ls { json } => {
            let users = store.users()?;
            if json {
                println!("{}", serde_json::to_string(&users)?);
            } else {
                for u in users {
                    println!(
                        "{}\t{}{}",
                        u.id,
                        u.login,
                        if u.is_admin { "\tadmin" } else { "" }
                    );
                }
            }
        }
    }
    Ok(())
}
