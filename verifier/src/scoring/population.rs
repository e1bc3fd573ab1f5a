//! Population parameters of one modality, learned at run time from the enrollment windows of
//! the users the verifier holds: where users' typical values lie (between-user covariance) and
//! how much one user's windows vary around their own (pooled within-user covariance).
//!
//! Owns the estimation and its serde form, so the verifier can store the result and reload it.
//! Never ships with data: no parameters learned from research datasets are part of the code,
//! and with too few users there is no population at all, and baselines fall back to the
//! per-user scaled distance ([`super::Method::ScaledManhattan`]).
//!
//! # Stored form (JSON)
//!
//! | field | meaning |
//! |---|---|
//! | `modality` | `"keyboard"` or `"mouse"` |
//! | `features` | the block's feature names in order; a mismatch with this build refuses the file |
//! | `users`, `windows` | how many users and windows it was learned from |
//! | `quantiles` | per feature, [`QUANTILES`] values of the population's windows at probabilities (j + ½)/[`QUANTILES`], row-major d×Q, non-decreasing per feature |
//! | `mapped` | per feature, whether it is mapped into normal space (below) or kept as it is |
//! | `mean` | mean of the users' means, in model space (mapped features in normal space) |
//! | `within` | pooled within-user covariance of a window of `reference_events` events, in model space, row-major d×d, positive definite |
//! | `between` | covariance of the users' true means, in model space, row-major d×d, positive definite |
//! | `projection` | T, row-major d×d: T·within·Tᵀ = I and T·between·Tᵀ = diag(`between_eigen`) |
//! | `between_eigen` | the between-user variances along T's rows (each > 0) |
//! | `tail_dof` | Student-t degrees of freedom of the within-user spread (> 2), null for Gaussian |
//! | `reference_events`, `spread_exponent` | a window of e events has within-user covariance `within` · (e / `reference_events`)^−`spread_exponent` |
//!
//! **Normal space.** Each feature (already in scoring space, [`super::input::transform`]) is
//! mapped through the population's own marginal distribution onto a standard normal: its
//! rank among the `quantiles` (linear between them, the middle of a run of equal values on a
//! tie, clamped at the outer ones) and then the normal quantile function. Timing quantiles
//! are close to log-normal, but up-down flights cross zero, and rates and pause lengths hold a
//! large point mass at zero: the two-covariance model assumes none of that. But with few
//! users the marginal is a mixture of a few users' bumps, and mapping it warps the distances
//! inside each bump. So [`PopulationModel::learn`] fits both candidates, every feature mapped
//! and none, and keeps the one that better tells the population's own users apart (each
//! user's held-out windows against a baseline of their other windows, and other users'
//! windows against it). Learned from the verifier's own users like
//! everything else here: on Aalto's 573-user halves the keyboard takes the mapping, on
//! Balabit's 10 users the mouse does not.
//!
//! **Window size.** A window's statistics are the more precise the more events stand behind
//! them, so its within-user spread shrinks with its event count as a power law; the exponent
//! is fitted with the tails.
//!
//! `spread_exponent` is the maximum-likelihood exponent (over a grid from 0 to 1 in quarters)
//! of a multivariate Student-t with covariance `within` scaled by window size, fitted to the
//! users' leave-one-out residuals (each window minus the mean of the user's other windows),
//! with ν from 2.5 to 1000 or Gaussian. The likeliest ν describes the residuals, but the
//! score is a likelihood *ratio*, and heavy tails that fit a few distracted windows also
//! flatten the ratio for every ordinary one. So `tail_dof` is chosen like the mapping, by
//! how well the population's own users come apart, among the likeliest ν and
//! [`TAIL_CHOICES`] (and Gaussian); on Aalto's halves the likeliest is 15–20 and the chosen
//! one is larger.

use serde::{Deserialize, Serialize};

use super::ScoringError;
use super::input::{Modality, Sample};
use super::linalg::{Cholesky, Mat, clip_eigen, sym_eigen};

/// Relative ridge added to each diagonal, so a feature constant across a small population
/// (no scroll at all, say) still gives an invertible covariance.
const RIDGE: f64 = 1e-4;

/// Values kept per feature to describe the population's marginal distribution.
pub const QUANTILES: usize = 100;

/// Candidate exponents of the window-size scaling of the within-user spread.
const SPREAD_GRID: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// A modality's population parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopulationModel {
    /// The modality these parameters describe.
    pub modality: Modality,
    /// Feature names, in order, of the schema the parameters were learned on.
    pub features: Vec<String>,
    /// Users that contributed (each with at least two windows).
    pub users: usize,
    /// Windows that contributed.
    pub windows: usize,
    /// Per feature, the population's values at [`QUANTILES`] evenly spaced probabilities
    /// (scoring space), row-major d × [`QUANTILES`].
    pub quantiles: Vec<f64>,
    /// Per feature, whether it is mapped into normal space through `quantiles` (else taken
    /// as it is in scoring space).
    pub mapped: Vec<bool>,
    /// Mean of the users' means (normal space).
    pub mean: Vec<f64>,
    /// Pooled within-user covariance of a window of `reference_events` events (normal
    /// space), row-major.
    pub within: Vec<f64>,
    /// Between-user covariance of the users' true means (normal space), row-major.
    pub between: Vec<f64>,
    /// T, row-major: whitens `within` and diagonalizes `between`.
    pub projection: Vec<f64>,
    /// Between-user variances along the rows of `projection`.
    pub between_eigen: Vec<f64>,
    /// Student-t degrees of freedom of the within-user spread; `None` for Gaussian.
    pub tail_dof: Option<f64>,
    /// Event count of a window whose within-user covariance is `within`.
    pub reference_events: f64,
    /// How the within-user spread scales with a window's event count e:
    /// (e / `reference_events`)^−`spread_exponent`.
    pub spread_exponent: f64,
}

impl PopulationModel {
    /// Learns the parameters from each user's windows. Users with fewer than two windows are
    /// skipped; `Ok(None)` when fewer than `min_users` remain. With `student_t`, the tail
    /// parameter is chosen too; without, the model is Gaussian. Fits the model with and
    /// without the normal-space mapping, chooses each one's tails, and keeps the one that
    /// separates the users better (module docs).
    pub fn learn(
        modality: Modality,
        users: &[&[Sample]],
        min_users: usize,
        student_t: bool,
    ) -> Result<Option<PopulationModel>, ScoringError> {
        let d = modality.dim();
        let usable: Vec<&[Sample]> = users.iter().copied().filter(|w| w.len() >= 2).collect();
        if usable.len() < min_users.max(2) {
            return Ok(None);
        }
        for w in &usable {
            if let Some(bad) = w.iter().find(|s| s.x.len() != d) {
                return Err(ScoringError::Dimension {
                    modality,
                    expected: d,
                    got: bad.x.len(),
                });
            }
        }
        let quantiles = marginal_quantiles(&usable, d);
        // Two candidate spaces; the population's own windows choose between them.
        let mapped = fit(
            modality,
            &usable,
            quantiles.clone(),
            vec![true; d],
            student_t,
        )?;
        let plain = fit(modality, &usable, quantiles, vec![false; d], student_t)?;
        let (mapped, mapped_separation) = choose_tails(mapped, &usable, student_t)?;
        let (plain, plain_separation) = choose_tails(plain, &usable, student_t)?;
        let model = if mapped_separation > plain_separation {
            mapped
        } else {
            plain
        };
        model.check()?;
        Ok(Some(model))
    }

    /// Checks a loaded model against this build's schema and for usable covariances.
    pub fn check(&self) -> Result<(), ScoringError> {
        let names = self.modality.feature_names();
        let d = names.len();
        if self.features.len() != d || self.features.iter().zip(&names).any(|(a, b)| a != b) {
            return Err(ScoringError::PopulationSchema {
                modality: self.modality,
            });
        }
        if self.mean.len() != d
            || self.within.len() != d * d
            || self.between.len() != d * d
            || self.projection.len() != d * d
            || self.between_eigen.len() != d
            || self.quantiles.len() != d * QUANTILES
            || self.mapped.len() != d
        {
            return Err(ScoringError::Dimension {
                modality: self.modality,
                expected: d,
                got: self.mean.len(),
            });
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        let usable = self.tail_dof.is_none_or(|v| v > 2.0 && v.is_finite())
            && self.reference_events.is_finite()
            && self.reference_events > 0.0
            && self.spread_exponent.is_finite()
            && self.spread_exponent >= 0.0
            && self.between_eigen.iter().all(|b| b.is_finite() && *b > 0.0);
        if !usable
            || !finite(&self.mean)
            || !finite(&self.projection)
            || !self
                .quantiles
                .chunks(QUANTILES)
                .all(|q| finite(q) && q.windows(2).all(|w| w[0] <= w[1]))
        {
            return Err(ScoringError::Degenerate {
                modality: self.modality,
            });
        }
        for m in [self.within_mat(), self.between_mat()] {
            Cholesky::new(&m).map_err(|_| ScoringError::Degenerate {
                modality: self.modality,
            })?;
        }
        Ok(())
    }

    pub(crate) fn within_mat(&self) -> Mat {
        Mat {
            n: self.mean.len(),
            a: self.within.clone(),
        }
    }

    pub(crate) fn between_mat(&self) -> Mat {
        Mat {
            n: self.mean.len(),
            a: self.between.clone(),
        }
    }

    /// Per-feature ratio of between-user to within-user variance (Fisher's ratio): how much
    /// more users differ from each other than from themselves, feature by feature.
    pub fn fisher_ratios(&self) -> Vec<(String, f64)> {
        let d = self.mean.len();
        (0..d)
            .map(|i| {
                (
                    self.features[i].clone(),
                    self.between[i * d + i] / self.within[i * d + i],
                )
            })
            .collect()
    }
}

/// The population parameters in the space given by `mapped` (which features go through the
/// marginal `quantiles` into normal space).
fn fit(
    modality: Modality,
    usable: &[&[Sample]],
    quantiles: Vec<f64>,
    mapped: Vec<bool>,
    student_t: bool,
) -> Result<PopulationModel, ScoringError> {
    let d = modality.dim();
    let normal: Vec<Vec<Vec<f64>>> = usable
        .iter()
        .map(|w| {
            w.iter()
                .map(|s| {
                    let mut z = vec![0.0; d];
                    to_normal(&quantiles, &mapped, &s.x, &mut z);
                    z
                })
                .collect()
        })
        .collect();
    let mut within = Mat::zeros(d);
    let mut dof = 0.0;
    let mut means = Vec::with_capacity(usable.len());
    let mut inv_n = 0.0;
    let mut windows = 0;
    for w in &normal {
        let m = mean(w.iter().map(Vec::as_slice), d);
        let mut dev = vec![0.0; d];
        for x in w {
            for ((o, a), b) in dev.iter_mut().zip(x).zip(&m) {
                *o = a - b;
            }
            within.add_outer(1.0, &dev);
        }
        dof += (w.len() - 1) as f64;
        inv_n += 1.0 / w.len() as f64;
        windows += w.len();
        means.push(m);
    }
    let within = within.scaled(1.0 / dof);
    let u = means.len() as f64;
    let grand = mean(means.iter().map(Vec::as_slice), d);
    let mut between = Mat::zeros(d);
    let mut dev = vec![0.0; d];
    for m in &means {
        for ((o, a), b) in dev.iter_mut().zip(m).zip(&grand) {
            *o = a - b;
        }
        between.add_outer(1.0 / (u - 1.0), &dev);
    }
    // The spread of the users' sample means includes the noise of each mean (W / n); take
    // it out, then lift whatever came out negative back to a small floor.
    let between = between.add_scaled(-inv_n / u, &within);
    let floor = RIDGE * within.diagonal().iter().sum::<f64>() / d as f64;
    let between = ridge(&clip_eigen(&between, floor));
    let within = ridge(&within);
    let mut events: Vec<f64> = usable
        .iter()
        .flat_map(|w| w.iter().map(|s| s.events.max(1) as f64))
        .collect();
    let reference_events = super::model::median(&mut events);
    let spread = fit_spread(
        modality,
        &normal,
        usable,
        &within,
        reference_events,
        student_t,
    )?;
    let within = within.scaled(spread.scale);
    let (projection, between_eigen) = diagonalize(modality, &within, &between)?;
    Ok(PopulationModel {
        modality,
        features: modality
            .feature_names()
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        users: usable.len(),
        windows,
        quantiles,
        mapped,
        mean: grand,
        within: within.a,
        between: between.a,
        projection: projection.a,
        between_eigen,
        tail_dof: spread.tail_dof,
        reference_events,
        spread_exponent: spread.exponent,
    })
}

/// Degrees of freedom [`choose_tails`] weighs besides the likeliest one and the Gaussian.
pub const TAIL_CHOICES: [f64; 7] = [5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// `model` with the tails among its likeliest ν, [`TAIL_CHOICES`] and Gaussian that best tell
/// the population's own users apart ([`self_separation`]), and that separation; Gaussian
/// only without `student_t`. Ties keep the earlier candidate, the likeliest first.
fn choose_tails(
    model: PopulationModel,
    users: &[&[Sample]],
    student_t: bool,
) -> Result<(PopulationModel, f64), ScoringError> {
    let with_tails = |tail_dof| PopulationModel {
        tail_dof,
        ..model.clone()
    };
    let (mut tail_dof, mut separation) = (model.tail_dof, self_separation(&model, users)?);
    if student_t {
        let others = TAIL_CHOICES.iter().map(|v| Some(*v)).chain([None]);
        for candidate in others.filter(|c| *c != model.tail_dof) {
            let s = self_separation(&with_tails(candidate), users)?;
            if s > separation {
                (tail_dof, separation) = (candidate, s);
            }
        }
    }
    Ok((PopulationModel { tail_dof, ..model }, separation))
}

/// Users, windows per user and impostor users [`self_separation`] uses; with few users, more
/// windows of each, so that about [`SELF_SCORED`] own windows are scored in all.
const SELF_USERS: usize = 200;
const SELF_WINDOWS: usize = 4;
const SELF_SCORED: usize = 800;
const SELF_IMPOSTORS: usize = 20;

/// How well a candidate model tells the population's own users apart: for up to
/// [`SELF_USERS`] users (evenly spaced), each of up to [`SELF_WINDOWS`] of their windows (more
/// with fewer users, up to [`SELF_SCORED`] in all; evenly spaced) is scored against a baseline
/// of the user's other windows, and so is the window at the same place among each of the next
/// [`SELF_IMPOSTORS`] users' windows; the result is the mean over users of the share of (own,
/// other) pairs ranked right. In-sample for the parameters, as every candidate is.
fn self_separation(model: &PopulationModel, users: &[&[Sample]]) -> Result<f64, ScoringError> {
    use super::model::{Baseline, Detector, Method};
    let u = users.len();
    let picked = u.min(SELF_USERS);
    let per_user = SELF_WINDOWS.max(SELF_SCORED / picked);
    let mut total = 0.0;
    let mut counted = 0usize;
    let mut rest = Vec::new();
    for p in 0..picked {
        let i = p * u / picked;
        let own = users[i];
        let mut genuine = Vec::new();
        let mut impostor = Vec::new();
        let scored = own.len().min(per_user);
        for k in 0..scored {
            let j = k * own.len() / scored;
            super::model::all_but(own, j, &mut rest);
            let det = Detector::build(
                &Baseline::enroll(model.modality, &rest)?,
                Some(model),
                Method::Plda,
            )?;
            genuine.push(det.raw_score(&own[j])?);
            for v in 1..=SELF_IMPOSTORS.min(u - 1) {
                let other = users[(i + v) % u];
                impostor.push(det.raw_score(&other[k * other.len() / scored])?);
            }
        }
        if let Some(a) = super::metrics::auc(&genuine, &impostor) {
            total += a;
            counted += 1;
        }
    }
    Ok(total / counted.max(1) as f64)
}

/// Candidate degrees of freedom for the tail fit.
const DOF_GRID: [f64; 22] = [
    2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 70.0, 100.0,
    150.0, 200.0, 300.0, 500.0, 1000.0,
];

/// The fitted window-size scaling and tails of the within-user spread.
struct Spread {
    /// Factor on the pooled within-user covariance, so that it is that of a window of the
    /// reference size.
    scale: f64,
    exponent: f64,
    tail_dof: Option<f64>,
}

/// Maximum-likelihood exponent of the window-size scaling and ν of a multivariate Student-t
/// with covariance `within` for the users' leave-one-out residuals (ν `None` when the
/// Gaussian is at least as likely, or when `student_t` is off).
fn fit_spread(
    modality: Modality,
    normal: &[Vec<Vec<f64>>],
    users: &[&[Sample]],
    within: &Mat,
    reference_events: f64,
    student_t: bool,
) -> Result<Spread, ScoringError> {
    let d = within.n;
    let df = d as f64;
    let chol = Cholesky::new(within).map_err(|_| ScoringError::Degenerate { modality })?;
    let mut qs = Vec::new();
    let mut r = vec![0.0; d];
    let mut scratch = vec![0.0; d];
    for w in normal {
        let n = w.len() as f64;
        let m = mean(w.iter().map(Vec::as_slice), d);
        for x in w {
            // x − mean(others) = n/(n−1) (x − x̄).
            for ((o, x), mu) in r.iter_mut().zip(x).zip(&m) {
                *o = (x - mu) * n / (n - 1.0);
            }
            qs.push(chol.quad_form(&r, &mut scratch));
        }
    }
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    let mut best: Option<(f64, Spread)> = None;
    let mut scales = Vec::with_capacity(qs.len());
    for exponent in SPREAD_GRID {
        // The residual of window j has covariance (c_j + Σ_{i≠j} c_i / (n−1)²) W.
        scales.clear();
        for w in users {
            let c: Vec<f64> = w
                .iter()
                .map(|s| spread_factor(s.events, reference_events, exponent))
                .collect();
            let n = c.len() as f64;
            let total: f64 = c.iter().sum();
            scales.extend(
                c.iter()
                    .map(|cj| cj + (total - cj) / ((n - 1.0) * (n - 1.0))),
            );
        }
        let count = qs.len() as f64;
        // The Gaussian maximum-likelihood factor on W at this exponent.
        let a = qs.iter().zip(&scales).map(|(q, s)| q / s).sum::<f64>() / (count * df);
        if !(a.is_finite() && a > 0.0) {
            return Err(ScoringError::Degenerate { modality });
        }
        let log_scales: f64 = scales.iter().map(|s| (a * s).ln()).sum();
        let gaussian = -0.5
            * qs.iter()
                .zip(&scales)
                .map(|(q, s)| q / (a * s))
                .sum::<f64>()
            - 0.5 * df * log_scales
            - 0.5 * df * ln2pi * count;
        let mut consider = |ll: f64, tail_dof: Option<f64>| {
            if best.as_ref().is_none_or(|(b, _)| ll > *b) {
                best = Some((
                    ll,
                    Spread {
                        scale: a,
                        exponent,
                        tail_dof,
                    },
                ));
            }
        };
        consider(gaussian, None);
        if student_t {
            for nu in DOF_GRID {
                let norm = ln_gamma(0.5 * (nu + df))
                    - ln_gamma(0.5 * nu)
                    - 0.5 * df * ((nu - 2.0) * std::f64::consts::PI).ln();
                let ll = count * norm
                    - 0.5 * df * log_scales
                    - 0.5
                        * (nu + df)
                        * qs.iter()
                            .zip(&scales)
                            .map(|(q, s)| (q / (a * s) / (nu - 2.0)).ln_1p())
                            .sum::<f64>();
                consider(ll, Some(nu));
            }
        }
    }
    best.map(|(_, s)| s)
        .ok_or(ScoringError::Degenerate { modality })
}

/// Factor on the within-user covariance of a window of `events` events.
#[inline]
pub(crate) fn spread_factor(events: u64, reference_events: f64, exponent: f64) -> f64 {
    if exponent == 0.0 {
        return 1.0;
    }
    (events.max(1) as f64 / reference_events).powf(-exponent)
}

/// Per feature, the values at probabilities (j + ½)/[`QUANTILES`] of all the windows.
fn marginal_quantiles(users: &[&[Sample]], d: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(d * QUANTILES);
    let mut col = Vec::new();
    for i in 0..d {
        col.clear();
        col.extend(users.iter().flat_map(|w| w.iter().map(|s| s.x[i])));
        col.sort_by(f64::total_cmp);
        let n = col.len();
        for j in 0..QUANTILES {
            let k = ((j as f64 + 0.5) / QUANTILES as f64 * n as f64) as usize;
            out.push(col[k.min(n - 1)]);
        }
    }
    out
}

/// Maps `x` (scoring space) into normal space with the marginal `quantiles`, the features
/// that are `mapped` only (module docs). Between two quantiles the normal value is
/// interpolated linearly between theirs (precomputed once), so a window costs no quantile
/// function call unless it hits a run of equal quantiles exactly.
#[inline]
pub(crate) fn to_normal(quantiles: &[f64], mapped: &[bool], x: &[f64], out: &mut [f64]) {
    const Q: usize = QUANTILES;
    static KNOT_Z: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let z_at = KNOT_Z.get_or_init(|| {
        (0..Q)
            .map(|j| normal_quantile((j as f64 + 0.5) / Q as f64))
            .collect()
    });
    for (((o, v), q), m) in out
        .iter_mut()
        .zip(x)
        .zip(quantiles.chunks_exact(Q))
        .zip(mapped)
    {
        if !m {
            *o = *v;
            continue;
        }
        let lo = q.partition_point(|k| k < v);
        *o = if lo < Q && q[lo] == *v {
            // A run of equal quantiles: the middle of its probability range.
            let hi = lo + q[lo..].partition_point(|k| k <= v);
            normal_quantile((0.5 * (lo + hi - 1) as f64 + 0.5) / Q as f64)
        } else if lo == 0 {
            z_at[0]
        } else if lo == Q {
            z_at[Q - 1]
        } else {
            let t = (v - q[lo - 1]) / (q[lo] - q[lo - 1]);
            z_at[lo - 1] + t * (z_at[lo] - z_at[lo - 1])
        };
    }
}

/// The standard normal quantile function for p in (0, 1) (Acklam's rational approximation,
/// relative error below 1.2e-9).
pub(crate) fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// T with T·W·Tᵀ = I and T·B·Tᵀ diagonal, and that diagonal: whiten W by its Cholesky
/// factor L, then rotate onto the eigenvectors of L⁻¹ B L⁻ᵀ.
fn diagonalize(modality: Modality, w: &Mat, b: &Mat) -> Result<(Mat, Vec<f64>), ScoringError> {
    let d = w.n;
    let degenerate = |_| ScoringError::Degenerate { modality };
    let chol = Cholesky::new(w).map_err(degenerate)?;
    // L⁻¹ column by column, from L⁻¹ e_j.
    let mut l_inv = Mat::zeros(d);
    let mut e = vec![0.0; d];
    for j in 0..d {
        e.iter_mut().for_each(|v| *v = 0.0);
        e[j] = 1.0;
        chol.solve_lower(&mut e);
        for (i, v) in e.iter().enumerate() {
            *l_inv.at_mut(i, j) = *v;
        }
    }
    let mut bw = l_inv.mul(b).mul(&l_inv.transpose());
    bw.symmetrize();
    let (vals, vecs) = sym_eigen(&bw);
    let t = vecs.transpose().mul(&l_inv);
    if vals.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(ScoringError::Degenerate { modality });
    }
    Ok((t, vals))
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms; relative error below 1e-13).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

fn ridge(m: &Mat) -> Mat {
    let mut out = m.clone();
    for i in 0..m.n {
        *out.at_mut(i, i) *= 1.0 + RIDGE;
    }
    out
}

pub(crate) fn mean<'a>(xs: impl Iterator<Item = &'a [f64]>, d: usize) -> Vec<f64> {
    let mut m = vec![0.0; d];
    let mut n = 0usize;
    for x in xs {
        n += 1;
        for (o, v) in m.iter_mut().zip(x) {
            *o += v;
        }
    }
    let n = n.max(1) as f64;
    m.iter_mut().for_each(|v| *v /= n);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut fact = 1.0f64;
        for n in 1..15 {
            fact *= n as f64;
            // Γ(n + 1) = n!
            assert!((ln_gamma(n as f64 + 1.0) - fact.ln()).abs() < 1e-10, "{n}");
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-10);
    }

    #[test]
    fn normal_quantile_matches_known_values() {
        assert!(normal_quantile(0.5).abs() < 1e-9);
        assert!((normal_quantile(0.975) - 1.959_963_985).abs() < 1e-7);
        assert!((normal_quantile(0.005) + 2.575_829_304).abs() < 1e-7);
        assert!((normal_quantile(0.1) + normal_quantile(0.9)).abs() < 1e-9);
    }

    #[test]
    fn mapping_is_monotone_and_splits_ties() {
        // One feature, its quantiles 0 (a point mass over the lower half), then 1..50.
        let q: Vec<f64> = (0..QUANTILES)
            .map(|j| if j < 50 { 0.0 } else { (j - 49) as f64 })
            .collect();
        let map = |v: f64| {
            let mut out = [0.0];
            to_normal(&q, &[true], &[v], &mut out);
            out[0]
        };
        // The point mass sits at the middle of its probability range, (0.005 + 0.495) / 2.
        assert!((map(0.0) - normal_quantile(0.25)).abs() < 1e-12);
        let xs = [-1.0, 0.0, 0.5, 1.0, 10.5, 49.5, 50.0];
        let zs: Vec<f64> = xs.iter().map(|v| map(*v)).collect();
        assert!(zs.windows(2).all(|w| w[0] < w[1]), "{zs:?}");
        // Clamped beyond the outer quantiles; unmapped features pass through.
        assert_eq!(map(1e6), map(50.0));
        let mut out = [0.0];
        to_normal(&q, &[false], &[7.5], &mut out);
        assert_eq!(out[0], 7.5);
    }

    #[test]
    fn spread_factor_is_one_at_the_reference_size() {
        assert_eq!(spread_factor(40, 40.0, 0.5), 1.0);
        assert!((spread_factor(10, 40.0, 0.5) - 2.0).abs() < 1e-12);
        assert_eq!(spread_factor(0, 40.0, 0.0), 1.0);
    }
}
