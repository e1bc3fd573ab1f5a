//! `cadence-installer`: parses flags and hands over to the library.
//!
//! ```text
//! cadence-installer check [--root DIR]
//! cadence-installer package deb|pkg|msi --out DIR [--no-build] [--agent FILE] [--managed FILE]
//! ```
//! Exit status: 0 done, 1 the templates fail the check, 3 a tool this format needs is missing
//! here, 2 anything else.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use cadence_installer::{Format, PackageError, PackageOptions, check, default_root, package};
use clap::{Parser, Subcommand, ValueEnum};

/// Builds Cadence's install packages and checks every MDM template.
#[derive(Debug, Parser)]
#[command(name = "cadence-installer", version, about, long_about = None)]
struct Cli {
    /// The repository root (default: the one this installer was built from).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check every template: XML and property lists parse, every configuration key they set
    /// exists, and the configuration each produces is valid.
    Check,
    /// Build a package where this platform's tools exist (the .deb on Linux).
    Package {
        /// deb, pkg or msi.
        #[arg(value_enum)]
        format: Fmt,
        /// Directory to write the package to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Package the agent already built with `cargo build --release` instead of building.
        #[arg(long)]
        no_build: bool,
        /// The agent binary to package (pkg, msi).
        #[arg(long, value_name = "FILE")]
        agent: Option<PathBuf>,
        /// A managed configuration to include in the package (pkg).
        #[arg(long, value_name = "FILE")]
        managed: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Fmt {
    Deb,
    Pkg,
    Msi,
}

fn say(to_stderr: bool, msg: &str) {
    let _ = if to_stderr {
        writeln!(io::stderr().lock(), "{msg}")
    } else {
        writeln!(io::stdout().lock(), "{msg}")
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli.root.unwrap_or_else(default_root);
    match cli.command {
        Cmd::Check => {
            let r = check(&root);
            if r.problems.is_empty() {
                say(false, &format!("{} templates ok", r.checked.len()));
                ExitCode::SUCCESS
            } else {
                for p in &r.problems {
                    say(true, p);
                }
                say(true, &format!("{} problems", r.problems.len()));
                ExitCode::from(1)
            }
        }
        Cmd::Package {
            format,
            out,
            no_build,
            agent,
            managed,
        } => {
            let format = match format {
                Fmt::Deb => Format::Deb,
                Fmt::Pkg => Format::Pkg,
                Fmt::Msi => Format::Msi,
            };
            let opts = PackageOptions {
                no_build,
                agent,
                managed,
            };
            match package(&root, format, &out, &opts) {
                Ok(p) => {
                    say(false, &p.display().to_string());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say(true, &format!("cadence-installer: {e}"));
                    ExitCode::from(match e {
                        PackageError::MissingTool { .. } => 3,
                        PackageError::Templates(_) => 1,
                        PackageError::Failed(_) => 2,
                    })
                }
            }
        }
    }
}
