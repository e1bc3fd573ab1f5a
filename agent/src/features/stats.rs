//! Order statistics over one window's samples, in linear time.
//!
//! Quantiles use nearest rank on a partially ordered buffer (`select_nth_unstable`), so closing
//! a window costs O(n) per statistic rather than a full sort: an 8 kHz mouse fills a one-minute
//! window with half a million samples.

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

    /// The `q` quantile (0..=1) by nearest rank, or `None` when empty.
    pub fn quantile(&mut self, q: f64) -> Option<f64> {
        if self.v.is_empty() {
            return None;
        }
        let idx = ((q * (self.v.len() - 1) as f64).round() as usize).min(self.v.len() - 1);
        let (_, x, _) = self.v.select_nth_unstable_by(idx, f32::total_cmp);
        Some(f64::from(*x))
    }

    /// Several quantiles at once (each O(n)).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut s = Samples::default();
        for x in [5.0, 1.0, 4.0, 2.0, 3.0] {
            s.push(x);
        }
        assert_eq!(s.quantile(0.0), Some(1.0));
        assert_eq!(s.quantile(0.5), Some(3.0));
        assert_eq!(s.quantile(1.0), Some(5.0));
        assert_eq!(s.quantiles([0.25, 0.75]), Some([2.0, 4.0]));
        assert_eq!(s.mad(), Some(1.0));
        assert_eq!(Samples::default().quantile(0.5), None);
    }
}
