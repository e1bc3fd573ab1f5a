//! Evaluation of the production scoring on recorded vectors (`cadence-agent replay` output).
//!
//! Owns the evaluation protocols and the report; runs the very code ingest runs
//! ([`UserProfile`], [`Population`], [`Detector`](super::Detector)), never a copy of it.
//! Reads from any `BufRead` the caller opens and returns an [`EvalReport`]; never prints and
//! never writes.
//!
//! # Protocols
//!
//! * **Per user** (no labels file): for each modality, each user's first `enroll` windows form
//!   the baseline, the user's remaining windows are genuine attempts, and the first window of
//!   each of `impostors` other users is an impostor attempt (TypeNet's protocol on Aalto).
//!   Users with fewer than `min_windows` windows are left out, counted and named in a note.
//!   Population parameters and the normalization cohort come from enrollment windows only:
//!   by default ([`PopulationSource::CrossFold`]) from the *other half* of the users, so no
//!   evaluated user, genuine or impostor, contributed to them; with
//!   [`PopulationSource::Enrolled`] from the enrollment windows of every evaluated user, as the
//!   verifier would have them.
//! * **Labelled sessions** (a labels file `filename,is_illegal`, Balabit's form): each user
//!   enrolls on their `split=training` windows (all, or the first `enroll`); each labelled test
//!   session is scored against the user it claims to be, its score the mean of its windows'
//!   scores. The population comes from the training windows of all users.
//! * **Continuous** (both): the trust model runs over the same windows. Genuine: the user's
//!   windows after enrollment, in order, with baseline adaptation, counting false alerts.
//!   Impostor: from full trust after enrollment, another user's windows (or an illegal
//!   session's) in order until the first alert, counting the key presses or pointer events
//!   consumed (ANIA, Mondal & Bours) and the runs never detected.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use cadence_wire::FeatureVector;
use serde::Serialize;

use super::input::{LabelledVector, Modality, RejectReason, Sample, parse_labelled};
use super::metrics::{auc, eer, far_at_frr, mean_std};
use super::model::Baseline;
use super::profile::{ModalityProfile, Population, UserProfile};
use super::{ScoringConfig, ScoringError};

/// Where the population parameters and the cohort of an evaluation come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PopulationSource {
    /// Cross-fold for the per-user protocol, enrolled users for labelled sessions.
    #[default]
    Auto,
    /// The enrollment windows of every evaluated user.
    Enrolled,
    /// Two folds of users (alternating in file order): each fold is evaluated with parameters
    /// learned on the other fold's enrollment windows.
    CrossFold,
}

/// What to evaluate, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Enrollment windows per user; default: the configuration's count for the modality
    /// (per-user protocol) or every training window (labelled sessions).
    pub enroll: Option<usize>,
    /// Impostor users per genuine user (per-user protocol).
    pub impostors: usize,
    /// Fewest windows a user needs to be evaluated (per-user protocol); default `enroll + 1`.
    pub min_windows: Option<usize>,
    /// Source of population parameters and cohort.
    pub population: PopulationSource,
    /// Whether to run the trust model too.
    pub continuous: bool,
    /// The scoring configuration under test.
    pub config: ScoringConfig,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            enroll: None,
            impostors: 100,
            min_windows: None,
            population: PopulationSource::Auto,
            continuous: true,
            config: ScoringConfig::default(),
        }
    }
}

/// Vectors read for an evaluation, with the count of those refused.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Accepted windows, in file order.
    pub windows: Vec<LabelledVector>,
    /// Non-empty lines read.
    pub lines: usize,
    /// Refused lines per reason.
    pub rejected: BTreeMap<RejectReason, usize>,
    /// The first few refusals, with their line numbers.
    pub rejection_examples: Vec<String>,
}

/// Reads JSON lines of labelled vectors; refused lines are counted, not fatal.
pub fn read_vectors(r: impl BufRead) -> Result<Dataset, ScoringError> {
    let mut ds = Dataset::default();
    for (i, line) in r.lines().enumerate() {
        let line = line.map_err(|e| ScoringError::Input(format!("line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        ds.lines += 1;
        let parsed = parse_labelled(&line).and_then(|lv| {
            if lv.label("subject").is_some() {
                Ok(lv)
            } else {
                Err(super::input::Rejection {
                    reason: RejectReason::Unlabelled,
                    detail: "no subject label".to_owned(),
                })
            }
        });
        match parsed {
            Ok(lv) => ds.windows.push(lv),
            Err(rej) => {
                *ds.rejected.entry(rej.reason).or_default() += 1;
                if ds.rejection_examples.len() < 5 {
                    ds.rejection_examples.push(format!("line {}: {rej}", i + 1));
                }
            }
        }
    }
    Ok(ds)
}

/// Reads a labels file (`filename,is_illegal` with a header): session name → illegal.
pub fn read_labels(r: impl BufRead) -> Result<BTreeMap<String, bool>, ScoringError> {
    let mut out = BTreeMap::new();
    for (i, line) in r.lines().enumerate() {
        let line = line.map_err(|e| ScoringError::Input(format!("labels line {}: {e}", i + 1)))?;
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("filename")) {
            continue;
        }
        let Some((name, flag)) = line.split_once(',') else {
            return Err(ScoringError::Input(format!(
                "labels line {}: expected filename,is_illegal",
                i + 1
            )));
        };
        let illegal = match flag.trim() {
            "1" => true,
            "0" => false,
            other => {
                return Err(ScoringError::Input(format!(
                    "labels line {}: is_illegal must be 0 or 1, got {other:?}",
                    i + 1
                )));
            }
        };
        out.insert(name.trim().to_owned(), illegal);
    }
    Ok(out)
}

/// The figures of one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Non-empty input lines.
    pub lines: usize,
    /// Lines accepted as vectors.
    pub accepted: usize,
    /// Refused lines per reason.
    pub rejected: BTreeMap<String, usize>,
    /// The first few refusals.
    pub rejection_examples: Vec<String>,
    /// The scoring method evaluated.
    pub method: String,
    /// One entry per modality present.
    pub modalities: Vec<ModalityReport>,
}

/// Figures for one modality.
#[derive(Debug, Clone, Serialize)]
pub struct ModalityReport {
    /// The modality.
    pub modality: Modality,
    /// `per_user` or `labelled_sessions`.
    pub protocol: String,
    /// Where population parameters came from, and how many users they saw.
    pub population: String,
    /// Enrollment windows per user (per-user protocol; the mean for labelled sessions).
    pub enroll_windows: f64,
    /// Users evaluated.
    pub users: usize,
    /// Users left out for too few windows.
    pub users_left_out: usize,
    /// Notes for the reader (users left out, fallbacks).
    pub notes: Vec<String>,
    /// Genuine attempts scored (windows, or sessions).
    pub genuine_attempts: usize,
    /// Impostor attempts scored.
    pub impostor_attempts: usize,
    /// Mean of the per-user equal error rates.
    pub eer_mean: Option<f64>,
    /// Standard deviation of the per-user equal error rates.
    pub eer_std: Option<f64>,
    /// Users with a per-user EER (genuine and impostor attempts both present).
    pub eer_users: usize,
    /// Equal error rate with one global threshold over normalized scores.
    pub eer_global: Option<f64>,
    /// Area under the global ROC curve.
    pub auc: Option<f64>,
    /// Global false acceptance at a false rejection of 1%.
    pub far_at_frr_1: Option<f64>,
    /// Global false acceptance at a false rejection of 5%.
    pub far_at_frr_5: Option<f64>,
    /// Mean and spread of the normalized genuine and impostor scores.
    pub genuine_score: Option<(f64, f64)>,
    /// Mean and spread of the normalized impostor scores.
    pub impostor_score: Option<(f64, f64)>,
    /// Trust-model figures.
    pub continuous: Option<ContinuousReport>,
}

/// Trust-model figures (Mondal & Bours' ANGA / ANIA).
#[derive(Debug, Clone, Serialize, Default)]
pub struct ContinuousReport {
    /// Genuine windows scored after enrollment.
    pub genuine_windows: usize,
    /// Alerts raised on genuine windows.
    pub false_alerts: usize,
    /// False alerts per 100 genuine windows.
    pub false_alerts_per_100: f64,
    /// Average number of genuine windows before a false alert (genuine windows / false alerts);
    /// `None` when there was none (it is then above `genuine_windows`).
    pub anga_windows: Option<f64>,
    /// Genuine runs (one per user, or per legal session).
    pub genuine_runs: usize,
    /// Genuine runs with at least one false alert.
    pub genuine_runs_alerted: usize,
    /// Impostor runs (genuine user × impostor stream).
    pub impostor_runs: usize,
    /// Runs that ended with an alert.
    pub detected: usize,
    /// Share of impostor runs detected before the impostor's windows ran out.
    pub detection_rate: f64,
    /// Average key presses or pointer events an impostor made before detection (detected runs).
    pub ania_events: Option<f64>,
    /// Average events over all impostor runs, an undetected run counting every event it had:
    /// a lower bound on ANIA that does not hide the undetected runs.
    pub ania_events_censored: Option<f64>,
    /// Average impostor windows before detection (detected runs).
    pub ania_windows: Option<f64>,
    /// Average events per impostor window fed (for scale).
    pub events_per_window: Option<f64>,
}

/// Runs the evaluation: per-user protocol without labels, labelled sessions with them.
pub fn evaluate(
    data: &Dataset,
    labels: Option<&BTreeMap<String, bool>>,
    opts: &EvalOptions,
) -> Result<EvalReport, ScoringError> {
    opts.config.check()?;
    if opts.enroll.is_some_and(|n| n < 2) {
        return Err(ScoringError::Input(
            "--enroll must be at least 2".to_owned(),
        ));
    }
    let mut modalities = Vec::new();
    for m in Modality::ALL {
        if !data.windows.iter().any(|w| m.raw(&w.vector).is_some()) {
            continue;
        }
        modalities.push(match labels {
            None => per_user(data, m, opts)?,
            Some(l) => labelled(data, l, m, opts)?,
        });
    }
    if modalities.is_empty() {
        return Err(ScoringError::Input(
            "no accepted window carries a keyboard or mouse block".to_owned(),
        ));
    }
    Ok(EvalReport {
        lines: data.lines,
        accepted: data.windows.len(),
        rejected: data
            .rejected
            .iter()
            .map(|(r, n)| (r.name().to_owned(), *n))
            .collect(),
        rejection_examples: data.rejection_examples.clone(),
        method: opts.config.method.name().to_owned(),
        modalities,
    })
}

/// One window of one modality, as the evaluation feeds it.
#[derive(Debug, Clone)]
struct Win {
    /// The vector cut to the one modality, as ingest would see a window of it.
    vector: FeatureVector,
    /// The window as the scorer sees it.
    s: Sample,
}

fn cut(v: &FeatureVector, m: Modality) -> Option<Win> {
    let s = m.sample(v)?;
    let mut vector = v.clone();
    match m {
        Modality::Keyboard => vector.mouse = None,
        Modality::Mouse => vector.keyboard = None,
    }
    Some(Win { vector, s })
}

/// Groups windows by a key, keeping first-appearance order.
fn group<'a, K: Clone + Eq + std::hash::Hash>(
    items: impl Iterator<Item = (K, &'a LabelledVector)>,
    m: Modality,
) -> Vec<(K, Vec<Win>)> {
    let mut index: HashMap<K, usize> = HashMap::new();
    let mut out: Vec<(K, Vec<Win>)> = Vec::new();
    for (k, lv) in items {
        let Some(w) = cut(&lv.vector, m) else {
            continue;
        };
        let i = *index.entry(k.clone()).or_insert_with(|| {
            out.push((k, Vec::new()));
            out.len() - 1
        });
        out[i].1.push(w);
    }
    out
}

/// Per-user accumulators shared by both protocols.
#[derive(Default)]
struct Tally {
    genuine: Vec<f64>,
    impostor: Vec<f64>,
    user_eers: Vec<f64>,
    cont: ContinuousReport,
    impostor_events: u64,
    impostor_windows_detected: u64,
    impostor_windows_fed: u64,
    impostor_events_fed: u64,
}

impl Tally {
    fn user(&mut self, genuine: &[f64], impostor: &[f64]) {
        if let Some(e) = eer(genuine, impostor) {
            self.user_eers.push(e);
        }
        self.genuine.extend_from_slice(genuine);
        self.impostor.extend_from_slice(impostor);
    }

    /// Runs the user's genuine windows through the trust model, from full trust.
    fn genuine_run(
        &mut self,
        start: &UserProfile,
        user: &str,
        wins: &[Win],
        pop: &Population,
        cfg: &ScoringConfig,
    ) -> Result<(), ScoringError> {
        let mut p = start.clone();
        let mut alerts = 0;
        for w in wins {
            let o = p.observe(user, &w.vector, pop, cfg)?;
            self.cont.genuine_windows += usize::from(o.trust.is_some());
            alerts += usize::from(o.alert);
        }
        self.cont.false_alerts += alerts;
        self.cont.genuine_runs += 1;
        self.cont.genuine_runs_alerted += usize::from(alerts > 0);
        Ok(())
    }

    /// Runs an impostor's windows against the user's profile until the first alert.
    fn impostor_run(
        &mut self,
        start: &UserProfile,
        user: &str,
        wins: &[Win],
        pop: &Population,
        cfg: &ScoringConfig,
    ) -> Result<(), ScoringError> {
        let mut p = start.clone();
        let mut events = 0;
        self.cont.impostor_runs += 1;
        for (i, w) in wins.iter().enumerate() {
            let o = p.observe(user, &w.vector, pop, cfg)?;
            events += w.s.events;
            self.impostor_windows_fed += 1;
            self.impostor_events_fed += w.s.events;
            if o.alert {
                self.cont.detected += 1;
                self.impostor_events += events;
                self.impostor_windows_detected += i as u64 + 1;
                break;
            }
        }
        Ok(())
    }

    fn finish(mut self, mut r: ModalityReport, continuous: bool) -> ModalityReport {
        if let Some((m, s)) = mean_std(&self.user_eers) {
            r.eer_mean = Some(m);
            r.eer_std = Some(s);
        }
        r.eer_users = self.user_eers.len();
        r.genuine_attempts = self.genuine.len();
        r.impostor_attempts = self.impostor.len();
        r.eer_global = eer(&self.genuine, &self.impostor);
        r.auc = auc(&self.genuine, &self.impostor);
        r.far_at_frr_1 = far_at_frr(&self.genuine, &self.impostor, 0.01);
        r.far_at_frr_5 = far_at_frr(&self.genuine, &self.impostor, 0.05);
        r.genuine_score = mean_std(&self.genuine);
        r.impostor_score = mean_std(&self.impostor);
        if continuous {
            let c = &mut self.cont;
            if c.genuine_windows > 0 {
                c.false_alerts_per_100 = 100.0 * c.false_alerts as f64 / c.genuine_windows as f64;
            }
            if c.false_alerts > 0 {
                c.anga_windows = Some(c.genuine_windows as f64 / c.false_alerts as f64);
            }
            if c.detected > 0 {
                c.ania_events = Some(self.impostor_events as f64 / c.detected as f64);
                c.ania_windows = Some(self.impostor_windows_detected as f64 / c.detected as f64);
            }
            if self.impostor_windows_fed > 0 {
                c.events_per_window =
                    Some(self.impostor_events_fed as f64 / self.impostor_windows_fed as f64);
            }
            if c.impostor_runs > 0 {
                c.detection_rate = c.detected as f64 / c.impostor_runs as f64;
                c.ania_events_censored =
                    Some(self.impostor_events_fed as f64 / c.impostor_runs as f64);
            }
            r.continuous = Some(self.cont);
        }
        r
    }
}

fn empty_report(m: Modality, protocol: &str) -> ModalityReport {
    ModalityReport {
        modality: m,
        protocol: protocol.to_owned(),
        population: String::new(),
        enroll_windows: 0.0,
        users: 0,
        users_left_out: 0,
        notes: Vec::new(),
        genuine_attempts: 0,
        impostor_attempts: 0,
        eer_mean: None,
        eer_std: None,
        eer_users: 0,
        eer_global: None,
        auc: None,
        far_at_frr_1: None,
        far_at_frr_5: None,
        genuine_score: None,
        impostor_score: None,
        continuous: None,
    }
}

/// A profile enrolled directly on `wins` (the same baseline `observe` builds once it has
/// collected that many windows).
fn enrolled_profile(m: Modality, wins: &[Win]) -> Result<UserProfile, ScoringError> {
    let xs: Vec<Sample> = wins.iter().map(|w| w.s.clone()).collect();
    let mut p = UserProfile::default();
    *p.modality_mut(m) = ModalityProfile::with_baseline(Baseline::enroll(m, &xs)?);
    Ok(p)
}

fn learn_population(
    m: Modality,
    users: &[(&str, &[Win])],
    enroll: usize,
    cfg: &ScoringConfig,
) -> Result<Population, ScoringError> {
    let xs: Vec<(&str, Vec<Sample>)> = users
        .iter()
        .map(|(u, w)| (*u, w.iter().take(enroll).map(|w| w.s.clone()).collect()))
        .collect();
    let refs: Vec<(&str, &[Sample])> = xs.iter().map(|(u, x)| (*u, x.as_slice())).collect();
    let mut pop = Population::default();
    pop.set_modality(m, &refs, cfg)?;
    Ok(pop)
}

fn describe(pop: &Population, m: Modality) -> String {
    match pop.model(m) {
        None => "no population".to_owned(),
        Some(p) => format!(
            "{} users, {} windows, tails {}, spread ∝ events^-{}, {} feature(s) mapped to normal",
            p.users,
            p.windows,
            p.tail_dof
                .map_or("gaussian".to_owned(), |v| format!("student-t nu={v}")),
            p.spread_exponent,
            p.mapped.iter().filter(|m| **m).count()
        ),
    }
}

fn population_note(pop: &Population, m: Modality, cfg: &ScoringConfig) -> Option<String> {
    match pop.model(m) {
        None if cfg.method.needs_population() => Some(format!(
            "too few users for population parameters (fewer than {}): {} fell back to scaled \
             Manhattan",
            cfg.min_population_users,
            cfg.method.name()
        )),
        _ => None,
    }
}

fn per_user(
    data: &Dataset,
    m: Modality,
    opts: &EvalOptions,
) -> Result<ModalityReport, ScoringError> {
    let cfg = &opts.config;
    let enroll = opts.enroll.unwrap_or(cfg.enroll_windows(m));
    let min_windows = opts.min_windows.unwrap_or(enroll + 1).max(enroll + 1);
    let all = group(
        data.windows
            .iter()
            .filter_map(|lv| lv.label("subject").map(|s| (s.to_owned(), lv))),
        m,
    );
    let (users, short): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|(_, w)| w.len() >= min_windows);
    let mut report = empty_report(m, "per_user");
    report.enroll_windows = enroll as f64;
    report.users = users.len();
    report.users_left_out = short.len();
    if !short.is_empty() {
        report.notes.push(format!(
            "{} user(s) left out with fewer than {min_windows} {m} windows",
            short.len()
        ));
    }
    let cross = matches!(
        opts.population,
        PopulationSource::Auto | PopulationSource::CrossFold
    );
    if users.len() < if cross { 4 } else { 2 } {
        report
            .notes
            .push(format!("too few users with enough {m} windows to evaluate"));
        return Ok(report);
    }
    let folds: Vec<(Vec<usize>, Vec<usize>)> = if cross {
        let a: Vec<usize> = (0..users.len()).step_by(2).collect();
        let b: Vec<usize> = (1..users.len()).step_by(2).collect();
        vec![(a.clone(), b.clone()), (b, a)]
    } else {
        let all: Vec<usize> = (0..users.len()).collect();
        vec![(all.clone(), all)]
    };
    let mut tally = Tally::default();
    let mut pop_desc = Vec::new();
    for (eval_idx, pop_idx) in folds {
        let pop_users: Vec<(&str, &[Win])> = pop_idx
            .iter()
            .map(|&i| (users[i].0.as_str(), users[i].1.as_slice()))
            .collect();
        let pop = learn_population(m, &pop_users, enroll, cfg)?;
        pop_desc.push(describe(&pop, m));
        if let Some(n) = population_note(&pop, m, cfg) {
            report.notes.push(n);
        }
        let k = opts.impostors.min(eval_idx.len() - 1);
        for (pos, &i) in eval_idx.iter().enumerate() {
            let (name, wins) = (&users[i].0, &users[i].1);
            let mut start = enrolled_profile(m, &wins[..enroll])?;
            // Compiled once here; the continuous runs' clones of `start` carry it.
            let Some(det) = start.modality_mut(m).detector(m, name, &pop, cfg)?.cloned() else {
                continue;
            };
            let genuine = wins[enroll..]
                .iter()
                .map(|w| det.score(&w.s))
                .collect::<Result<Vec<f64>, _>>()?;
            let impostor_users: Vec<usize> = (1..=k)
                .map(|j| eval_idx[(pos + j) % eval_idx.len()])
                .collect();
            let impostor = impostor_users
                .iter()
                .map(|&j| det.score(&users[j].1[0].s))
                .collect::<Result<Vec<f64>, _>>()?;
            tally.user(&genuine, &impostor);
            if opts.continuous {
                tally.genuine_run(&start, name, &wins[enroll..], &pop, cfg)?;
                for &j in &impostor_users {
                    tally.impostor_run(&start, name, &users[j].1, &pop, cfg)?;
                }
            }
        }
    }
    report.population = if cross {
        format!(
            "cross-fold: learned on the other half's enrollment windows ({}; {})",
            pop_desc[0], pop_desc[1]
        )
    } else {
        format!(
            "enrolled: learned on every evaluated user's enrollment windows ({})",
            pop_desc[0]
        )
    };
    Ok(tally.finish(report, opts.continuous))
}

fn labelled(
    data: &Dataset,
    labels: &BTreeMap<String, bool>,
    m: Modality,
    opts: &EvalOptions,
) -> Result<ModalityReport, ScoringError> {
    let cfg = &opts.config;
    let mut report = empty_report(m, "labelled_sessions");
    let training = group(
        data.windows.iter().filter_map(|lv| {
            (lv.label("split") == Some("training"))
                .then(|| lv.label("subject").map(|s| (s.to_owned(), lv)))
                .flatten()
        }),
        m,
    );
    let sessions = group(
        data.windows.iter().filter_map(|lv| {
            if lv.label("split") == Some("training") {
                return None;
            }
            Some((
                (
                    lv.label("subject")?.to_owned(),
                    lv.label("session")?.to_owned(),
                ),
                lv,
            ))
        }),
        m,
    );
    let enroll_of = |w: &[Win]| opts.enroll.map_or(w.len(), |n| n.min(w.len()));
    let (users, short): (Vec<_>, Vec<_>) =
        training.into_iter().partition(|(_, w)| enroll_of(w) >= 2);
    report.users = users.len();
    report.users_left_out = short.len();
    if !short.is_empty() {
        report.notes.push(format!(
            "{} user(s) left out with fewer than 2 training {m} windows",
            short.len()
        ));
    }
    if users.is_empty() {
        report
            .notes
            .push(format!("no user has training {m} windows (split=training)"));
        return Ok(report);
    }
    let enrolled: Vec<(&str, &[Win])> = users
        .iter()
        .map(|(u, w)| (u.as_str(), &w[..enroll_of(w)]))
        .collect();
    report.enroll_windows =
        enrolled.iter().map(|(_, w)| w.len()).sum::<usize>() as f64 / enrolled.len() as f64;
    if opts.population == PopulationSource::CrossFold {
        report.notes.push(
            "cross-fold population is not used with labelled sessions: learned on every \
             user's training windows"
                .to_owned(),
        );
    }
    let pop = learn_population(m, &enrolled, usize::MAX, cfg)?;
    report.population = format!(
        "enrolled: learned on every user's training windows ({})",
        describe(&pop, m)
    );
    if let Some(n) = population_note(&pop, m, cfg) {
        report.notes.push(n);
    }
    let mut tally = Tally::default();
    let mut unlabelled = 0;
    let mut unknown_user = 0;
    let mut starts: HashMap<&str, UserProfile> = HashMap::new();
    for (u, w) in &enrolled {
        let mut p = enrolled_profile(m, w)?;
        p.modality_mut(m).detector(m, u, &pop, cfg)?;
        starts.insert(u, p);
    }
    let mut per_user: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for ((user, session), wins) in &sessions {
        let Some(&illegal) = labels.get(session) else {
            unlabelled += 1;
            continue;
        };
        let Some(start) = starts.get(user.as_str()) else {
            unknown_user += 1;
            continue;
        };
        let Some(det) = start.modality(m).compiled() else {
            continue;
        };
        let scores = wins
            .iter()
            .map(|w| det.score(&w.s))
            .collect::<Result<Vec<f64>, _>>()?;
        let s = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        let entry = per_user.entry(user.as_str()).or_default();
        if illegal {
            entry.1.push(s);
        } else {
            entry.0.push(s);
        }
        if opts.continuous {
            if illegal {
                tally.impostor_run(start, user, wins, &pop, cfg)?;
            } else {
                tally.genuine_run(start, user, wins, &pop, cfg)?;
            }
        }
    }
    for (g, i) in per_user.values() {
        if !g.is_empty() && !i.is_empty() {
            tally.user(g, i);
        } else {
            tally.genuine.extend_from_slice(g);
            tally.impostor.extend_from_slice(i);
        }
    }
    let seen: std::collections::BTreeSet<&str> =
        sessions.iter().map(|((_, s), _)| s.as_str()).collect();
    let missing = labels.keys().filter(|k| !seen.contains(k.as_str())).count();
    if missing > 0 {
        report.notes.push(format!(
            "{missing} labelled session(s) have no {m} window in the vectors (shorter than the \
             window minimum?) and are left out"
        ));
    }
    if unlabelled > 0 {
        report.notes.push(format!(
            "{unlabelled} test session(s) without a label skipped"
        ));
    }
    if unknown_user > 0 {
        report.notes.push(format!(
            "{unknown_user} labelled session(s) of users without training windows skipped"
        ));
    }
    Ok(tally.finish(report, opts.continuous))
}

impl EvalReport {
    /// The report as lines of text for a terminal.
    pub fn to_text(&self) -> Vec<String> {
        let pct = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{:.2}%", 100.0 * v));
        let num = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
        let mut out = Vec::new();
        let rejected: usize = self.rejected.values().sum();
        out.push(format!(
            "vectors: {} lines, {} accepted, {} rejected{}",
            self.lines,
            self.accepted,
            rejected,
            if rejected > 0 {
                format!(
                    " ({})",
                    self.rejected
                        .iter()
                        .map(|(r, n)| format!("{r}: {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            }
        ));
        for e in &self.rejection_examples {
            out.push(format!("  rejected {e}"));
        }
        out.push(format!("method: {}", self.method));
        for r in &self.modalities {
            out.push(String::new());
            out.push(format!(
                "{} ({}): {} users, {} left out; enrollment {:.0} windows",
                r.modality,
                r.protocol.replace('_', " "),
                r.users,
                r.users_left_out,
                r.enroll_windows
            ));
            if !r.population.is_empty() {
                out.push(format!("  population: {}", r.population));
            }
            for n in &r.notes {
                out.push(format!("  note: {n}"));
            }
            out.push(format!(
                "  attempts: {} genuine, {} impostor",
                r.genuine_attempts, r.impostor_attempts
            ));
            out.push(format!(
                "  per-user EER: mean {} std {} ({} users)",
                pct(r.eer_mean),
                pct(r.eer_std),
                r.eer_users
            ));
            out.push(format!(
                "  global: EER {}  ROC AUC {}  FAR at FRR 1% {}  FAR at FRR 5% {}",
                pct(r.eer_global),
                r.auc.map_or("n/a".to_owned(), |v| format!("{v:.4}")),
                pct(r.far_at_frr_1),
                pct(r.far_at_frr_5)
            ));
            if let (Some(g), Some(i)) = (r.genuine_score, r.impostor_score) {
                out.push(format!(
                    "  scores: genuine {:.2} ± {:.2}, impostor {:.2} ± {:.2}",
                    g.0, g.1, i.0, i.1
                ));
            }
            if let Some(c) = &r.continuous {
                let unit = match r.modality {
                    Modality::Keyboard => "keystrokes",
                    Modality::Mouse => "mouse events",
                };
                out.push(format!(
                    "  continuous: {} false alerts in {} genuine windows ({:.2} per 100; \
                     ANGA {} windows; {} of {} genuine runs alerted)",
                    c.false_alerts,
                    c.genuine_windows,
                    c.false_alerts_per_100,
                    c.anga_windows
                        .map_or(format!("> {}", c.genuine_windows), |v| format!("{v:.1}")),
                    c.genuine_runs_alerted,
                    c.genuine_runs,
                ));
                out.push(format!(
                    "  continuous: {}/{} impostor runs detected ({}); ANIA {} {unit} over \
                     detected runs ({} windows), {} counting undetected runs in full \
                     ({} {unit} per window)",
                    c.detected,
                    c.impostor_runs,
                    pct(Some(c.detection_rate)),
                    num(c.ania_events),
                    num(c.ania_windows),
                    num(c.ania_events_censored),
                    num(c.events_per_window),
                ));
            }
        }
        out
    }
}
