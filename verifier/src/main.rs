//! `cadence-verifier`: parses flags, sets up logging, runs one command, maps the result to an
//! exit code. All terminal output goes through [`say`] (stdout) and [`complain`] (stderr).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use cadence_verifier::cli::{self, BaselineCommand, Cli, Command, TokenCommand};
use cadence_verifier::{Error, Verifier, shutdown_signal};
use clap::Parser;
use tracing::level_filters::LevelFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            complain(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            complain(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let settings = cli.settings()?;
    match cli.command {
        Command::Serve { .. } => {
            let verifier = Verifier::start(&settings).await?;
            let s = verifier.startup();
            say(&format!("listening on https://{}", s.addr));
            if let Some(ca) = &s.ca_cert {
                say(&format!("CA certificate: {}", ca.display()));
            }
            say(&format!("verifier public key: {}", s.public_key));
            if let Some(token) = &s.first_token {
                say(&format!("enrollment token: {}", token.expose()));
            }
            verifier.run(shutdown_signal()).await
        }
        Command::Token {
            command: TokenCommand::Create,
        } => {
            let token = cli::token_create(&settings).await?;
            say(token.expose());
            Ok(())
        }
        Command::Devices { json } => {
            for line in cli::devices(&settings, json).await? {
                say(&line);
            }
            Ok(())
        }
        Command::Windows { device, json } => {
            for line in cli::windows(&settings, device, json).await? {
                say(&line);
            }
            Ok(())
        }
        Command::Alerts { json, device } => {
            for line in cli::alerts(&settings, device, json).await? {
                say(&line);
            }
            Ok(())
        }
        Command::Timeline { user, json } => {
            for line in cli::timeline(&settings, &user, json).await? {
                say(&line);
            }
            Ok(())
        }
        Command::Baseline {
            command: BaselineCommand::Reset { user, modality },
        } => {
            for line in cli::baseline_reset(&settings, &user, modality).await? {
                say(&line);
            }
            Ok(())
        }
        Command::Eval {
            vectors,
            enroll,
            impostors,
            min_windows,
            labels,
            json,
        } => {
            // CPU-bound: off the async workers.
            let lines = tokio::task::spawn_blocking(move || {
                cli::eval(
                    &settings,
                    &vectors,
                    enroll,
                    impostors,
                    min_windows,
                    labels.as_deref(),
                    json,
                )
            })
            .await
            .map_err(|e| Error::Corrupt(format!("evaluation task failed: {e}")))??;
            for line in lines {
                say(&line);
            }
            Ok(())
        }
    }
}

/// Logs to stderr; the level comes from `CADENCE_LOG` (`error` … `trace`, default `info`).
fn init_tracing() {
    let level = std::env::var("CADENCE_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The one place that writes command output: a line to stdout, flushed at once so a script
/// (or a test) reading it sees each line while the server runs. A closed stdout is ignored.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Writes an error line to stderr.
fn complain(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}").and_then(|()| err.flush());
}
