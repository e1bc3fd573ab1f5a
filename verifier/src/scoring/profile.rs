//! The verifier's per-user scoring state and the shared population, as ingest runs them.
//!
//! Owns the life of one user's scoring: enrollment of each modality from its first windows,
//! per-window scores, fusion of keyboard and mouse, the trust level and its alerts, slow
//! adaptation of a baseline to genuine drift, and an administrator's reset. Also owns
//! [`Population`]: the parameters learned from all users' enrollment windows, plus a cohort of
//! those windows for score normalization.
//!
//! Never moves trust on an uncalibrated score: until the population holds enough other users'
//! windows to normalize a user's scores ([`ScoringConfig::min_cohort_windows`]), windows are
//! scored and reported but the trust level stays where it is (and so no alert is raised).
//! Never lets a window adapt a baseline unless it scored confidently genuine
//! ([`ScoringConfig::adapt_above`]) while the trust level stayed high
//! ([`ScoringConfig::adapt_min_trust`]): an impostor's lucky window right after the genuine
//! user left moves a baseline by one window's weight at most, and no further once their other
//! windows have cost trust.
//!
//! # Stored forms (JSON)
//!
//! [`Population`]: `generation` (bumped by the verifier on each re-learn), `schema` (the
//! feature schema it was learned under; [`Population::check`] refuses another one or none,
//! since the same names can carry values of another definition), `keyboard` and `mouse`
//! ([`PopulationModel`] or null), `keyboard_cohort` and `mouse_cohort` (lists of
//! `{user, sample: {x, events}}`, `x` in scoring space). [`UserProfile`]: `keyboard` and
//! `mouse` (each `{pending, baseline, schema}`: enrollment [`Sample`]s collected so far, then
//! the [`Baseline`], and the schema they were collected under), and `trust` (`{level}`). Compiled detectors are a cache, never stored; they
//! are rebuilt when the population's generation changes.

use cadence_wire::FeatureVector;
use serde::{Deserialize, Serialize};

use super::input::{Modality, Sample, check};
use super::model::{Baseline, Detector};
use super::population::PopulationModel;
use super::trust::{Trust, TrustStep};
use super::{ScoringConfig, ScoringError};

/// One of another user's windows, kept to normalize scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortWindow {
    /// Opaque key of the user the window belongs to (so a user is never their own cohort).
    pub user: String,
    /// The window.
    pub sample: Sample,
}

/// Parameters shared by all users: population models and normalization cohorts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Population {
    /// Changes whenever the population is re-learned; profiles rebuild their detectors then.
    pub generation: u64,
    /// The feature schema its models and cohorts were learned under; `None` in one stored
    /// before it was recorded (an older schema), or that holds nothing.
    pub schema: Option<String>,
    /// Keyboard population parameters, if enough users have keyboard baselines.
    pub keyboard: Option<PopulationModel>,
    /// Mouse population parameters, if enough users have mouse baselines.
    pub mouse: Option<PopulationModel>,
    /// Keyboard normalization cohort.
    pub keyboard_cohort: Vec<CohortWindow>,
    /// Mouse normalization cohort.
    pub mouse_cohort: Vec<CohortWindow>,
}

impl Population {
    /// Learns from each user's enrollment windows: `(user key, windows)`, the windows as
    /// received (each modality uses the windows that carry it, up to its enrollment count).
    pub fn learn(
        users: &[(&str, &[FeatureVector])],
        cfg: &ScoringConfig,
        generation: u64,
    ) -> Result<Population, ScoringError> {
        let mut pop = Population {
            generation,
            ..Population::default()
        };
        for m in Modality::ALL {
            let per_user: Vec<(&str, Vec<Sample>)> = users
                .iter()
                .map(|(u, ws)| {
                    let xs: Vec<Sample> = ws
                        .iter()
                        .filter(|v| check(v).is_ok())
                        .filter_map(|v| m.sample(v))
                        .take(cfg.enroll_windows(m))
                        .collect();
                    (*u, xs)
                })
                .filter(|(_, xs)| !xs.is_empty())
                .collect();
            let refs: Vec<(&str, &[Sample])> =
                per_user.iter().map(|(u, xs)| (*u, xs.as_slice())).collect();
            pop.set_modality(m, &refs, cfg)?;
        }
        Ok(pop)
    }

    /// Learns one modality from windows already in scoring space.
    pub fn set_modality(
        &mut self,
        m: Modality,
        users: &[(&str, &[Sample])],
        cfg: &ScoringConfig,
    ) -> Result<(), ScoringError> {
        let windows: Vec<&[Sample]> = users.iter().map(|(_, w)| *w).collect();
        let model = PopulationModel::learn(m, &windows, cfg.min_population_users, cfg.student_t)?;
        let cohort = pick_cohort(users, cfg.cohort_windows);
        self.schema = Some(cadence_wire::features::SCHEMA.to_owned());
        match m {
            Modality::Keyboard => {
                self.keyboard = model;
                self.keyboard_cohort = cohort;
            }
            Modality::Mouse => {
                self.mouse = model;
                self.mouse_cohort = cohort;
            }
        }
        Ok(())
    }

    /// The population model of a modality, if learned.
    pub fn model(&self, m: Modality) -> Option<&PopulationModel> {
        match m {
            Modality::Keyboard => self.keyboard.as_ref(),
            Modality::Mouse => self.mouse.as_ref(),
        }
    }

    /// The normalization cohort of a modality.
    pub fn cohort(&self, m: Modality) -> &[CohortWindow] {
        match m {
            Modality::Keyboard => &self.keyboard_cohort,
            Modality::Mouse => &self.mouse_cohort,
        }
    }

    /// Checks stored parameters against this build's schema: the schema they were learned
    /// under (the same names can carry values of another definition), then each part.
    pub fn check(&self) -> Result<(), ScoringError> {
        let learned = |m: Modality| self.model(m).is_some() || !self.cohort(m).is_empty();
        if let Some(m) = Modality::ALL.into_iter().find(|m| learned(*m))
            && self.schema.as_deref() != Some(cadence_wire::features::SCHEMA)
        {
            return Err(ScoringError::PopulationSchema { modality: m });
        }
        for m in Modality::ALL {
            if let Some(p) = self.model(m) {
                if p.modality != m {
                    return Err(ScoringError::PopulationSchema { modality: m });
                }
                p.check()?;
            }
            if let Some(w) = self.cohort(m).iter().find(|w| w.sample.x.len() != m.dim()) {
                return Err(ScoringError::Dimension {
                    modality: m,
                    expected: m.dim(),
                    got: w.sample.x.len(),
                });
            }
        }
        Ok(())
    }
}

/// Up to `max` windows, spread over as many users as possible: every user's first window in
/// turn (users taken at an even stride when there are more users than places), then second
/// windows, and so on.
fn pick_cohort(users: &[(&str, &[Sample])], max: usize) -> Vec<CohortWindow> {
    let mut out = Vec::new();
    if users.is_empty() || max == 0 {
        return out;
    }
    let rounds = users.iter().map(|(_, w)| w.len()).max().unwrap_or(0);
    for round in 0..rounds {
        let left = max - out.len();
        let have: Vec<&(&str, &[Sample])> = users.iter().filter(|(_, w)| w.len() > round).collect();
        let take = have.len().min(left);
        for k in 0..take {
            let (u, w) = have[k * have.len() / take];
            out.push(CohortWindow {
                user: (*u).to_owned(),
                sample: w[round].clone(),
            });
        }
        if out.len() >= max {
            break;
        }
    }
    out
}

/// One user's scoring state for one modality.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModalityProfile {
    /// Enrollment windows collected so far (scoring space), until the baseline exists.
    pub pending: Vec<Sample>,
    /// The baseline, once enrolled.
    pub baseline: Option<Baseline>,
    /// The feature schema the pending windows and the baseline were collected under, as the
    /// scorer records it; `None` in a profile stored before it did (an older schema).
    pub schema: Option<String>,
    /// Compiled detector and the population generation it was built against.
    #[serde(skip)]
    detector: Option<(u64, Detector)>,
    /// Leave-one-out scores of the enrollment windows and the population generation they
    /// were computed against: they do not change when the baseline adapts, so an adaptation
    /// recompiles the detector without rebuilding one per enrollment window.
    #[serde(skip)]
    reference: Option<(u64, Vec<f64>)>,
}

impl ModalityProfile {
    /// A state already enrolled on `baseline`.
    pub fn with_baseline(baseline: Baseline) -> ModalityProfile {
        ModalityProfile {
            pending: Vec::new(),
            baseline: Some(baseline),
            schema: None,
            detector: None,
            reference: None,
        }
    }

    /// The detector compiled by the last call to [`ModalityProfile::detector`], if still
    /// valid for the baseline (it may be stale against a newer population).
    pub fn compiled(&self) -> Option<&Detector> {
        self.detector.as_ref().map(|(_, d)| d)
    }

    /// The baseline's detector against `pop`, compiled and normalized on first use and after
    /// any change of baseline or population.
    pub fn detector(
        &mut self,
        m: Modality,
        user: &str,
        pop: &Population,
        cfg: &ScoringConfig,
    ) -> Result<Option<&Detector>, ScoringError> {
        let Some(baseline) = &self.baseline else {
            return Ok(None);
        };
        let stale = !matches!(&self.detector, Some((g, _)) if *g == pop.generation);
        if stale {
            let mut d = Detector::build(baseline, pop.model(m), cfg.method)?;
            let cohort: Vec<&Sample> = pop
                .cohort(m)
                .iter()
                .filter(|w| w.user != user)
                .map(|w| &w.sample)
                .collect();
            d.normalize(&cohort, cfg.min_cohort_windows)?;
            let reference = match &self.reference {
                Some((g, r)) if *g == pop.generation => r.clone(),
                _ => {
                    let (r, reusable) = d.reference_scores(baseline, pop.model(m))?;
                    self.reference = reusable.then(|| (pop.generation, r.clone()));
                    r
                }
            };
            d.calibrate(&reference, cfg.min_genuine_level);
            self.detector = Some((pop.generation, d));
        }
        Ok(self.detector.as_ref().map(|(_, d)| d))
    }
}

/// What one window did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// Per modality scored: the score (calibrated when `calibrated`: 0 like other people, 1
    /// like this user).
    pub scores: Vec<(Modality, f64)>,
    /// The fused score of the window (mean of `scores`), if any modality was scored.
    pub score: Option<f64>,
    /// Whether every score was calibrated (only then does trust move).
    pub calibrated: bool,
    /// The trust update, if trust moved.
    pub trust: Option<TrustStep>,
    /// Whether this window raised an alert.
    pub alert: bool,
    /// Modalities for which this window went into enrollment, with windows still needed.
    pub enrolling: Vec<(Modality, usize)>,
    /// Modalities whose baseline this window adapted.
    pub adapted: Vec<Modality>,
}

/// A user's scoring state: a [`ModalityProfile`] per modality and the trust level.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserProfile {
    /// Keyboard state.
    pub keyboard: ModalityProfile,
    /// Mouse state.
    pub mouse: ModalityProfile,
    /// The trust level.
    pub trust: Trust,
}

impl UserProfile {
    /// The state of one modality.
    pub fn modality(&self, m: Modality) -> &ModalityProfile {
        match m {
            Modality::Keyboard => &self.keyboard,
            Modality::Mouse => &self.mouse,
        }
    }

    /// The state of one modality, mutable.
    pub fn modality_mut(&mut self, m: Modality) -> &mut ModalityProfile {
        match m {
            Modality::Keyboard => &mut self.keyboard,
            Modality::Mouse => &mut self.mouse,
        }
    }

    /// Takes in one window of `user` (the key the population's cohort uses for this user):
    /// enrolls, or scores, moves trust, and adapts.
    pub fn observe(
        &mut self,
        user: &str,
        v: &FeatureVector,
        pop: &Population,
        cfg: &ScoringConfig,
    ) -> Result<Observation, ScoringError> {
        check(v).map_err(ScoringError::Rejected)?;
        let mut obs = Observation {
            scores: Vec::new(),
            score: None,
            calibrated: true,
            trust: None,
            alert: false,
            enrolling: Vec::new(),
            adapted: Vec::new(),
        };
        let mut scored: Vec<(Modality, Sample, f64)> = Vec::new();
        for m in Modality::ALL {
            let Some(x) = m.sample(v) else { continue };
            let mp = self.modality_mut(m);
            if mp.baseline.is_none() {
                mp.pending.push(x);
                let need = cfg.enroll_windows(m);
                if mp.pending.len() >= need {
                    let baseline = Baseline::enroll(m, &mp.pending)?;
                    // The windows' schema is the baseline's.
                    *mp = ModalityProfile {
                        schema: mp.schema.take(),
                        ..ModalityProfile::with_baseline(baseline)
                    };
                }
                let left = match mp.baseline {
                    Some(_) => 0,
                    None => need.saturating_sub(mp.pending.len()),
                };
                obs.enrolling.push((m, left));
                continue;
            }
            let Some(d) = mp.detector(m, user, pop, cfg)? else {
                continue;
            };
            obs.calibrated &= d.is_calibrated();
            let s = d.score(&x)?;
            obs.scores.push((m, s));
            scored.push((m, x, s));
        }
        if scored.is_empty() {
            obs.calibrated = false;
            return Ok(obs);
        }
        let fused = scored.iter().map(|(_, _, s)| s).sum::<f64>() / scored.len() as f64;
        obs.score = Some(fused);
        if obs.calibrated {
            let step = self.trust.update(fused, &cfg.trust);
            obs.alert = step.alert;
            obs.trust = Some(step);
        }
        let trusted = obs
            .trust
            .is_some_and(|t| !t.alert && t.level >= cfg.adapt_min_trust);
        if trusted {
            for (m, x, s) in scored {
                if s >= cfg.adapt_above {
                    let mp = self.modality_mut(m);
                    if let Some(b) = mp.baseline.as_mut() {
                        b.adapt(&x, cfg.memory_windows)?;
                        mp.detector = None;
                        obs.adapted.push(m);
                    }
                }
            }
        }
        Ok(obs)
    }

    /// An administrator's reset of one modality's baseline: the next windows enroll afresh.
    pub fn reset_baseline(&mut self, m: Modality) {
        *self.modality_mut(m) = ModalityProfile::default();
        self.trust.reset();
    }
}
