//! Scoring figures, printed, on one core: what a verifier spends per window.
//!
//! `cargo bench -p cadence-verifier --bench scoring`
//!
//! Synthetic users (seeded; log-normal features around realistic magnitudes): 500 keyboard
//! users with 5 enrollment windows each, 100 mouse users with 20. Prints
//! (a) learning the population, (b) compiling one user's detector (cohort normalization and
//! leave-one-out calibration included: paid at enrollment, after an adaptation and after a
//! new population), (c) `Detector::score` alone, (d) `UserProfile::observe` end to end
//! (validation, transform, score, trust) on windows of another user (no adaptation), and
//! (e) on the user's own windows, where adaptation recompiles the detector after each
//! confidently genuine window. Every loop is bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use cadence_verifier::scoring::{Detector, Modality, Population, ScoringConfig, UserProfile};
use cadence_wire::features::{
    FeatureVector, KEYBOARD_LEN, KeyboardFeatures, MOUSE_LEN, MouseFeatures, SCHEMA,
};

const RUN: Duration = Duration::from_secs(2);

struct Synth(fastrand::Rng);

impl Synth {
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.0.f64();
        let v = self.0.f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn user(&mut self, dim: usize) -> Vec<f64> {
        (0..dim)
            .map(|i| (20.0 + 10.0 * i as f64).ln() + 0.3 * self.normal())
            .collect()
    }

    fn window(&mut self, m: Modality, user: &[f64]) -> FeatureVector {
        let x: Vec<f64> = user
            .iter()
            .map(|mu| (mu + 0.1 * self.normal()).exp())
            .collect();
        let mut v = FeatureVector {
            schema: SCHEMA.to_owned(),
            duration_ms: 60_000,
            keys: 0,
            mouse_events: 0,
            keyboard: None,
            mouse: None,
        };
        match m {
            Modality::Keyboard => {
                let mut k = [0.0; KEYBOARD_LEN];
                k.copy_from_slice(&x);
                v.keys = 120;
                v.keyboard = Some(KeyboardFeatures(k));
            }
            Modality::Mouse => {
                let mut k = [0.0; MOUSE_LEN];
                k.copy_from_slice(&x);
                v.mouse_events = 400;
                v.mouse = Some(MouseFeatures(k));
            }
        }
        v
    }
}

/// Runs `f` repeatedly for about `RUN`; returns calls per second.
fn rate(mut f: impl FnMut() -> usize) -> f64 {
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < RUN {
        n += f();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let cfg = ScoringConfig::default();
    let mut s = Synth(fastrand::Rng::with_seed(42));
    for (m, users) in [(Modality::Keyboard, 500), (Modality::Mouse, 100)] {
        let enroll = cfg.enroll_windows(m);
        let mus: Vec<Vec<f64>> = (0..users).map(|_| s.user(m.dim())).collect();
        let windows: Vec<Vec<FeatureVector>> = mus
            .iter()
            .map(|mu| (0..enroll).map(|_| s.window(m, mu)).collect())
            .collect();
        let names: Vec<String> = (0..users).map(|u| format!("user{u}")).collect();
        let refs: Vec<(&str, &[FeatureVector])> = names
            .iter()
            .zip(&windows)
            .map(|(n, w)| (n.as_str(), w.as_slice()))
            .collect();

        let t0 = Instant::now();
        let pop = Population::learn(&refs, &cfg, 1).unwrap();
        let learn = t0.elapsed();
        assert!(pop.model(m).is_some());

        let mut enrolled = UserProfile::default();
        for v in &windows[0] {
            enrolled.observe("user0", v, &pop, &cfg).unwrap();
        }
        let builds = rate(|| {
            let mut p = enrolled.clone();
            black_box(p.modality_mut(m).detector(m, "user0", &pop, &cfg).unwrap());
            1
        });

        let mut compiled = enrolled.clone();
        let det = compiled
            .modality_mut(m)
            .detector(m, "user0", &pop, &cfg)
            .unwrap()
            .unwrap()
            .clone();
        let own: Vec<FeatureVector> = (0..256).map(|_| s.window(m, &mus[0])).collect();
        let other: Vec<FeatureVector> = (0..256).map(|_| s.window(m, &mus[1])).collect();
        let xs: Vec<_> = own.iter().map(|v| m.sample(v).unwrap()).collect();
        let scores = rate(|| {
            for x in &xs {
                black_box(det.score(black_box(x)).unwrap());
            }
            xs.len()
        });

        // The same scoring with every feature mapped onto the normal scale, as a population
        // that chose the mapping scores (Aalto's keyboard does; this synthetic one may not):
        // the cost only, the model's other parameters are left as learned.
        let model = pop.model(m).unwrap();
        let chosen = model.mapped.iter().filter(|x| **x).count();
        let mut all_mapped = model.clone();
        all_mapped.mapped.iter_mut().for_each(|x| *x = true);
        let baseline = compiled.modality_mut(m).baseline.clone().unwrap();
        let det_mapped = Detector::build(&baseline, Some(&all_mapped), cfg.method).unwrap();
        let scores_mapped = rate(|| {
            for x in &xs {
                black_box(det_mapped.score(black_box(x)).unwrap());
            }
            xs.len()
        });

        let mut p = compiled.clone();
        let impostor = rate(|| {
            for v in &other {
                black_box(p.observe("user0", black_box(v), &pop, &cfg).unwrap());
            }
            other.len()
        });
        let mut p = compiled.clone();
        let mut adapted = 0;
        let mut seen = 0;
        let genuine = rate(|| {
            for v in &own {
                let o = p.observe("user0", black_box(v), &pop, &cfg).unwrap();
                adapted += o.adapted.len();
                seen += 1;
            }
            own.len()
        });

        println!(
            "{m} ({} features): population of {users} users learned in {:.1} ms",
            m.dim(),
            learn.as_secs_f64() * 1e3
        );
        println!(
            "  detector compile (cohort {} windows, {} leave-one-out): {:.0} µs",
            pop.cohort(m).len(),
            enroll,
            1e6 / builds
        );
        println!(
            "  Detector::score: {scores:.0} windows/s (population maps {chosen} of {} features)",
            m.dim()
        );
        println!("  Detector::score, every feature mapped: {scores_mapped:.0} windows/s");
        println!("  UserProfile::observe, another user's windows: {impostor:.0} windows/s");
        println!(
            "  UserProfile::observe, own windows ({:.0}% adapt, each recompiles): {genuine:.0} \
             windows/s",
            100.0 * adapted as f64 / seen.max(1) as f64
        );
    }
}
