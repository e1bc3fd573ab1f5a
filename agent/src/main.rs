//! `cadence-agent`: parses flags and hands over to the library.
fn main() -> std::process::ExitCode {
    cadence_agent::cli::main()
}
