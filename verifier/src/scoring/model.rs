//! One user's baseline for one modality, and the detector compiled from it.
//!
//! Owns the per-user statistics ([`Baseline`]: enrollment, slow adaptation) and the per-window
//! score ([`Detector`]). A score is a number where higher means "more like this user"; after
//! cohort normalization it reads as "robust standard deviations above what other users'
//! windows score against this baseline". Never scores a window of the wrong dimension, never
//! returns a NaN: degenerate statistics are an error at build time.
//!
//! # The PLDA score
//!
//! With population parameters (grand mean μ₀, between-user covariance B, within-user
//! covariance W, tail parameter ν; see [`PopulationModel`]), a user's windows are modelled as
//! `x = μ_user + e`, `μ_user ~ N(μ₀, B)`, `e` with covariance W. Given the mean x̄ of the
//! baseline's `n` windows, the user's mean is known up to
//!
//! ```text
//! μ_user | x̄ ~ N(μ₀ + B (B + W/n)⁻¹ (x̄ − μ₀),  B − B (B + W/n)⁻¹ B)
//! ```
//!
//! and the score of a window x is the log-likelihood ratio of "x is this user's" (mean as
//! above, covariance W + the remaining uncertainty of the mean) against "x is a random user's"
//! (mean μ₀, covariance B + W). Both densities are multivariate Student-t with ν degrees of
//! freedom and those covariances, so a window that is unusual in every direction at once (a
//! distracted minute) costs less than a Gaussian would charge; ν → ∞ is the Gaussian
//! two-covariance (PLDA) score.
//!
//! Computed in the population's model space (its normal-space mapping, when it chose one)
//! and there in the basis T where W = I and B = diag(b) ([`PopulationModel::projection`]), so
//! every covariance above is diagonal and a window costs one d×d product plus O(d). A window
//! of `e` events has within-user covariance c·W with c = (e / e_ref)^−γ (the population's
//! `spread_exponent`): a short window is trusted less. The baseline's windows enter the
//! user's mean weighted by 1/c as well.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ScoringError;
use super::input::{Modality, Sample};
use super::population::{PopulationModel, mean, spread_factor, to_normal};

/// The largest block the detector's stack buffers hold; the schema's blocks are far smaller.
pub const MAX_DIM: usize = 64;

/// Enrollment windows a baseline keeps (evenly spaced) to learn the user's genuine score
/// level; with more enrollment windows than this the level is measured in-sample.
pub const MAX_REFERENCE: usize = 64;

/// Floor on a feature's spread in the scaled distance, relative to the mean spread, so a
/// feature that never varied during enrollment cannot make one deviation infinite.
const MIN_SCALE: f64 = 1e-3;

/// How a window is compared with a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Killourhy & Maxion's scaled Manhattan distance: mean over features of
    /// |x − mean| / mean absolute deviation, per-user statistics only. The fallback when there
    /// is no population.
    ScaledManhattan,
    /// The two-covariance (PLDA) log-likelihood ratio with Student-t tails (module docs).
    #[default]
    #[serde(alias = "gaussian")]
    Plda,
}

impl Method {
    /// Whether the method needs population parameters (else it falls back).
    pub fn needs_population(self) -> bool {
        !matches!(self, Method::ScaledManhattan)
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::ScaledManhattan => "scaled_manhattan",
            Method::Plda => "plda",
        }
    }
}

/// A user's statistics for one modality, in scoring space.
///
/// Learned from the enrollment windows, then moved slowly by windows scored as confidently
/// genuine: an exponentially weighted mean whose weight never drops below 1/`memory`, so the
/// baseline follows genuine drift over tens of windows, not one.
///
/// Stored form (JSON): `modality`, `count` (effective number of windows), `mean` (d),
/// `abs_dev` (d, mean absolute deviation, for the fallback distance), `enrolled` (windows used
/// at enrollment), `adapted` (windows taken in since) and `reference` (up to
/// [`MAX_REFERENCE`] enrollment windows as [`Sample`]s, kept to measure how well the user's
/// own windows score: see [`Detector::calibrate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// The modality.
    pub modality: Modality,
    /// Effective number of windows behind the statistics.
    pub count: f64,
    /// Mean window.
    pub mean: Vec<f64>,
    /// Mean absolute deviation per feature.
    pub abs_dev: Vec<f64>,
    /// Windows the baseline was enrolled on.
    pub enrolled: u64,
    /// Windows taken in by adaptation since enrollment.
    pub adapted: u64,
    /// Enrollment windows kept for calibration (all of them, up to [`MAX_REFERENCE`]).
    #[serde(default)]
    pub reference: Vec<Sample>,
}

impl Baseline {
    /// A baseline from enrollment windows; needs at least two.
    pub fn enroll(modality: Modality, windows: &[Sample]) -> Result<Baseline, ScoringError> {
        let d = modality.dim();
        if windows.len() < 2 {
            return Err(ScoringError::TooFewWindows {
                modality,
                needed: 2,
                got: windows.len(),
            });
        }
        if let Some(bad) = windows.iter().find(|s| s.x.len() != d) {
            return Err(ScoringError::Dimension {
                modality,
                expected: d,
                got: bad.x.len(),
            });
        }
        let n = windows.len() as f64;
        let m = mean(windows.iter().map(|s| s.x.as_slice()), d);
        let mut abs_dev = vec![0.0; d];
        for s in windows {
            for ((a, x), mu) in abs_dev.iter_mut().zip(&s.x).zip(&m) {
                *a += (x - mu).abs() / n;
            }
        }
        let keep = windows.len().min(MAX_REFERENCE);
        let reference = (0..keep)
            .map(|k| windows[k * windows.len() / keep].clone())
            .collect();
        Ok(Baseline {
            modality,
            count: n,
            mean: m,
            abs_dev,
            enrolled: windows.len() as u64,
            adapted: 0,
            reference,
        })
    }

    /// Takes in one window believed genuine. The weight of the new window is 1/count, with
    /// the count growing by one per window up to `memory` (never shrinking below what
    /// enrollment gave): a running mean at first, then exponential forgetting.
    pub fn adapt(&mut self, sample: &Sample, memory: f64) -> Result<(), ScoringError> {
        let d = self.mean.len();
        if sample.x.len() != d {
            return Err(ScoringError::Dimension {
                modality: self.modality,
                expected: d,
                got: sample.x.len(),
            });
        }
        self.count = (self.count + 1.0).min(memory.max(self.count));
        let w = 1.0 / self.count;
        for (m, x) in self.mean.iter_mut().zip(&sample.x) {
            *m += w * (x - *m);
        }
        for ((a, x), m) in self.abs_dev.iter_mut().zip(&sample.x).zip(&self.mean) {
            *a = (1.0 - w) * *a + w * (x - m).abs();
        }
        self.adapted += 1;
        Ok(())
    }
}

/// Calibration of one detector's scores: `(raw − impostor) / (genuine − impostor)`, so that
/// 0 is where other users' windows typically score against this baseline and 1 where the
/// user's own windows typically do.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Norm {
    /// Median raw score of the cohort's windows (other users).
    pub impostor: f64,
    /// Scaled median absolute deviation of the cohort's raw scores (σ for a normal
    /// distribution): the unit of the z-normalized score.
    pub impostor_spread: f64,
    /// The user's typical z-normalized score (mean over the enrollment windows, each scored
    /// against a baseline enrolled without it), floored; `None` until measured.
    pub genuine: Option<f64>,
}

#[derive(Debug, Clone)]
enum Kind {
    ScaledManhattan {
        mean: Vec<f64>,
        inv_scale: Vec<f64>,
    },
    Plda {
        /// The population's map into its diagonal space, shared by every detector built
        /// from one population model (cloning a detector does not copy it).
        space: Arc<Space>,
        /// Posterior mean of the user's mean, in the diagonal space.
        mean: Vec<f64>,
        /// Posterior variance of the user's mean, per diagonal coordinate.
        mean_var: Vec<f64>,
        /// Student-t degrees of freedom; infinite for Gaussian.
        nu: f64,
    },
}

/// A population model's map from scoring space into the space where the within-user
/// covariance (of a reference-sized window) is the identity and the between-user covariance
/// is diagonal: normal space ([`to_normal`]), minus the population mean, times T.
#[derive(Debug)]
struct Space {
    d: usize,
    quantiles: Vec<f64>,
    mapped: Vec<bool>,
    mean: Vec<f64>,
    projection: Vec<f64>,
    between: Vec<f64>,
    reference_events: f64,
    spread_exponent: f64,
}

impl Space {
    fn new(pop: &PopulationModel) -> Space {
        Space {
            d: pop.mean.len(),
            quantiles: pop.quantiles.clone(),
            mapped: pop.mapped.clone(),
            mean: pop.mean.clone(),
            projection: pop.projection.clone(),
            between: pop.between_eigen.clone(),
            reference_events: pop.reference_events,
            spread_exponent: pop.spread_exponent,
        }
    }

    /// Maps `x` (scoring space) into the diagonal space; `out` has length d.
    #[inline]
    fn map(&self, x: &[f64], out: &mut [f64]) {
        let d = self.d;
        let mut z = [0.0; MAX_DIM];
        to_normal(&self.quantiles, &self.mapped, x, &mut z[..d]);
        for (zi, m) in z[..d].iter_mut().zip(&self.mean) {
            *zi -= m;
        }
        for (o, row) in out.iter_mut().zip(self.projection.chunks_exact(d)) {
            *o = row.iter().zip(&z[..d]).map(|(t, v)| t * v).sum();
        }
    }

    /// Factor on the within-user covariance of a window of `events` events.
    #[inline]
    fn spread(&self, events: u64) -> f64 {
        spread_factor(events, self.reference_events, self.spread_exponent)
    }
}

/// A baseline compiled for fast scoring against a population; rebuilt when either changes.
#[derive(Debug, Clone)]
pub struct Detector {
    modality: Modality,
    method: Method,
    kind: Kind,
    norm: Option<Norm>,
}

impl Detector {
    /// Compiles `baseline` for `method`. [`Method::Plda`] falls back to
    /// [`Method::ScaledManhattan`] when `population` is `None`.
    pub fn build(
        baseline: &Baseline,
        population: Option<&PopulationModel>,
        method: Method,
    ) -> Result<Detector, ScoringError> {
        let modality = baseline.modality;
        let d = baseline.mean.len();
        if d != modality.dim() || d > MAX_DIM || baseline.abs_dev.len() != d {
            return Err(ScoringError::Dimension {
                modality,
                expected: modality.dim(),
                got: d,
            });
        }
        let population = population.filter(|_| method.needs_population());
        let Some(pop) = population else {
            let avg = baseline.abs_dev.iter().sum::<f64>() / d as f64;
            let floor = (MIN_SCALE * avg).max(f64::MIN_POSITIVE);
            return Ok(Detector {
                modality,
                method: Method::ScaledManhattan,
                kind: Kind::ScaledManhattan {
                    mean: baseline.mean.clone(),
                    inv_scale: baseline
                        .abs_dev
                        .iter()
                        .map(|s| 1.0 / s.max(floor))
                        .collect(),
                },
                norm: None,
            });
        };
        if pop.modality != modality || pop.mean.len() != d {
            return Err(ScoringError::PopulationSchema { modality });
        }
        let space = Arc::new(Space::new(pop));
        // The user's windows in the diagonal space, each weighted by its precision (1 / its
        // spread factor): the reference windows when the baseline keeps them, shifted by how
        // far adaptation (or a reference that is only a sample of the enrollment) has moved
        // the baseline's mean since; else the baseline's mean alone.
        let mut y = vec![0.0; d];
        let mut centre = vec![0.0; d];
        let mut weight = 0.0;
        for r in &baseline.reference {
            if r.x.len() != d {
                return Err(ScoringError::Dimension {
                    modality,
                    expected: d,
                    got: r.x.len(),
                });
            }
            let w = 1.0 / space.spread(r.events);
            space.map(&r.x, &mut y);
            for (c, v) in centre.iter_mut().zip(&y) {
                *c += w * v;
            }
            weight += w;
        }
        let per_window = if baseline.reference.is_empty() {
            space.map(&baseline.mean, &mut centre);
            1.0
        } else {
            centre.iter_mut().for_each(|c| *c /= weight);
            let ref_mean = mean(baseline.reference.iter().map(|r| r.x.as_slice()), d);
            if ref_mean != baseline.mean {
                let mut a = vec![0.0; d];
                space.map(&baseline.mean, &mut y);
                space.map(&ref_mean, &mut a);
                for ((c, now), then) in centre.iter_mut().zip(&y).zip(&a) {
                    *c += now - then;
                }
            }
            weight / baseline.reference.len() as f64
        };
        // Per coordinate: prior N(0, b), the centre observed with variance 1 / (n · w̄).
        let precision = baseline.count.max(1.0) * per_window;
        let mean_var: Vec<f64> = space
            .between
            .iter()
            .map(|b| 1.0 / (1.0 / b + precision))
            .collect();
        let post_mean: Vec<f64> = centre
            .iter()
            .zip(&mean_var)
            .map(|(c, v)| c * precision * v)
            .collect();
        if post_mean.iter().chain(&mean_var).any(|v| !v.is_finite()) {
            return Err(ScoringError::Degenerate { modality });
        }
        Ok(Detector {
            modality,
            method,
            kind: Kind::Plda {
                space,
                mean: post_mean,
                mean_var,
                nu: pop.tail_dof.unwrap_or(f64::INFINITY),
            },
            norm: None,
        })
    }

    /// The modality this detector scores.
    pub fn modality(&self) -> Modality {
        self.modality
    }

    /// The method in force (after any fallback).
    pub fn method(&self) -> Method {
        self.method
    }

    /// The cohort normalization in force, if any.
    pub fn norm(&self) -> Option<Norm> {
        self.norm
    }

    /// The unnormalized score of one window; higher is more like the user.
    #[inline]
    pub fn raw_score(&self, s: &Sample) -> Result<f64, ScoringError> {
        let x = &s.x;
        match &self.kind {
            Kind::ScaledManhattan { mean, inv_scale } => {
                check_dim(self.modality, mean.len(), x.len())?;
                let dist: f64 = x
                    .iter()
                    .zip(mean)
                    .zip(inv_scale)
                    .map(|((a, m), s)| (a - m).abs() * s)
                    .sum();
                Ok(-dist / mean.len() as f64)
            }
            Kind::Plda {
                space,
                mean,
                mean_var,
                nu,
            } => {
                let d = mean.len();
                check_dim(self.modality, d, x.len())?;
                let mut y = [0.0; MAX_DIM];
                space.map(x, &mut y[..d]);
                let c = space.spread(s.events);
                // Diagonal covariances: this user's c + v_i, a random user's c + b_i.
                let (mut q, mut q0, mut det_ratio) = (0.0, 0.0, 1.0);
                for (((yi, mi), vi), bi) in
                    y[..d].iter().zip(mean).zip(mean_var).zip(&space.between)
                {
                    let (own, bg) = (c + vi, c + bi);
                    q += (yi - mi) * (yi - mi) / own;
                    q0 += yi * yi / bg;
                    det_ratio *= bg / own;
                }
                let dets = 0.5 * det_ratio.ln();
                if nu.is_finite() {
                    // Student-t with covariance Σ has scale Σ (ν − 2)/ν: the quadratic form
                    // in the scale is q ν/(ν − 2), and log(1 + that/ν) = log(1 + q/(ν − 2)).
                    let k = 0.5 * (nu + d as f64);
                    Ok(k * ((q0 / (nu - 2.0)).ln_1p() - (q / (nu - 2.0)).ln_1p()) + dets)
                } else {
                    Ok(0.5 * (q0 - q) + dets)
                }
            }
        }
    }

    /// The score of one window: calibrated (0 impostor-like, 1 genuine-like) when the
    /// detector is normalized and calibrated, z-normalized when only normalized, raw otherwise.
    #[inline]
    pub fn score(&self, x: &Sample) -> Result<f64, ScoringError> {
        let s = self.raw_score(x)?;
        Ok(match self.norm {
            Some(n) => (s - n.impostor) / n.impostor_spread / n.genuine.unwrap_or(1.0),
            None => s,
        })
    }

    /// The z-normalized score (cohort only, no genuine calibration), or raw if unnormalized.
    pub fn z_score(&self, x: &Sample) -> Result<f64, ScoringError> {
        let s = self.raw_score(x)?;
        Ok(match self.norm {
            Some(n) => (s - n.impostor) / n.impostor_spread,
            None => s,
        })
    }

    /// Whether scores are fully calibrated (cohort-normalized and scaled by the user's
    /// genuine level).
    pub fn is_calibrated(&self) -> bool {
        self.norm.is_some_and(|n| n.genuine.is_some())
    }

    /// Sets the cohort normalization from other users' windows (in scoring space). Needs at
    /// least `min` of them; with fewer, the detector stays unnormalized and this returns
    /// `false`. Median and scaled MAD rather than mean and standard deviation, so a few cohort
    /// windows that happen to resemble the user do not move the norm.
    pub fn normalize(&mut self, cohort: &[&Sample], min: usize) -> Result<bool, ScoringError> {
        self.norm = None;
        self.normalize_inner(cohort, min)
    }

    fn normalize_inner(&mut self, cohort: &[&Sample], min: usize) -> Result<bool, ScoringError> {
        self.norm = None;
        if cohort.len() < min.max(3) {
            return Ok(false);
        }
        let mut s = cohort
            .iter()
            .map(|x| self.raw_score(x))
            .collect::<Result<Vec<f64>, _>>()?;
        let med = median(&mut s);
        let mut dev: Vec<f64> = s.iter().map(|v| (v - med).abs()).collect();
        let mad = 1.4826 * median(&mut dev);
        if !(mad > 0.0 && mad.is_finite() && med.is_finite()) {
            return Ok(false);
        }
        self.norm = Some(Norm {
            impostor: med,
            impostor_spread: mad,
            genuine: None,
        });
        Ok(true)
    }

    /// Raw scores of the baseline's reference windows, for [`Detector::calibrate`]. When the
    /// reference holds every enrollment window, each is scored by a detector built without it
    /// (leave-one-out, so the scores are those of new windows, not of windows the baseline has
    /// seen); these depend only on the enrollment and the population, so the caller may keep
    /// them across adaptations (`reusable` is then `true`). Otherwise (a baseline enrolled on
    /// more than [`MAX_REFERENCE`] windows, where one window hardly moves it) they are scored
    /// in-sample by this detector.
    pub fn reference_scores(
        &self,
        baseline: &Baseline,
        population: Option<&PopulationModel>,
    ) -> Result<(Vec<f64>, bool), ScoringError> {
        let refs = &baseline.reference;
        if refs.len() < 3 || refs.len() as u64 != baseline.enrolled {
            let s = refs
                .iter()
                .map(|r| self.raw_score(r))
                .collect::<Result<Vec<f64>, _>>()?;
            return Ok((s, false));
        }
        let mut out = Vec::with_capacity(refs.len());
        let mut rest = Vec::with_capacity(refs.len() - 1);
        for i in 0..refs.len() {
            all_but(refs, i, &mut rest);
            let loo = Detector::build(
                &Baseline::enroll(self.modality, &rest)?,
                population,
                self.method,
            )?;
            out.push(loo.raw_score(&refs[i])?);
        }
        Ok((out, true))
    }

    /// Turns the z-normalized score into the calibrated one: measures the user's genuine
    /// level as the mean z-normalized score of `reference` (from
    /// [`Detector::reference_scores`]), floored at `min_level` so that a user whose windows
    /// barely beat other people's does not get a calibration that magnifies noise. Needs a
    /// cohort norm and at least three reference scores; returns whether it calibrated.
    pub fn calibrate(&mut self, reference: &[f64], min_level: f64) -> bool {
        let Some(norm) = self.norm else {
            return false;
        };
        if reference.len() < 3 {
            return false;
        }
        let mean_z = reference
            .iter()
            .map(|raw| (raw - norm.impostor) / norm.impostor_spread)
            .sum::<f64>()
            / reference.len() as f64;
        if !mean_z.is_finite() {
            return false;
        }
        self.norm = Some(Norm {
            genuine: Some(mean_z.max(min_level)),
            ..norm
        });
        true
    }
}

fn check_dim(modality: Modality, expected: usize, got: usize) -> Result<(), ScoringError> {
    if expected == got {
        Ok(())
    } else {
        Err(ScoringError::Dimension {
            modality,
            expected,
            got,
        })
    }
}

/// `all` without its `skip`th window, into `out` (cleared first): one leave-one-out set.
pub(crate) fn all_but(all: &[Sample], skip: usize, out: &mut Vec<Sample>) {
    out.clear();
    out.extend(
        all.iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, s)| s.clone()),
    );
}

/// Median by selection; reorders `v`. 0 for an empty slice.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    let (lo, m, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let below = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (below + m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
