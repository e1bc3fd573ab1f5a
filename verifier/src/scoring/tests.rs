//! Scoring end to end on synthetic users, where the right answer is known by construction.

use std::collections::BTreeMap;
use std::io::Cursor;

use cadence_wire::FeatureVector;
use cadence_wire::features::{KEYBOARD_LEN, KeyboardFeatures, MOUSE_LEN, MouseFeatures, SCHEMA};

use super::eval::{EvalOptions, PopulationSource, evaluate, read_labels, read_vectors};
use super::input::RejectReason;
use super::*;

/// Synthetic typists: each user has a typical value per feature (log-normal around 100 with
/// spread `between`), each window varies around it by `within` (also in log space).
struct Synth {
    rng: fastrand::Rng,
    between: f64,
    within: f64,
}

impl Synth {
    fn new(seed: u64, between: f64, within: f64) -> Synth {
        Synth {
            rng: fastrand::Rng::with_seed(seed),
            between,
            within,
        }
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller; 1 − u keeps the logarithm finite.
        let u = 1.0 - self.rng.f64();
        let v = self.rng.f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn user(&mut self, dim: usize) -> Vec<f64> {
        (0..dim)
            .map(|_| 100f64.ln() + self.between * self.normal())
            .collect()
    }

    fn window(&mut self, user: &[f64], shift: f64) -> Vec<f64> {
        user.iter()
            .map(|m| (m + shift + self.within * self.normal()).exp())
            .collect()
    }

    fn keyboard(&mut self, user: &[f64], shift: f64) -> FeatureVector {
        let mut k = [0.0; KEYBOARD_LEN];
        k.copy_from_slice(&self.window(user, shift));
        FeatureVector {
            schema: SCHEMA.to_owned(),
            duration_ms: 10_000,
            keys: 50,
            mouse_events: 0,
            keyboard: Some(KeyboardFeatures(k)),
            mouse: None,
        }
    }

    fn mouse(&mut self, user: &[f64], shift: f64) -> FeatureVector {
        let mut k = [0.0; MOUSE_LEN];
        k.copy_from_slice(&self.window(user, shift));
        FeatureVector {
            schema: SCHEMA.to_owned(),
            duration_ms: 60_000,
            keys: 0,
            mouse_events: 200,
            keyboard: None,
            mouse: Some(MouseFeatures(k)),
        }
    }
}

fn line(v: &FeatureVector, labels: &[(&str, &str)]) -> String {
    let mut j = serde_json::to_value(v).unwrap();
    for (k, val) in labels {
        j[*k] = (*val).into();
    }
    j.to_string()
}

/// `users` keyboard users with `windows` windows each, as replay's JSON lines.
fn keyboard_lines(s: &mut Synth, users: usize, windows: usize) -> String {
    let mut out = String::new();
    for u in 0..users {
        let mu = s.user(KEYBOARD_LEN);
        for _ in 0..windows {
            out.push_str(&line(
                &s.keyboard(&mu, 0.0),
                &[("subject", &format!("u{u}"))],
            ));
            out.push('\n');
        }
    }
    out
}

fn opts(enroll: usize, impostors: usize) -> EvalOptions {
    EvalOptions {
        enroll: Some(enroll),
        impostors,
        ..EvalOptions::default()
    }
}

#[test]
fn users_drawn_apart_give_an_eer_near_zero() {
    let mut s = Synth::new(1, 0.3, 0.05);
    let data = read_vectors(Cursor::new(keyboard_lines(&mut s, 40, 12))).unwrap();
    let r = evaluate(&data, None, &opts(5, 20)).unwrap();
    let k = &r.modalities[0];
    assert_eq!(r.method, "plda");
    assert_eq!(k.users, 40);
    assert!(k.eer_mean.unwrap() < 0.02, "{:?}", k.eer_mean);
    assert!(k.auc.unwrap() > 0.99, "{:?}", k.auc);
    let c = k.continuous.as_ref().unwrap();
    // Not every run: the calibration puts trust's neutral point (0.55) a little past halfway
    // from the cohort's median to the user's genuine level, and the closest impostors of very
    // distinct users (log-likelihood ratios are skewed towards the genuine side) can sit just
    // above it.
    assert!(c.detection_rate > 0.8, "{c:?}");
    assert!(c.ania_windows.unwrap() < 5.0, "{c:?}");
    assert_eq!(c.false_alerts, 0, "{c:?}");
}

#[test]
fn users_drawn_alike_give_an_eer_near_one_half() {
    let mut s = Synth::new(2, 0.0, 0.05);
    let data = read_vectors(Cursor::new(keyboard_lines(&mut s, 40, 12))).unwrap();
    let r = evaluate(&data, None, &opts(5, 20)).unwrap();
    let k = &r.modalities[0];
    let auc = k.auc.unwrap();
    assert!((0.4..0.6).contains(&auc), "AUC {auc}");
    let e = k.eer_global.unwrap();
    assert!((0.35..0.65).contains(&e), "EER {e}");
}

#[test]
fn bad_vectors_are_refused_with_a_reason_and_counted() {
    let mut s = Synth::new(3, 0.3, 0.05);
    let mu = s.user(KEYBOARD_LEN);
    let good = line(&s.keyboard(&mu, 0.0), &[("subject", "u1")]);
    let other_schema = good.replace(SCHEMA, "cadence.features.v9");
    let mut missing: serde_json::Value = serde_json::from_str(&good).unwrap();
    missing["keyboard"]
        .as_object_mut()
        .unwrap()
        .remove("dd_p50");
    let mut null: serde_json::Value = serde_json::from_str(&good).unwrap();
    null["keyboard"]["hold_p50"] = serde_json::Value::Null;
    let huge = {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["keyboard"]["hold_p50"] = 12345.5.into();
        v.to_string().replace("12345.5", "1e999")
    };
    let unlabelled = line(&s.keyboard(&mu, 0.0), &[]);
    let text = [
        good.clone(),
        other_schema,
        missing.to_string(),
        null.to_string(),
        huge,
        unlabelled,
        "{".to_owned(),
        good,
    ]
    .join("\n");
    let data = read_vectors(Cursor::new(text)).unwrap();
    assert_eq!(data.lines, 8);
    assert_eq!(data.windows.len(), 2);
    let count = |r| data.rejected.get(&r).copied().unwrap_or(0);
    assert_eq!(count(RejectReason::UnknownSchema), 1);
    assert_eq!(count(RejectReason::MissingFeature), 1);
    assert_eq!(count(RejectReason::NonFinite), 2);
    assert_eq!(count(RejectReason::Unlabelled), 1);
    assert_eq!(count(RejectReason::Malformed), 1);

    // The production path refuses a non-finite vector instead of scoring it.
    let mut v = s.keyboard(&mu, 0.0);
    if let Some(k) = v.keyboard.as_mut() {
        k.0[3] = f64::NAN;
    }
    let e = UserProfile::default()
        .observe("u1", &v, &Population::default(), &ScoringConfig::default())
        .unwrap_err();
    assert!(
        matches!(&e, ScoringError::Rejected(r) if r.reason == RejectReason::NonFinite),
        "{e}"
    );
}

#[test]
fn users_with_too_few_windows_are_left_out_and_counted() {
    let mut s = Synth::new(4, 0.3, 0.05);
    let mut text = keyboard_lines(&mut s, 12, 10);
    let mu = s.user(KEYBOARD_LEN);
    for _ in 0..3 {
        text.push_str(&line(&s.keyboard(&mu, 0.0), &[("subject", "short")]));
        text.push('\n');
    }
    let data = read_vectors(Cursor::new(text)).unwrap();
    let r = evaluate(&data, None, &opts(5, 5)).unwrap();
    let k = &r.modalities[0];
    assert_eq!(k.users, 12);
    assert_eq!(k.users_left_out, 1);
    assert!(
        k.notes.iter().any(|n| n.contains("1 user(s) left out")),
        "{:?}",
        k.notes
    );
    assert_eq!(k.genuine_attempts, 12 * 5);
}

#[test]
fn too_few_users_for_a_population_fall_back_to_the_scaled_distance() {
    let mut s = Synth::new(5, 0.3, 0.05);
    let data = read_vectors(Cursor::new(keyboard_lines(&mut s, 6, 10))).unwrap();
    let o = EvalOptions {
        population: PopulationSource::Enrolled,
        ..opts(5, 5)
    };
    let r = evaluate(&data, None, &o).unwrap();
    let k = &r.modalities[0];
    assert!(
        k.notes
            .iter()
            .any(|n| n.contains("fell back to scaled Manhattan")),
        "{:?}",
        k.notes
    );
    assert!(k.eer_mean.unwrap() < 0.1, "{:?}", k.eer_mean);
}

/// A population of `users` keyboard users (5 enrollment windows each) and their means.
fn population(s: &mut Synth, users: usize) -> (Population, Vec<Vec<f64>>) {
    let cfg = ScoringConfig::default();
    let mus: Vec<Vec<f64>> = (0..users).map(|_| s.user(KEYBOARD_LEN)).collect();
    let windows: Vec<Vec<FeatureVector>> = mus
        .iter()
        .map(|mu| (0..5).map(|_| s.keyboard(mu, 0.0)).collect())
        .collect();
    let names: Vec<String> = (0..users).map(|u| format!("u{u}")).collect();
    let refs: Vec<(&str, &[FeatureVector])> = names
        .iter()
        .zip(&windows)
        .map(|(n, w)| (n.as_str(), w.as_slice()))
        .collect();
    (Population::learn(&refs, &cfg, 1).unwrap(), mus)
}

#[test]
fn trust_ignores_one_odd_window_but_alerts_on_a_run() {
    let mut s = Synth::new(6, 0.3, 0.05);
    let (pop, mus) = population(&mut s, 30);
    let cfg = ScoringConfig::default();
    let mut p = UserProfile::default();
    for i in 0..5 {
        let o = p
            .observe("u0", &s.keyboard(&mus[0], 0.0), &pop, &cfg)
            .unwrap();
        assert_eq!(o.enrolling, vec![(Modality::Keyboard, 4 - i)]);
        assert!(o.score.is_none());
    }
    for _ in 0..10 {
        let o = p
            .observe("u0", &s.keyboard(&mus[0], 0.0), &pop, &cfg)
            .unwrap();
        assert!(o.calibrated && !o.alert, "{o:?}");
        assert!(o.score.unwrap() > 0.5, "{o:?}");
    }
    let odd = p
        .observe("u0", &s.keyboard(&mus[1], 0.0), &pop, &cfg)
        .unwrap();
    assert!(odd.score.unwrap() < 0.5 && !odd.alert, "{odd:?}");
    for _ in 0..3 {
        assert!(
            !p.observe("u0", &s.keyboard(&mus[0], 0.0), &pop, &cfg)
                .unwrap()
                .alert
        );
    }
    let mut run = 0;
    loop {
        run += 1;
        let o = p
            .observe("u0", &s.keyboard(&mus[2], 0.0), &pop, &cfg)
            .unwrap();
        assert!(
            o.adapted.is_empty(),
            "an impostor's window never adapts the baseline"
        );
        if o.alert {
            break;
        }
        assert!(run < 10, "no alert after {run} impostor windows");
    }
    assert!((2..=4).contains(&run), "alert after {run} impostor windows");
    assert_eq!(p.trust.level, 100.0);
}

#[test]
fn adaptation_follows_slow_genuine_drift() {
    let mut s = Synth::new(7, 0.3, 0.05);
    let (pop, mus) = population(&mut s, 30);
    let adapting = ScoringConfig::default();
    let frozen = ScoringConfig {
        adapt_above: f64::INFINITY,
        ..ScoringConfig::default()
    };
    let mut alerts = [0, 0];
    let mut last = [UserProfile::default(), UserProfile::default()];
    for (k, cfg) in [&adapting, &frozen].into_iter().enumerate() {
        let mut s = Synth::new(8, 0.3, 0.05);
        let mut p = UserProfile::default();
        // The user's rhythm drifts by 0.2% a window, 120% over 400 windows: sixteen times
        // the spread of their windows, as far as another user is from them.
        for i in 0..405 {
            let shift = if i < 5 { 0.0 } else { 0.002 * (i - 5) as f64 };
            let o = p
                .observe("u0", &s.keyboard(&mus[0], shift), &pop, cfg)
                .unwrap();
            alerts[k] += usize::from(o.alert);
        }
        last[k] = p;
    }
    assert_eq!(
        alerts[0], 0,
        "adapting baseline raised alerts on genuine drift"
    );
    assert!(
        alerts[1] > 0,
        "a frozen baseline should lose the drifting user"
    );
    let b = last[0].keyboard.baseline.as_ref().unwrap();
    assert!(b.adapted > 100, "{}", b.adapted);
    assert_eq!(last[1].keyboard.baseline.as_ref().unwrap().adapted, 0);

    // An administrator's reset starts enrollment again.
    let mut p = last[0].clone();
    p.reset_baseline(Modality::Keyboard);
    assert!(p.keyboard.baseline.is_none());
    let o = p
        .observe("u0", &s.keyboard(&mus[0], 0.0), &pop, &adapting)
        .unwrap();
    assert_eq!(o.enrolling, vec![(Modality::Keyboard, 4)]);
}

#[test]
fn keyboard_and_mouse_of_one_window_are_fused() {
    let mut s = Synth::new(9, 0.3, 0.05);
    let cfg = ScoringConfig::default();
    let users: Vec<(Vec<f64>, Vec<f64>)> = (0..20)
        .map(|_| (s.user(KEYBOARD_LEN), s.user(MOUSE_LEN)))
        .collect();
    let both = |s: &mut Synth, u: &(Vec<f64>, Vec<f64>)| {
        let mut v = s.keyboard(&u.0, 0.0);
        v.mouse = s.mouse(&u.1, 0.0).mouse;
        v.mouse_events = 200;
        v
    };
    let windows: Vec<Vec<FeatureVector>> = users
        .iter()
        .map(|u| {
            (0..cfg.mouse_enroll_windows)
                .map(|_| both(&mut s, u))
                .collect()
        })
        .collect();
    let names: Vec<String> = (0..users.len()).map(|u| format!("u{u}")).collect();
    let refs: Vec<(&str, &[FeatureVector])> = names
        .iter()
        .zip(&windows)
        .map(|(n, w)| (n.as_str(), w.as_slice()))
        .collect();
    let pop = Population::learn(&refs, &cfg, 1).unwrap();
    assert!(pop.keyboard.is_some() && pop.mouse.is_some());
    let mut p = UserProfile::default();
    for v in &windows[0] {
        p.observe("u0", v, &pop, &cfg).unwrap();
    }
    let o = p
        .observe("u0", &both(&mut s, &users[0]), &pop, &cfg)
        .unwrap();
    assert_eq!(o.scores.len(), 2, "{o:?}");
    let mean = (o.scores[0].1 + o.scores[1].1) / 2.0;
    assert!((o.score.unwrap() - mean).abs() < 1e-12);
    assert!(o.score.unwrap() > 0.5, "{o:?}");
    let o = p
        .observe("u0", &both(&mut s, &users[1]), &pop, &cfg)
        .unwrap();
    assert!(o.score.unwrap() < 0.5, "{o:?}");
}

#[test]
fn state_round_trips_through_json_and_a_foreign_population_is_refused() {
    let mut s = Synth::new(10, 0.3, 0.05);
    let (pop, mus) = population(&mut s, 12);
    let cfg = ScoringConfig::default();
    let mut p = UserProfile::default();
    for _ in 0..8 {
        p.observe("u0", &s.keyboard(&mus[0], 0.0), &pop, &cfg)
            .unwrap();
    }
    // serde_json may round a float's last bit on the way back (no `float_roundtrip`), so a
    // reloaded state scores the same to within rounding, not bit for bit.
    let json = serde_json::to_string(&p).unwrap();
    let mut back: UserProfile = serde_json::from_str(&json).unwrap();
    let pop_json = serde_json::to_string(&pop).unwrap();
    let pop_back: Population = serde_json::from_str(&pop_json).unwrap();
    pop_back.check().unwrap();
    let v = s.keyboard(&mus[0], 0.0);
    let a = p.observe("u0", &v, &pop, &cfg).unwrap();
    let b = back.observe("u0", &v, &pop_back, &cfg).unwrap();
    assert!(
        (a.score.unwrap() - b.score.unwrap()).abs() < 1e-9,
        "{a:?} {b:?}"
    );
    assert_eq!(a.trust.map(|t| t.alert), b.trust.map(|t| t.alert));
    // Learned under another schema, or before the schema was recorded: refused, even with
    // no model at all (too few users), only a cohort.
    for schema in [serde_json::Value::Null, "cadence.features.v2".into()] {
        let mut older: serde_json::Value = serde_json::from_str(&pop_json).unwrap();
        older["schema"] = schema.clone();
        older["keyboard"] = serde_json::Value::Null;
        older["mouse"] = serde_json::Value::Null;
        assert!(!older["keyboard_cohort"].as_array().unwrap().is_empty());
        let older: Population = serde_json::from_value(older).unwrap();
        assert!(
            matches!(older.check(), Err(ScoringError::PopulationSchema { .. })),
            "{schema}"
        );
    }
    assert!(Population::default().check().is_ok());
    let mut foreign: serde_json::Value = serde_json::from_str(&pop_json).unwrap();
    foreign["keyboard"]["features"][0] = "key_a_hold".into();
    let foreign: Population = serde_json::from_value(foreign).unwrap();
    assert!(matches!(
        foreign.check(),
        Err(ScoringError::PopulationSchema { .. })
    ));
    let cfg: ScoringConfig = serde_json::from_str(r#"{"keyboard_enroll_windows": 8}"#).unwrap();
    assert_eq!(cfg.keyboard_enroll_windows, 8);
    assert!(serde_json::from_str::<ScoringConfig>(r#"{"enroll": 8}"#).is_err());
}

#[test]
fn labelled_sessions_are_scored_against_the_claimed_user() {
    let mut s = Synth::new(11, 0.3, 0.1);
    let users: Vec<Vec<f64>> = (0..10).map(|_| s.user(MOUSE_LEN)).collect();
    let mut text = String::new();
    let mut labels = String::from("filename,is_illegal\n");
    for (u, mu) in users.iter().enumerate() {
        let name = format!("user{u}");
        for _ in 0..30 {
            let v = s.mouse(mu, 0.0);
            text.push_str(&line(
                &v,
                &[
                    ("subject", &name),
                    ("session", "train"),
                    ("split", "training"),
                ],
            ));
            text.push('\n');
        }
        for k in 0..6 {
            let session = format!("s{u}_{k}");
            let illegal = k % 2 == 1;
            let source = if illegal {
                &users[(u + 1) % users.len()]
            } else {
                mu
            };
            for _ in 0..3 {
                let v = s.mouse(source, 0.0);
                text.push_str(&line(
                    &v,
                    &[("subject", &name), ("session", &session), ("split", "test")],
                ));
                text.push('\n');
            }
            labels.push_str(&format!("{session},{}\n", u8::from(illegal)));
        }
    }
    labels.push_str("never_seen,0\n");
    let data = read_vectors(Cursor::new(text)).unwrap();
    let labels: BTreeMap<String, bool> = read_labels(Cursor::new(labels)).unwrap();
    let r = evaluate(&data, Some(&labels), &EvalOptions::default()).unwrap();
    let m = &r.modalities[0];
    assert_eq!(m.modality, Modality::Mouse);
    assert_eq!((m.genuine_attempts, m.impostor_attempts), (30, 30));
    assert!(m.auc.unwrap() > 0.99, "{:?}", m.auc);
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("1 labelled session(s) have no")),
        "{:?}",
        m.notes
    );
    assert!(!r.to_text().is_empty());
}
