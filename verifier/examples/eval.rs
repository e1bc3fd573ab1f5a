//! Runs the production scoring over vectors from `cadence-agent replay` and prints the figures:
//! the research loop behind `cadence-verifier eval`.
//!
//! ```text
//! cargo run --release -p cadence-verifier --example eval -- --vectors /tmp/aalto.jsonl \
//!     --enroll 5 --impostors 100 --min-windows 15
//! cargo run --release -p cadence-verifier --example eval -- --vectors /tmp/balabit.jsonl \
//!     --labels target/cadence-data/balabit/labels_dev.csv
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cadence_verifier::scoring::eval::{
    EvalOptions, PopulationSource, evaluate, read_labels, read_vectors,
};
use cadence_verifier::scoring::{Method, ScoringConfig};
use clap::Parser;

/// Evaluate the scoring on recorded feature vectors.
#[derive(Debug, Parser)]
struct Args {
    /// JSON lines from `cadence-agent replay`.
    #[arg(long)]
    vectors: PathBuf,
    /// Labels file (`filename,is_illegal`): score labelled test sessions.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Enrollment windows per user.
    #[arg(long)]
    enroll: Option<usize>,
    /// Impostor users per genuine user.
    #[arg(long, default_value_t = 100)]
    impostors: usize,
    /// Fewest windows for a user to be evaluated.
    #[arg(long)]
    min_windows: Option<usize>,
    /// scaled_manhattan or plda.
    #[arg(long, default_value = "plda")]
    method: String,
    /// auto, enrolled or cross_fold.
    #[arg(long, default_value = "auto")]
    population: String,
    /// Scoring configuration overrides as JSON (fields of ScoringConfig).
    #[arg(long)]
    config: Option<String>,
    /// Skip the trust model.
    #[arg(long)]
    no_continuous: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also print each feature's between/within-user variance ratio (population of all users'
    /// first `--enroll` windows).
    #[arg(long)]
    fisher: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config: ScoringConfig = match &args.config {
        Some(s) => serde_json::from_str(s)?,
        None => ScoringConfig::default(),
    };
    config.method = serde_json::from_value(serde_json::Value::String(args.method.clone()))
        .map_err(|_| format!("unknown method {:?}", args.method))?;
    let _: Method = config.method;
    let population = match args.population.as_str() {
        "auto" => PopulationSource::Auto,
        "enrolled" => PopulationSource::Enrolled,
        "cross_fold" => PopulationSource::CrossFold,
        other => return Err(format!("unknown population source {other:?}").into()),
    };
    let opts = EvalOptions {
        enroll: args.enroll,
        impostors: args.impostors,
        min_windows: args.min_windows,
        population,
        continuous: !args.no_continuous,
        config,
    };
    let t0 = Instant::now();
    let data = read_vectors(BufReader::new(File::open(&args.vectors)?))?;
    let labels = match &args.labels {
        Some(p) => Some(read_labels(BufReader::new(File::open(p)?))?),
        None => None,
    };
    let t1 = Instant::now();
    if args.fisher {
        print_fisher(&data, &opts)?;
    }
    let report = evaluate(&data, labels.as_ref(), &opts)?;
    let t2 = Instant::now();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for line in report.to_text() {
            println!("{line}");
        }
        println!(
            "(read {:.2} s, evaluated {:.2} s)",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64()
        );
    }
    Ok(())
}

fn print_fisher(
    data: &cadence_verifier::scoring::eval::Dataset,
    opts: &EvalOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    use cadence_verifier::scoring::{Modality, PopulationModel};
    use std::collections::BTreeMap;
    for m in Modality::ALL {
        let mut users: BTreeMap<&str, Vec<cadence_verifier::scoring::Sample>> = BTreeMap::new();
        for w in &data.windows {
            if let (Some(s), Some(x)) = (w.label("subject"), m.sample(&w.vector)) {
                let e = users.entry(s).or_default();
                if e.len() < opts.enroll.unwrap_or(opts.config.enroll_windows(m)) {
                    e.push(x);
                }
            }
        }
        let refs: Vec<&[cadence_verifier::scoring::Sample]> =
            users.values().map(|v| v.as_slice()).collect();
        if let Some(p) = PopulationModel::learn(m, &refs, 2, false)? {
            let mut r = p.fisher_ratios();
            r.sort_by(|a, b| b.1.total_cmp(&a.1));
            println!("{m} between/within variance ratio ({} users):", p.users);
            for (n, v) in r {
                println!("  {n:24} {v:.3}");
            }
        }
    }
    Ok(())
}
