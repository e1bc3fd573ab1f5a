//! Scoring: how much each window looks like its user, and whether a run of windows that do
//! not should raise an alert.
//!
//! Owns, per user and modality, the baseline learned from the first windows ([`Baseline`]),
//! the per-window score ([`Detector`]), the population parameters learned at run time from all
//! enrolled users ([`Population`]), the dynamic trust level ([`Trust`]) and the evaluation of
//! all of it on recorded vectors ([`eval`]). [`UserProfile`] ties them together the way the
//! verifier runs them: enroll, score, move trust, alert, adapt.
//!
//! Pure: no database, no network, no clock, no printing. Hands on numbers and serde values for
//! the verifier to store and show. Never scores a refused vector (unknown schema, missing or
//! non-finite feature) as zeros: it is rejected with its [`RejectReason`] and counted. Never
//! ships parameters learned from research data: the population comes from the verifier's own
//! users, and with too few of them each baseline falls back to a per-user scaled distance.
//!
//! # The score
//!
//! Features are moved into a log scale ([`input::transform`]). With a population, a window's
//! raw score is the log-likelihood ratio of a two-covariance (PLDA) model with Student-t tails
//! ([`Method::Plda`]): "a window of this user" (the user's mean as far as the enrollment
//! windows pin it down, the population's within-user spread around it) against "a window of a
//! random user" (the population's spread). The population may also map each feature through
//! its own marginal distribution onto a normal one (it keeps the mapping only when that
//! separates its own users better), and the within-user spread shrinks with the window's
//! event count as a power law fitted on the population ([`population`]). Two anchors then
//! calibrate it per user ([`Detector::normalize`], [`Detector::calibrate`]): 0 is the median
//! score of a cohort of other users' enrollment windows against this baseline, 1 the mean
//! score of the user's own enrollment windows, each against a baseline enrolled without it.
//! So one set of trust parameters serves every user and both modalities: 0.5 is halfway
//! between "typical other person" and "typical self". Keyboard and mouse scores of one window
//! are fused by their mean.
//! Without a population (too few users) the raw score is Killourhy & Maxion's scaled
//! Manhattan distance, calibrated the same way when there is a cohort.
//!
//! # Using it (ingest)
//!
//! ```text
//! population = Population::learn(&[(user, enrollment windows)], &config, generation)
//!     // again whenever the set of enrolled users changes; store it as JSON
//! profile = UserProfile (stored as JSON per user and device)
//! observation = profile.observe(user, &vector, &population, &config)?
//!     // enrolls, scores, moves trust, adapts; observation.alert raises an alert
//! profile.reset_baseline(modality)   // an administrator's reset
//! ```
//!
//! # Cost
//!
//! Scoring a window is a binary search per mapped feature among 100 quantiles, one d×d
//! product (59² multiply-adds for the keyboard, 38² for the mouse) and O(d) more;
//! `cargo bench -p cadence-verifier --bench scoring` prints windows per second on one core.
//! Compiling a detector (enrollment, adaptation, a new population) also scores the cohort and
//! the leave-one-out enrollment windows, a few hundred microseconds. Learning a population
//! fits two candidate models and, for each, up to nine tail choices, each scoring up to about
//! 800 of its own windows (leave-one-out baselines) against other users' to choose between
//! them: a few seconds for a population of 500 users or of 10 users with a thousand windows
//! each.

pub mod eval;
pub mod input;
mod linalg;
pub mod metrics;
pub mod model;
pub mod population;
pub mod profile;
#[cfg(test)]
mod tests;
pub mod trust;

use serde::{Deserialize, Serialize};

pub use input::{Modality, RejectReason, Rejection, Sample};
pub use model::{Baseline, Detector, Method, Norm};
pub use population::PopulationModel;
pub use profile::{Observation, Population, UserProfile};
pub use trust::{Trust, TrustConfig, TrustStep};

/// Why scoring could not proceed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScoringError {
    /// A feature block has another length than this build's schema: a population or baseline
    /// stored by a build with another feature list.
    #[error("{modality} block has {got} features, expected {expected}")]
    Dimension {
        /// The modality concerned.
        modality: Modality,
        /// This build's feature count.
        expected: usize,
        /// What was found.
        got: usize,
    },
    /// Too few windows to learn from (a baseline needs at least two).
    #[error("{modality}: {got} windows, at least {needed} needed")]
    TooFewWindows {
        /// The modality concerned.
        modality: Modality,
        /// Windows required.
        needed: usize,
        /// Windows available.
        got: usize,
    },
    /// Stored population parameters were learned on another feature list.
    #[error("{modality} population was learned on another feature schema")]
    PopulationSchema {
        /// The modality concerned.
        modality: Modality,
    },
    /// A covariance is not positive definite: every window identical, or corrupt parameters.
    #[error("{modality} statistics are degenerate (a covariance is not positive definite)")]
    Degenerate {
        /// The modality concerned.
        modality: Modality,
    },
    /// Configuration values out of range, each named with its field.
    #[error("invalid scoring configuration:\n  - {}", problems.join("\n  - "))]
    Config {
        /// One line per problem: `field: what is wrong`.
        problems: Vec<String>,
    },
    /// The window was refused before scoring (unknown schema, missing or non-finite feature).
    #[error("window refused: {0}")]
    Rejected(Rejection),
    /// The evaluation input could not be read or holds nothing to evaluate.
    #[error("evaluation input: {0}")]
    Input(String),
}

/// Scoring parameters. Every field has a default; a configuration file sets only what it
/// changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    /// How windows are compared with a baseline.
    pub method: Method,
    /// Keyboard windows that form a user's baseline.
    pub keyboard_enroll_windows: usize,
    /// Mouse windows that form a user's baseline.
    pub mouse_enroll_windows: usize,
    /// Fewest enrolled users (per modality) to learn population parameters from; below it,
    /// every baseline uses the per-user scaled distance.
    pub min_population_users: usize,
    /// Whether the PLDA score uses Student-t tails fitted to the population (else Gaussian).
    pub student_t: bool,
    /// Other users' windows held as the normalization cohort.
    pub cohort_windows: usize,
    /// Fewest cohort windows to normalize with; below it scores stay raw.
    pub min_cohort_windows: usize,
    /// Floor on a user's genuine level (in cohort standard deviations) when calibrating: a
    /// user whose own windows score less than this above other people's is calibrated as if
    /// they scored this much, rather than having noise magnified.
    pub min_genuine_level: f64,
    /// Adaptation keeps roughly this many windows' worth of history in the baseline.
    pub memory_windows: f64,
    /// A window whose calibrated score is at least this updates the baseline (confidently
    /// genuine); windows below never do.
    pub adapt_above: f64,
    /// ... and only while the trust level, after the window, is at least this.
    pub adapt_min_trust: f64,
    /// The dynamic trust parameters.
    pub trust: TrustConfig,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig {
            method: Method::Plda,
            keyboard_enroll_windows: 5,
            mouse_enroll_windows: 20,
            min_population_users: 8,
            student_t: true,
            cohort_windows: 200,
            min_cohort_windows: 20,
            min_genuine_level: 0.5,
            memory_windows: 50.0,
            adapt_above: 0.75,
            adapt_min_trust: 100.0,
            trust: TrustConfig::default(),
        }
    }
}

impl ScoringConfig {
    /// Enrollment windows for a modality.
    pub fn enroll_windows(&self, m: Modality) -> usize {
        match m {
            Modality::Keyboard => self.keyboard_enroll_windows,
            Modality::Mouse => self.mouse_enroll_windows,
        }
    }

    /// Checks every value, naming each problem.
    pub fn check(&self) -> Result<(), ScoringError> {
        let mut problems = Vec::new();
        if self.keyboard_enroll_windows < 2 {
            problems.push("keyboard_enroll_windows: must be at least 2".to_owned());
        }
        if self.mouse_enroll_windows < 2 {
            problems.push("mouse_enroll_windows: must be at least 2".to_owned());
        }
        if !(self.memory_windows.is_finite() && self.memory_windows >= 2.0) {
            problems.push("memory_windows: must be a number of at least 2".to_owned());
        }
        if !(self.min_genuine_level.is_finite() && self.min_genuine_level > 0.0) {
            problems.push("min_genuine_level: must be a number above 0".to_owned());
        }
        if self.adapt_above.is_nan() {
            problems.push("adapt_above: must be a number".to_owned());
        }
        if !(0.0..=100.0).contains(&self.adapt_min_trust) {
            problems.push("adapt_min_trust: must be in [0, 100]".to_owned());
        }
        if let Err(ScoringError::Config { problems: p }) = self.trust.check() {
            problems.extend(p);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ScoringError::Config { problems })
        }
    }
}
