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
//! | `mean` | mean of the users' means, in scoring space ([`super::input::transform`]) |
//! | `within` | pooled within-user covariance, row-major d×d, positive definite |
//! | `between` | covariance of the users' true means, row-major d×d, positive definite |
//! | `tail_dof` | Student-t degrees of freedom of the within-user spread (> 2), null for Gaussian |
//!
//! `tail_dof` is the maximum-likelihood ν of a multivariate Student-t with covariance
//! `within`, fitted to the users' leave-one-out residuals (each window minus the mean of the
//! user's other windows), over a grid from 2.5 to 1000; null when the Gaussian fits better.

use serde::{Deserialize, Serialize};

use super::ScoringError;
use super::input::{Modality, Sample};
use super::linalg::{Cholesky, Mat, clip_eigen};

/// Relative ridge added to each diagonal, so a feature constant across a small population
/// (no scroll at all, say) still gives an invertible covariance.
const RIDGE: f64 = 1e-4;

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
    /// Mean of the users' means.
    pub mean: Vec<f64>,
    /// Pooled within-user covariance, row-major.
    pub within: Vec<f64>,
    /// Between-user covariance of the users' true means, row-major.
    pub between: Vec<f64>,
    /// Student-t degrees of freedom of the within-user spread; `None` for Gaussian.
    pub tail_dof: Option<f64>,
}

impl PopulationModel {
    /// Learns the parameters from each user's windows. Users with fewer than two windows are
    /// skipped; `Ok(None)` when fewer than `min_users` remain. With `student_t`, the tail
    /// parameter is fitted too; without, the model is Gaussian.
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
        let mut within = Mat::zeros(d);
        let mut dof = 0.0;
        let mut means = Vec::with_capacity(usable.len());
        let mut inv_n = 0.0;
        let mut windows = 0;
        for w in &usable {
            if let Some(bad) = w.iter().find(|s| s.x.len() != d) {
                return Err(ScoringError::Dimension {
                    modality,
                    expected: d,
                    got: bad.x.len(),
                });
            }
            let m = mean(w.iter().map(|s| s.x.as_slice()), d);
            let mut dev = vec![0.0; d];
            for x in w.iter().map(|s| &s.x) {
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
        let between = clip_eigen(&between, floor);
        let within = ridge(&within);
        let tail_dof = if student_t {
            fit_tail_dof(modality, &usable, &within)?
        } else {
            None
        };
        let model = PopulationModel {
            modality,
            features: modality
                .feature_names()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            users: usable.len(),
            windows,
            mean: grand,
            within: within.a,
            between: ridge(&between).a,
            tail_dof,
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
        if self.mean.len() != d || self.within.len() != d * d || self.between.len() != d * d {
            return Err(ScoringError::Dimension {
                modality: self.modality,
                expected: d,
                got: self.mean.len(),
            });
        }
        if self.tail_dof.is_some_and(|v| !(v > 2.0 && v.is_finite())) {
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

    /// The same population with every covariance cut to its diagonal (features independent).
    pub fn diagonal(&self) -> PopulationModel {
        let keep_diag = |a: &[f64]| {
            let d = self.mean.len();
            Mat::diag(
                &Mat {
                    n: d,
                    a: a.to_vec(),
                }
                .diagonal(),
            )
            .a
        };
        PopulationModel {
            within: keep_diag(&self.within),
            between: keep_diag(&self.between),
            ..self.clone()
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

/// Candidate degrees of freedom for the tail fit.
const DOF_GRID: [f64; 22] = [
    2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 70.0, 100.0,
    150.0, 200.0, 300.0, 500.0, 1000.0,
];

/// Maximum-likelihood ν of a multivariate Student-t with covariance `within` for the users'
/// leave-one-out residuals; `None` when the Gaussian is at least as likely.
fn fit_tail_dof(
    modality: Modality,
    users: &[&[Sample]],
    within: &Mat,
) -> Result<Option<f64>, ScoringError> {
    let d = within.n;
    let chol = Cholesky::new(within).map_err(|_| ScoringError::Degenerate { modality })?;
    let mut qs = Vec::new();
    let mut r = vec![0.0; d];
    let mut scratch = vec![0.0; d];
    for w in users {
        let n = w.len() as f64;
        let m = mean(w.iter().map(|s| s.x.as_slice()), d);
        for s in w.iter() {
            for ((o, x), mu) in r.iter_mut().zip(&s.x).zip(&m) {
                *o = x - mu;
            }
            // x − mean(others) = n/(n−1) (x − x̄), with covariance W n/(n−1).
            qs.push(chol.quad_form(&r, &mut scratch) * n / (n - 1.0));
        }
    }
    let df = d as f64;
    let count = qs.len() as f64;
    let gaussian =
        -0.5 * qs.iter().sum::<f64>() - 0.5 * df * (2.0 * std::f64::consts::PI).ln() * count;
    let mut best: Option<(f64, f64)> = None;
    for nu in DOF_GRID {
        let norm = ln_gamma(0.5 * (nu + df))
            - ln_gamma(0.5 * nu)
            - 0.5 * df * ((nu - 2.0) * std::f64::consts::PI).ln();
        let ll = count * norm
            - 0.5 * (nu + df) * qs.iter().map(|q| (q / (nu - 2.0)).ln_1p()).sum::<f64>();
        if best.is_none_or(|(_, b)| ll > b) {
            best = Some((nu, ll));
        }
    }
    Ok(best.filter(|(_, ll)| *ll > gaussian).map(|(nu, _)| nu))
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
}
