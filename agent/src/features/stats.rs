//! Order statistics over one window's samples.
//!
//! Quantiles are Harrell–Davis estimates: a weighted mean of every order statistic, with the
//! weights of a Beta((n + 1) q, (n + 1)(1 − q)) distribution over the ranks. A keyboard window
//! holds tens of flights and a class (space, say) only a handful, and there the single order
//! statistic that nearest rank picks jumps from one sample to the next; the weighted mean is
//! the same quantity with a far smaller sampling spread (a pointer window's clicks and strokes
//! are few too). Above [`SMOOTH_MAX`] samples the two
//! differ by much less than a window's own noise, so quantiles take nearest rank on a
//! partially ordered buffer (`select_nth_unstable`) instead: closing a window then costs O(n)
//! per statistic rather than a sort, and an 8 kHz mouse fills a one-minute window with half a
//! million samples.

/// The largest sample count whose quantiles are Harrell–Davis estimates (module docs).
pub const SMOOTH_MAX: usize = 1024;

/// Rounds a feature for output: three decimals are finer than any timer involved.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A sample buffer that answers quantiles. Reorders its contents while answering.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// The values, in arbitrary order after a query.
    v: Vec<f32>,
}

impl Samples {
    /// Adds a sample.
    #[inline]
    pub fn push(&mut self, x: f32) {
        self.v.push(x);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.v.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    /// Drops every sample, keeping the allocation for the next window.
    pub fn clear(&mut self) {
        self.v.clear();
    }

    /// Sum of the samples.
    pub fn sum(&self) -> f64 {
        self.v.iter().map(|&x| f64::from(x)).sum()
    }

    /// Mean, or `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (!self.v.is_empty()).then(|| self.sum() / self.v.len() as f64)
    }

    /// The `q` quantile (0..=1), or `None` when empty: Harrell–Davis up to [`SMOOTH_MAX`]
    /// samples, nearest rank above, and the extreme sample at q = 0 or 1.
    pub fn quantile(&mut self, q: f64) -> Option<f64> {
        if self.v.is_empty() {
            return None;
        }
        let n = (self.v.len() + 1) as f64;
        // Far enough from 0 and 1 that the Beta parameters (n + 1) q and (n + 1)(1 − q) keep
        // their logarithms finite (the callers' q are 0.1 to 0.9).
        if self.v.len() <= SMOOTH_MAX && n * q.min(1.0 - q) > 1e-9 {
            self.v.sort_unstable_by(f32::total_cmp);
            return Some(harrell_davis(&self.v, q));
        }
        self.nearest(q)
    }

    /// The `q` quantile (0..=1) by nearest rank whatever the sample count, or `None` when
    /// empty. O(n).
    fn nearest(&mut self, q: f64) -> Option<f64> {
        if self.v.is_empty() {
            return None;
        }
        let idx = ((q * (self.v.len() - 1) as f64).round() as usize).min(self.v.len() - 1);
        let (_, x, _) = self.v.select_nth_unstable_by(idx, f32::total_cmp);
        Some(f64::from(*x))
    }

    /// Several quantiles at once (a sort, then O(n) each, up to [`SMOOTH_MAX`] samples).
    pub fn quantiles<const N: usize>(&mut self, qs: [f64; N]) -> Option<[f64; N]> {
        let mut out = [0.0; N];
        for (o, q) in out.iter_mut().zip(qs) {
            *o = self.quantile(q)?;
        }
        Some(out)
    }

    /// Median absolute deviation from the median, or `None` when empty.
    pub fn mad(&mut self) -> Option<f64> {
        let m = self.quantile(0.5)? as f32;
        let mut dev = Samples {
            v: self.v.iter().map(|&x| (x - m).abs()).collect(),
        };
        dev.quantile(0.5)
    }

    /// Several quantiles when there are at least `min` samples.
    pub fn quantiles_if<const N: usize>(&mut self, min: usize, qs: [f64; N]) -> Option<[f64; N]> {
        if self.v.len() >= min {
            self.quantiles(qs)
        } else {
            None
        }
    }

    /// The median when there are at least `min` samples.
    pub fn median_if(&mut self, min: usize) -> Option<f64> {
        if self.v.len() >= min {
            self.quantile(0.5)
        } else {
            None
        }
    }
}

/// Harrell–Davis estimate of the `q` quantile (0 < q < 1) of `sorted` (ascending, not empty):
/// Σ wᵢ x₍ᵢ₎ with wᵢ the mass of Beta((n + 1) q, (n + 1)(1 − q)) on ((i − 1)/n, i/n]. The
/// masses come from the density by the midpoint rule (at least four points per rank, more for
/// small n), normalized to sum to one; where the density has an integrable pole (at 0 when
/// (n + 1) q < 1, at 1 when (n + 1)(1 − q) < 1) the cell at the pole is integrated exactly.
/// The density is taken relative to its largest midpoint value, so nothing overflows.
fn harrell_davis(sorted: &[f32], q: f64) -> f64 {
    let n = sorted.len();
    let nf = n as f64;
    // Exponents of t and 1 − t in the Beta density.
    let (ap, bp) = ((nf + 1.0) * q, (nf + 1.0) * (1.0 - q));
    let (a, b) = (ap - 1.0, bp - 1.0);
    let steps = (256 / n).max(4);
    let h = 1.0 / (nf * steps as f64);
    let log_density = |t: f64| a * t.ln() + b * (-t).ln_1p();
    // The log-density is concave when both exponents are positive (largest at the mode),
    // else monotone or U-shaped (largest at an end).
    let (first, last) = (0.5 * h, 1.0 - 0.5 * h);
    let mut peak = log_density(first).max(log_density(last));
    if a > 0.0 && b > 0.0 {
        peak = peak.max(log_density((a / (a + b)).clamp(first, last)));
    }
    // A cell at a pole takes the pole's exact integral, h^(e+1)/(e+1), with the other factor
    // at the cell's middle (relative to h, like every midpoint term).
    let cells = n * steps;
    let cell = |j: usize| {
        let t = (j as f64 + 0.5) * h;
        if j == 0 && a < 0.0 {
            a * h.ln() - ap.ln() + b * (-t).ln_1p()
        } else if j + 1 == cells && b < 0.0 {
            b * h.ln() - bp.ln() + a * t.ln()
        } else {
            log_density(t)
        }
    };
    let (mut sum, mut total) = (0.0, 0.0);
    for (i, &x) in sorted.iter().enumerate() {
        let w: f64 = (0..steps).map(|k| (cell(i * steps + k) - peak).exp()).sum();
        sum += w * f64::from(x);
        total += w;
    }
    sum / total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_harrell_davis_estimates() {
        let mut s = Samples::default();
        for x in [5.0, 1.0, 4.0, 2.0, 3.0] {
            s.push(x);
        }
        // Reference values from an independent implementation (exact Beta CDF weights).
        let close = |got: Option<f64>, want: f64| {
            let got = got.unwrap();
            assert!(
                (got - want).abs() < 5e-4 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        };
        close(s.quantile(0.1), 1.192_516);
        close(s.quantile(0.25), 1.769_924);
        close(s.quantile(0.5), 3.0);
        close(s.quantile(0.9), 4.807_484);
        let mut skewed = Samples::default();
        for x in [1.0, 2.0, 2.0, 3.0, 10.0, 40.0] {
            skewed.push(x);
        }
        close(skewed.quantile(0.1), 1.216_821);
        close(skewed.quantile(0.5), 4.555_571);
        close(skewed.quantile(0.9), 33.482_413);
        // Extremes are the extreme samples; one sample is its own every quantile.
        assert_eq!(s.quantile(0.0), Some(1.0));
        assert_eq!(s.quantile(1.0), Some(5.0));
        let mut one = Samples::default();
        one.push(7.0);
        assert_eq!(one.quantile(0.3), Some(7.0));
        assert_eq!(Samples::default().quantile(0.5), None);
        // A constant sample, and the MAD of a symmetric one.
        let mut flat = Samples::default();
        (0..40).for_each(|_| flat.push(3.0));
        close(flat.quantile(0.1), 3.0);
        // Deviations 2, 1, 0, 1, 2 from the median 3.
        close(s.mad(), 1.259_520);
    }

    #[test]
    fn quantiles_rise_with_q_and_stay_within_the_sample() {
        let mut s = Samples::default();
        for i in 0..37 {
            s.push(((i * 7919) % 101) as f32);
        }
        let q: Vec<f64> = (1..20)
            .map(|k| s.quantile(k as f64 / 20.0).unwrap())
            .collect();
        assert!(q.windows(2).all(|w| w[0] < w[1]), "{q:?}");
        assert!(q.iter().all(|v| (0.0..=100.0).contains(v)), "{q:?}");
    }

    #[test]
    fn large_samples_take_nearest_rank() {
        let mut s = Samples::default();
        for i in 0..=SMOOTH_MAX {
            s.push(i as f32);
        }
        assert_eq!(s.quantile(0.5), Some((SMOOTH_MAX / 2) as f64));
        assert_eq!(s.quantile(0.1), Some((SMOOTH_MAX as f64 * 0.1).round()));
    }
}
