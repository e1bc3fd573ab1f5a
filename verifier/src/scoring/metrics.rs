//! Verification error figures from two sets of scores (higher = more genuine): equal error
//! rate, false acceptance at a fixed false rejection, and the area under the ROC curve.
//!
//! Owns only arithmetic on scores; never reads vectors or models.

/// Equal error rate: the rate at the threshold where false acceptance equals false rejection,
/// interpolated between the two neighbouring thresholds. `None` if either set is empty.
pub fn eer(genuine: &[f64], impostor: &[f64]) -> Option<f64> {
    if genuine.is_empty() || impostor.is_empty() {
        return None;
    }
    let g = sorted(genuine);
    let i = sorted(impostor);
    let mut thresholds: Vec<f64> = g.iter().chain(&i).copied().collect();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    thresholds.push(f64::INFINITY);
    // Accept when score >= t. FRR(t) = share of genuine < t (rises), FAR(t) = share of
    // impostors >= t (falls).
    let (gn, inn) = (g.len() as f64, i.len() as f64);
    let mut prev: Option<(f64, f64)> = None;
    for t in thresholds {
        let frr = g.partition_point(|&x| x < t) as f64 / gn;
        let far = (i.len() - i.partition_point(|&x| x < t)) as f64 / inn;
        if frr >= far {
            return Some(match prev {
                None => (frr + far) / 2.0,
                Some((pfrr, pfar)) => {
                    // Intersect the segment (pfrr, pfar) → (frr, far) with FRR = FAR.
                    let d0 = pfar - pfrr;
                    let d1 = far - frr;
                    let w = if d0 - d1 != 0.0 { d0 / (d0 - d1) } else { 0.5 };
                    pfrr + w * (frr - pfrr)
                }
            });
        }
        prev = Some((frr, far));
    }
    Some(0.0)
}

/// False acceptance rate at the threshold that rejects at most `frr` of the genuine scores.
pub fn far_at_frr(genuine: &[f64], impostor: &[f64], frr: f64) -> Option<f64> {
    if genuine.is_empty() || impostor.is_empty() {
        return None;
    }
    let g = sorted(genuine);
    // Largest threshold with share(genuine < t) <= frr: the k-th smallest genuine score.
    let k = (frr * g.len() as f64).floor() as usize;
    let t = g[k.min(g.len() - 1)];
    let accepted = impostor.iter().filter(|&&x| x >= t).count();
    Some(accepted as f64 / impostor.len() as f64)
}

/// Area under the ROC curve: the probability that a genuine score exceeds an impostor score
/// (ties count one half).
pub fn auc(genuine: &[f64], impostor: &[f64]) -> Option<f64> {
    if genuine.is_empty() || impostor.is_empty() {
        return None;
    }
    let i = sorted(impostor);
    let mut wins = 0.0;
    for &x in genuine {
        let below = i.partition_point(|&y| y < x);
        let not_above = i.partition_point(|&y| y <= x);
        wins += below as f64 + 0.5 * (not_above - below) as f64;
    }
    Some(wins / (genuine.len() as f64 * impostor.len() as f64))
}

/// Mean and (population) standard deviation; `None` when empty.
pub fn mean_std(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    Some((m, var.sqrt()))
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_scores_give_zero_eer_and_full_auc() {
        let g = [5.0, 6.0, 7.0];
        let i = [1.0, 2.0, 3.0];
        assert_eq!(eer(&g, &i), Some(0.0));
        assert_eq!(auc(&g, &i), Some(1.0));
        assert_eq!(far_at_frr(&g, &i, 0.01), Some(0.0));
    }

    #[test]
    fn identical_scores_give_half() {
        let g = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(auc(&g, &g), Some(0.5));
        let e = eer(&g, &g).unwrap();
        assert!((e - 0.5).abs() < 0.13, "{e}");
    }

    #[test]
    fn reversed_scores_give_full_eer() {
        let e = eer(&[1.0, 2.0], &[5.0, 6.0]).unwrap();
        assert!(e > 0.99, "{e}");
        assert_eq!(auc(&[1.0, 2.0], &[5.0, 6.0]), Some(0.0));
    }

    #[test]
    fn eer_interpolates() {
        // One impostor above every genuine score out of four: FAR 0.25 at FRR 0.
        let g = [10.0, 11.0, 12.0, 13.0];
        let i = [0.0, 1.0, 2.0, 20.0];
        let e = eer(&g, &i).unwrap();
        assert!((0.0..=0.25).contains(&e), "{e}");
    }
}
