//! The command line: `serve` (default), `load`, `migrate`, `token`.

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::settings::Settings;
use crate::startup::{Application, run_loader, shutdown_signal};
use crate::{auth, store};

/// Analytics ingestion and Discord alerts for the AutoGPT platform.
#[derive(Debug, Parser)]
#[command(name = "analytics-service", version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Move rows from the NATS streams into the database (stream mode), until stopped.
    Load,
    /// Apply the database migrations and exit.
    Migrate,
    /// Print a JWT signed with the configured key, to call the API by hand.
    Token {
        /// The user id (`sub`) the token stands for.
        #[arg(long)]
        user_id: String,
        /// Make the token an admin's (`role: admin`).
        #[arg(long)]
        admin: bool,
        /// How long the token stays valid, e.g. `30m`, `1h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// Runs the chosen command to completion.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            Application::build(&settings)
                .await?
                .run_until(shutdown_signal())
                .await
        }
        Command::Load => run_loader(&settings, shutdown_signal()).await,
        Command::Migrate => {
            let mut database = settings.database.clone();
            database.run_migrations = true;
            let store = store::connect(&database).await?;
            store.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Token {
            user_id,
            admin,
            ttl,
        } => {
            anyhow::ensure!(
                settings.auth.key().is_some(),
                "no JWT key to sign with: set JWT_VERIFY_KEY (JWKS keys are public keys)"
            );
            println!("{}", auth::mint_token(&settings.auth, &user_id, admin, ttl));
            Ok(())
        }
    }
}
