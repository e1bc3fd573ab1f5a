//! The scoring stage: stored windows in, score rows, trust levels and alerts out.
//!
//! Owns when and in what order windows are scored, the in-memory [`Population`], and when it
//! is learned again. Runs the production scoring code ([`crate::scoring`]) unchanged: per
//! window [`UserProfile::observe`] with the device id as the scoring user key (the verifier
//! enrolls one device id per (device, OS user), so a baseline is per user and device). Hands
//! on, per scorer pass and in one transaction ([`Store::save_scoring`]): the device's updated
//! profile, a score row per window, and a trust alert with its webhook outbox rows whenever a
//! window drove the trust level below the lockout.
//!
//! Never scores a refused window as zeros: a window the scoring code rejects (unknown schema,
//! missing or non-finite feature) gets a score row with its reason and no score, and is
//! counted in the log at warn. Never logs a feature value or a score at info. Never holds up
//! ingest: the agent's records are acknowledged once committed, and scoring follows on its
//! own task, so a scoring failure is logged and the windows stay stored (they are scored on
//! the device's next batch, or at the next start).
//!
//! # When windows are scored
//!
//! After ingest commits a batch with new features records it queues the device
//! ([`Scorer::enqueue`]); one task ([`Scorer::run`]) takes queued devices one at a time and
//! scores every stored features record of the device that has no score row yet, in sequence
//! order. At start the same task queues every device with unscored windows, so a crash
//! between commit and scoring loses nothing; it looks again every 30 s, at the first moment
//! it is idle (a fixed period, not 30 s of idleness, which steady traffic would never leave
//! it), which is how replicas sharing one PostgreSQL database score what a dead replica
//! committed but did not score (and learn a population it did not live to learn). Before
//! each device, a replica loads a population generation another replica stored, and a
//! generation learned by two replicas at once is stored once (the later writer loads the
//! stored one instead), so all replicas score with the same population.
//!
//! Scoring is one at a time per process (a tokio mutex around the population), and profiles
//! live in the database, not in memory: an administrator's `baseline reset` from another
//! process, or another replica's scorer, changes the row, the profile's version moves, and a
//! scorer pass that read the older version is dropped and run again.
//!
//! # The population
//!
//! Learned ([`Population::learn`]) from each device's first enrollment windows (the first
//! `keyboard_enroll_windows` stored windows with a keyboard block, the first
//! `mouse_enroll_windows` with a mouse block), for the modalities the device has a baseline
//! of. It is learned again, with the next generation number, when a window completes a
//! baseline and the number of devices with a baseline of some modality has changed since it
//! was last learned; also at start when the stored one is missing, unreadable or learned on
//! another feature list or schema. Profiles rebuild their detectors when the generation changes.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError};

use cadence_wire::features::{SCHEMA, check_previous};
use cadence_wire::{DeviceId, FeatureVector, Kind};
use tokio::sync::{Notify, watch};

use crate::Error;
use crate::alerts::{Outbox, stopped};
use crate::api::now_ms;
use crate::metrics::Metrics;
use crate::scoring::{
    Modality, Observation, Population, RejectReason, ScoringConfig, ScoringError, UserProfile,
};
use crate::store::{AlertKind, NewAlert, ScoreRow, ScoringUpdate, Store, StoredPopulation};

/// Windows read and written per scorer pass.
const PAGE: u32 = 256;
/// How often the scorer, when next idle, looks for windows stored but not scored (by a
/// replica that died between commit and scoring).
const SWEEP: std::time::Duration = std::time::Duration::from_secs(30);
/// Passes run again after the profile changed underneath before scoring gives up for now.
const MAX_CONFLICTS: usize = 5;

/// The scoring stage. Cheap to clone: clones share the queue, the population and the lock.
#[derive(Clone, Debug)]
pub struct Scorer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    cfg: ScoringConfig,
    outbox: Outbox,
    /// Counts trust alerts and scoring latency, for `/metrics`.
    metrics: Arc<Metrics>,
    /// Devices with windows waiting to be scored; the worker drains it.
    queue: std::sync::Mutex<BTreeSet<DeviceId>>,
    /// Wakes the worker when a device is queued (a wake-up while it is busy is kept).
    wake: Notify,
    /// The population and what it was learned from. Held for a whole scorer pass: that is
    /// what makes scoring one device at a time.
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    population: Arc<Population>,
    /// Devices with a keyboard / mouse baseline when the population was learned.
    keyboard_users: u64,
    mouse_users: u64,
}

/// What one [`Scorer::score_device`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scored {
    /// Windows that got a score row (scored, enrolling or rejected).
    pub windows: usize,
    /// Of those, windows refused instead of scored.
    pub rejected: usize,
    /// Trust alerts raised.
    pub alerts: usize,
}

impl Scorer {
    /// A scorer over `store`, with the stored population loaded (an unreadable one is learned
    /// again when [`run`](Scorer::run) starts).
    pub async fn load(store: Store, cfg: ScoringConfig, outbox: Outbox) -> Result<Scorer, Error> {
        Scorer::load_with_metrics(store, cfg, outbox, Arc::new(Metrics::default())).await
    }

    /// As [`load`](Scorer::load), counting trust alerts and scoring latency into `metrics`.
    pub async fn load_with_metrics(
        store: Store,
        cfg: ScoringConfig,
        outbox: Outbox,
        metrics: Arc<Metrics>,
    ) -> Result<Scorer, Error> {
        let state = match store.population().await? {
            None => State {
                population: Arc::new(Population::default()),
                keyboard_users: 0,
                mouse_users: 0,
            },
            Some(stored) => match parse_population(&stored) {
                Ok(population) => State {
                    population: Arc::new(population),
                    keyboard_users: stored.keyboard_users,
                    mouse_users: stored.mouse_users,
                },
                Err(why) => {
                    tracing::warn!(%why, "stored population unusable; it will be learned again");
                    State {
                        population: Arc::new(Population {
                            generation: stored.generation,
                            ..Population::default()
                        }),
                        // Never matches a real count, so the next check learns it again.
                        keyboard_users: u64::MAX,
                        mouse_users: u64::MAX,
                    }
                }
            },
        };
        Ok(Scorer {
            inner: Arc::new(Inner {
                store,
                cfg,
                outbox,
                metrics,
                queue: std::sync::Mutex::new(BTreeSet::new()),
                wake: Notify::new(),
                state: tokio::sync::Mutex::new(state),
            }),
        })
    }

    /// Queues `device`: it has new windows to score.
    pub fn enqueue(&self, device: DeviceId) {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device);
        self.inner.wake.notify_one();
    }

    /// Scores queued devices until `shutdown` turns true (or its sender is dropped). Starts by
    /// learning the population if it is out of date and queuing every device with windows
    /// stored but not scored.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.run_sweeping_every(shutdown, SWEEP).await;
    }

    /// [`run`](Scorer::run) with the sweep every `period` (tests shorten it).
    async fn run_sweeping_every(
        self,
        mut shutdown: watch::Receiver<bool>,
        period: std::time::Duration,
    ) {
        {
            let mut state = self.inner.state.lock().await;
            if let Err(e) = self.maybe_relearn(&mut state).await {
                tracing::error!(error = %e, "cannot learn the population");
            }
        }
        self.queue_unscored().await;
        // Made once, outside the loop: a sleep made anew at every wake-up would be postponed
        // forever by steady traffic. A tick missed while busy is taken at the next idle
        // moment, and the one after comes a whole period later.
        let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = std::mem::take(
                &mut *self
                    .inner
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            if batch.is_empty() {
                tokio::select! {
                    () = self.inner.wake.notified() => continue,
                    // Replicas over one database: windows another replica committed but did
                    // not live to score are found here once this one is idle.
                    _ = sweep.tick() => {
                        self.sweep().await;
                        continue;
                    }
                    () = stopped(&mut shutdown) => break,
                }
            }
            for device in batch {
                if *shutdown.borrow() {
                    // The rest stays unscored in the store and is scored at the next start.
                    return;
                }
                if let Err(e) = self.score_device(device).await {
                    tracing::error!(
                        %device,
                        error = %e,
                        "scoring failed; the windows stay stored and are scored with the next batch or at the next start"
                    );
                }
            }
        }
    }

    /// What an idle scorer does now and then for replicas over one database: takes up
    /// windows another replica stored but did not score, and learns the population again if
    /// another replica completed baselines and died before learning it.
    async fn sweep(&self) {
        self.queue_unscored().await;
        let mut state = self.inner.state.lock().await;
        let refreshed = self.refresh_population(&mut state).await;
        if let Err(e) = refreshed.and(self.maybe_relearn(&mut state).await) {
            tracing::error!(error = %e, "cannot learn the population");
        }
    }

    /// Queues every device with windows stored but not scored.
    async fn queue_unscored(&self) {
        match self.inner.store.devices_with_unscored_windows().await {
            Ok(devices) => {
                if !devices.is_empty() {
                    tracing::info!(devices = devices.len(), "scoring windows stored earlier");
                }
                for d in devices {
                    self.enqueue(d);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot look for unscored windows"),
        }
    }

    /// Scores every stored window of `device` that has no score row yet, in sequence order.
    pub async fn score_device(&self, device: DeviceId) -> Result<Scored, Error> {
        let mut state = self.inner.state.lock().await;
        self.refresh_population(&mut state).await?;
        let mut total = Scored::default();
        loop {
            let (scored, completed, full_page) = self.pass(&state, device).await?;
            total.windows += scored.windows;
            total.rejected += scored.rejected;
            total.alerts += scored.alerts;
            if completed && let Err(e) = self.maybe_relearn(&mut state).await {
                tracing::error!(error = %e, "cannot learn the population");
            }
            if !full_page {
                break;
            }
        }
        if total.rejected > 0 {
            tracing::warn!(
                %device,
                rejected = total.rejected,
                "windows rejected instead of scored"
            );
        }
        tracing::debug!(%device, windows = total.windows, alerts = total.alerts, "scored");
        Ok(total)
    }

    /// One pass over up to [`PAGE`] unscored windows, run again if the profile changed
    /// underneath. Returns what it did, whether a baseline was completed, and whether the
    /// page was full (more may wait).
    async fn pass(&self, state: &State, device: DeviceId) -> Result<(Scored, bool, bool), Error> {
        let store = &self.inner.store;
        let cfg = &self.inner.cfg;
        let key = device.to_string();
        for _ in 0..MAX_CONFLICTS {
            let windows = store.unscored_windows(device, PAGE).await?;
            if windows.is_empty() {
                return Ok((Scored::default(), false, false));
            }
            let (mut profile, version) = match store.profile(device).await? {
                None => (UserProfile::default(), 0),
                Some(stored) => match serde_json::from_str::<UserProfile>(&stored.json) {
                    Ok(p) => (p, stored.version),
                    Err(e) => {
                        tracing::warn!(%device, error = %e,
                            "stored profile unreadable (written by another build?); enrolling afresh");
                        (UserProfile::default(), stored.version)
                    }
                },
            };
            drop_stale_baselines(device, &mut profile);
            let mut scored = Scored::default();
            let mut completed = false;
            let mut rows = Vec::with_capacity(windows.len());
            let mut alerts = Vec::new();
            for w in &windows {
                let mut row = ScoreRow {
                    seq: w.seq,
                    created_ms: w.created_ms,
                    received_ms: w.received_ms,
                    ..ScoreRow::default()
                };
                let before = profile.clone();
                let result = stored_vector(&w.payload).and_then(|v| {
                    profile
                        .observe(&key, &v, &state.population, cfg)
                        .map_err(|e| match e {
                            ScoringError::Rejected(r) => r.to_string(),
                            other => format!("scoring error: {other}"),
                        })
                });
                match result {
                    Ok(obs) => {
                        completed |= obs.enrolling.iter().any(|(_, left)| *left == 0);
                        if obs.alert {
                            alerts.push(trust_alert(w.seq, w.created_ms, &obs, cfg));
                        }
                        fill_row(&mut row, &obs);
                    }
                    Err(why) => {
                        // The profile is as before the window: it never counted.
                        profile = before;
                        tracing::debug!(%device, seq = w.seq, %why, "window not scored");
                        row.rejected = Some(why);
                        scored.rejected += 1;
                    }
                }
                rows.push(row);
            }
            scored.windows = rows.len();
            scored.alerts = alerts.len();
            let json = serde_json::to_string(&profile)
                .map_err(|e| Error::Corrupt(format!("profile of {device}: {e}")))?;
            let update = ScoringUpdate {
                device,
                profile: &json,
                expected_version: version,
                scores: &rows,
                alerts: &alerts,
                webhooks: self.inner.outbox.urls(),
                now_ms: now_ms(),
            };
            match store.save_scoring(&update).await? {
                Some(ids) => {
                    let metrics = &self.inner.metrics;
                    for row in &rows {
                        metrics.scoring_latency_ms(update.now_ms.saturating_sub(row.received_ms));
                    }
                    for _ in &ids {
                        metrics.alert(AlertKind::Trust);
                    }
                    for (id, a) in ids.iter().zip(&alerts) {
                        tracing::warn!(
                            %device,
                            alert = id,
                            seq = a.seq,
                            "trust alert: the trust level fell below the lockout"
                        );
                    }
                    if !ids.is_empty() {
                        self.inner.outbox.wake();
                    }
                    let full = windows.len() >= PAGE as usize;
                    return Ok((scored, completed, full));
                }
                None => {
                    tracing::debug!(%device, "profile changed while scoring; scoring again");
                }
            }
        }
        Err(Error::Busy)
    }

    /// Loads the stored population when another replica over the same database stored a
    /// later generation than this one holds (one small query when it did not).
    async fn refresh_population(&self, state: &mut State) -> Result<(), Error> {
        let store = &self.inner.store;
        let newer = store
            .population_generation()
            .await?
            .is_some_and(|g| g > state.population.generation);
        if !newer {
            return Ok(());
        }
        let Some(stored) = store.population().await? else {
            return Ok(());
        };
        match parse_population(&stored) {
            Ok(population) => {
                tracing::info!(
                    generation = stored.generation,
                    "population learned by another replica loaded"
                );
                state.population = Arc::new(population);
                state.keyboard_users = stored.keyboard_users;
                state.mouse_users = stored.mouse_users;
            }
            Err(why) => {
                // Keep this one, but as of the stored generation, and learn the next: else
                // this replica's next generation would never be newer than the stored one,
                // its save would fail, and it would learn again after every baseline.
                tracing::warn!(%why, "stored population unusable; keeping this one");
                let mut own = (*state.population).clone();
                own.generation = stored.generation;
                state.population = Arc::new(own);
                state.keyboard_users = u64::MAX;
                state.mouse_users = u64::MAX;
            }
        }
        Ok(())
    }

    /// Learns the population again if the number of devices with a baseline of either
    /// modality changed since it was last learned.
    async fn maybe_relearn(&self, state: &mut State) -> Result<(), Error> {
        let store = &self.inner.store;
        let cfg = &self.inner.cfg;
        let mut enrolled: Vec<(DeviceId, bool, bool)> = Vec::new();
        for (device, stored) in store.profiles().await? {
            let Ok(p) = serde_json::from_str::<UserProfile>(&stored.json) else {
                continue;
            };
            // A baseline of another schema counts for nothing: it enrolls again when its
            // device's next window is scored.
            let has = |m: Modality| {
                let mp = p.modality(m);
                mp.schema.as_deref() == Some(SCHEMA)
                    && mp
                        .baseline
                        .as_ref()
                        .is_some_and(|b| b.mean.len() == m.dim())
            };
            let (k, m) = (has(Modality::Keyboard), has(Modality::Mouse));
            if k || m {
                enrolled.push((device, k, m));
            }
        }
        let keyboard_users = enrolled.iter().filter(|e| e.1).count() as u64;
        let mouse_users = enrolled.iter().filter(|e| e.2).count() as u64;
        if (keyboard_users, mouse_users) == (state.keyboard_users, state.mouse_users) {
            return Ok(());
        }
        let mut users: Vec<(String, Vec<FeatureVector>)> = Vec::with_capacity(enrolled.len());
        for (device, k, m) in enrolled {
            let need_k = if k { cfg.keyboard_enroll_windows } else { 0 };
            let need_m = if m { cfg.mouse_enroll_windows } else { 0 };
            let windows = self.first_windows(device, need_k, need_m, k, m).await?;
            users.push((device.to_string(), windows));
        }
        let refs: Vec<(&str, &[FeatureVector])> = users
            .iter()
            .map(|(u, w)| (u.as_str(), w.as_slice()))
            .collect();
        let generation = state.population.generation.saturating_add(1);
        let population = Population::learn(&refs, cfg, generation)
            .map_err(|e| Error::Corrupt(format!("population could not be learned: {e}")))?;
        let json = serde_json::to_string(&population)
            .map_err(|e| Error::Corrupt(format!("population: {e}")))?;
        let written = store
            .save_population(&StoredPopulation {
                generation,
                json,
                users: users.len() as u64,
                keyboard_users,
                mouse_users,
                learned_ms: now_ms(),
            })
            .await?;
        if !written {
            // Another replica over the same database learned this generation (or a later
            // one) first: use the stored one, so every replica scores with the same.
            self.refresh_population(state).await?;
            return Ok(());
        }
        tracing::info!(
            generation,
            keyboard_users,
            mouse_users,
            keyboard_model = population.keyboard.is_some(),
            mouse_model = population.mouse.is_some(),
            "population learned"
        );
        state.population = Arc::new(population);
        state.keyboard_users = keyboard_users;
        state.mouse_users = mouse_users;
        Ok(())
    }

    /// A device's first stored windows carrying each wanted modality, up to `need_k` keyboard
    /// and `need_m` mouse windows; modalities not wanted are cut from them.
    async fn first_windows(
        &self,
        device: DeviceId,
        need_k: usize,
        need_m: usize,
        keep_k: bool,
        keep_m: bool,
    ) -> Result<Vec<FeatureVector>, Error> {
        let (mut got_k, mut got_m) = (0, 0);
        let mut out = Vec::new();
        let mut after = None;
        while got_k < need_k || got_m < need_m {
            let page = self
                .inner
                .store
                .records_page(device, Kind::Features, after, PAGE)
                .await?;
            for r in &page {
                after = Some(r.seq);
                let Ok(mut v) = stored_vector(&r.payload) else {
                    continue;
                };
                if v.validate().is_err() {
                    continue;
                }
                if !keep_k {
                    v.keyboard = None;
                }
                if !keep_m {
                    v.mouse = None;
                }
                let k = v.keyboard.is_some() && got_k < need_k;
                let m = v.mouse.is_some() && got_m < need_m;
                if k || m {
                    got_k += usize::from(k);
                    got_m += usize::from(m);
                    out.push(v);
                }
            }
            if page.len() < PAGE as usize {
                break;
            }
        }
        Ok(out)
    }
}

/// The vector a stored window is scored as, or why it is not. A window of a previous
/// schema (an agent older than this verifier) is not scored: its blocks' values mean other
/// things than this build's (wire's module docs).
fn stored_vector(payload: &str) -> Result<FeatureVector, String> {
    serde_json::from_str::<FeatureVector>(payload).map_err(|e| match check_previous(payload) {
        Ok(schema) => format!(
            "{}: {schema} window from an agent older than this verifier (stored, not scored)",
            RejectReason::UnknownSchema,
        ),
        Err(_) => format!("malformed: {e}"),
    })
}

/// Resets a modality whose stored baseline or pending windows were collected under another
/// feature schema than this build's (a verifier upgraded to a new schema: the values changed
/// meaning even where the names did not), or have another dimension: it enrolls again. Then
/// records this build's schema in the profile.
fn drop_stale_baselines(device: DeviceId, profile: &mut UserProfile) {
    for m in Modality::ALL {
        let mp = profile.modality(m);
        let collected = mp.baseline.is_some() || !mp.pending.is_empty();
        let stale = (collected && mp.schema.as_deref() != Some(SCHEMA))
            || mp
                .baseline
                .as_ref()
                .is_some_and(|b| b.mean.len() != m.dim())
            || mp.pending.iter().any(|s| s.x.len() != m.dim());
        if stale {
            tracing::warn!(%device, modality = %m,
                "baseline learned under another feature schema; enrolling again");
            profile.reset_baseline(m);
        }
        profile.modality_mut(m).schema = Some(SCHEMA.to_owned());
    }
}

/// Fills a score row from what the window did.
fn fill_row(row: &mut ScoreRow, obs: &Observation) {
    for (m, s) in &obs.scores {
        match m {
            Modality::Keyboard => row.keyboard = Some(*s),
            Modality::Mouse => row.mouse = Some(*s),
        }
    }
    row.score = obs.score;
    row.calibrated = obs.calibrated;
    row.trust = obs.trust.map(|t| t.level);
    row.alert = obs.alert;
    if !obs.enrolling.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = obs
            .enrolling
            .iter()
            .map(|(m, left)| (m.name().to_owned(), serde_json::Value::from(*left)))
            .collect();
        row.enrolling = Some(serde_json::Value::Object(map).to_string());
    }
}

/// The alert a window that crossed the lockout raises: scores and trust, no feature value.
fn trust_alert(seq: u64, created_ms: u64, obs: &Observation, cfg: &ScoringConfig) -> NewAlert {
    let mut evidence = serde_json::Map::new();
    evidence.insert("detector".into(), "trust".into());
    evidence.insert("seq".into(), seq.into());
    if let Some(s) = obs.score {
        evidence.insert("score".into(), s.into());
    }
    for (m, s) in &obs.scores {
        evidence.insert(m.name().into(), (*s).into());
    }
    if let Some(t) = obs.trust {
        evidence.insert("level".into(), t.level.into());
        evidence.insert("delta".into(), t.delta.into());
    }
    evidence.insert("lockout".into(), cfg.trust.lockout.into());
    NewAlert {
        seq: Some(seq),
        created_ms,
        kind: AlertKind::Trust,
        trust: obs.trust.map(|t| t.level),
        evidence: serde_json::Value::Object(evidence).to_string(),
    }
}

fn parse_population(stored: &StoredPopulation) -> Result<Population, String> {
    let p: Population = serde_json::from_str(&stored.json).map_err(|e| e.to_string())?;
    p.check().map_err(|e| e.to_string())?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::{Duration, Instant};

    use cadence_wire::DeviceSigningKey;
    use cadence_wire::features::{KEYBOARD_LEN, KeyboardFeatures, SCHEMA};

    use super::*;
    use crate::config::Database;
    use crate::scoring::{Baseline, Sample};
    use crate::store::{Effect, NewDevice, NewRecord};

    /// An upgrade to a new schema: a baseline or pending windows recorded under none (a
    /// profile older than the record) or of another length enroll again; those recorded
    /// under this schema stay, and every modality is marked with it afterwards.
    #[test]
    fn baselines_of_another_schema_or_length_enroll_again_and_others_stay() {
        let mouse_dim = Modality::Mouse.dim();
        let windows: Vec<Sample> = (0..4)
            .map(|i| Sample {
                x: (0..mouse_dim).map(|j| 1.0 + (i * j % 5) as f64).collect(),
                events: 300,
            })
            .collect();
        let mouse = Baseline::enroll(Modality::Mouse, &windows).unwrap();
        let mut old_keyboard = mouse.clone();
        old_keyboard.modality = Modality::Keyboard;
        assert_ne!(old_keyboard.mean.len(), Modality::Keyboard.dim());
        let device = DeviceId([1; 16]);

        // Before the schema was recorded: the mouse block's names are this schema's, its
        // values are not.
        let mut profile = UserProfile::default();
        profile.modality_mut(Modality::Keyboard).baseline = Some(old_keyboard.clone());
        profile.modality_mut(Modality::Mouse).baseline = Some(mouse.clone());
        drop_stale_baselines(device, &mut profile);
        for m in Modality::ALL {
            assert!(profile.modality(m).baseline.is_none(), "{m}");
            assert_eq!(profile.modality(m).schema.as_deref(), Some(SCHEMA));
        }

        // Recorded under this schema: the mouse stays, a keyboard of the old length goes.
        let mut profile = UserProfile::default();
        for m in Modality::ALL {
            profile.modality_mut(m).schema = Some(SCHEMA.to_owned());
        }
        profile.modality_mut(Modality::Keyboard).baseline = Some(old_keyboard);
        profile.modality_mut(Modality::Mouse).baseline = Some(mouse.clone());
        drop_stale_baselines(device, &mut profile);
        assert!(profile.modality(Modality::Keyboard).baseline.is_none());
        assert_eq!(profile.modality(Modality::Mouse).baseline, Some(mouse));

        // Pending windows: of another schema, or of another length.
        let mut profile = UserProfile::default();
        profile.modality_mut(Modality::Mouse).pending = windows.clone();
        drop_stale_baselines(device, &mut profile);
        assert!(profile.modality(Modality::Mouse).pending.is_empty());
        let mut profile = UserProfile::default();
        profile.modality_mut(Modality::Keyboard).schema = Some(SCHEMA.to_owned());
        profile.modality_mut(Modality::Keyboard).pending = windows.clone();
        drop_stale_baselines(device, &mut profile);
        assert!(profile.modality(Modality::Keyboard).pending.is_empty());
        // Pending windows of this schema stay.
        let mut profile = UserProfile::default();
        profile.modality_mut(Modality::Mouse).schema = Some(SCHEMA.to_owned());
        profile.modality_mut(Modality::Mouse).pending = windows.clone();
        drop_stale_baselines(device, &mut profile);
        assert_eq!(profile.modality(Modality::Mouse).pending, windows);
        // A profile with nothing collected and no schema is only marked: its trust is not
        // reset.
        let mut profile = UserProfile::default();
        profile.trust.level = 70.0;
        drop_stale_baselines(device, &mut profile);
        assert_eq!(profile.trust.level, 70.0);
        assert_eq!(
            profile.modality(Modality::Mouse).schema.as_deref(),
            Some(SCHEMA)
        );
    }

    /// Only a bound so that a broken scorer fails the test instead of hanging it.
    const WAIT: Duration = Duration::from_secs(30);

    async fn enroll(store: &Store, user: &str) -> DeviceId {
        let key = DeviceSigningKey::generate().unwrap();
        let device = NewDevice {
            public_key: key.public_key(),
            os_user: user,
            hostname: "desk",
        };
        store
            .enroll(&device, DeviceId::random().unwrap(), now_ms())
            .await
            .unwrap()
    }

    /// Stores one features window for `device` as another replica would: without queuing it.
    async fn store_window(store: &Store, device: DeviceId, seq: u64) {
        let v = FeatureVector {
            schema: SCHEMA.to_owned(),
            duration_ms: 30_000,
            keys: 120,
            mouse_events: 0,
            keyboard: Some(KeyboardFeatures([60.0; KEYBOARD_LEN])),
            mouse: None,
        };
        store_payload(store, device, seq, serde_json::to_string(&v).unwrap()).await;
    }

    /// An older agent's window: its keyboard block of the previous length, and a mouse block
    /// when `mouse` is set.
    fn previous_window(mouse: bool) -> String {
        use cadence_wire::features::{KEYBOARD_FEATURES, MOUSE_FEATURES, PREVIOUS};
        let p = PREVIOUS[0];
        let keyboard: serde_json::Map<String, serde_json::Value> = KEYBOARD_FEATURES
            [..p.keyboard_len]
            .iter()
            .map(|(n, _)| ((*n).to_owned(), 60.0.into()))
            .collect();
        let m: serde_json::Map<String, serde_json::Value> = MOUSE_FEATURES[..p.mouse_len]
            .iter()
            .map(|(n, _)| ((*n).to_owned(), 5.0.into()))
            .collect();
        serde_json::json!({
            "schema": p.schema,
            "duration_ms": 30_000,
            "keys": 120,
            "mouse_events": if mouse { 300 } else { 0 },
            "keyboard": keyboard,
            "mouse": if mouse { serde_json::Value::Object(m) } else { serde_json::Value::Null },
        })
        .to_string()
    }

    /// An older agent's windows serve the population as the scorer scores them: not at all.
    #[tokio::test]
    async fn an_older_agents_windows_lend_nothing_to_the_population() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Database::Sqlite(dir.path().join("v.db")))
            .await
            .unwrap();
        let device = enroll(&store, "old").await;
        for payload in [previous_window(false), previous_window(true)] {
            assert!(cadence_wire::features::check_previous(&payload).is_ok());
        }
        store_payload(&store, device, 1, previous_window(false)).await;
        store_payload(&store, device, 2, previous_window(true)).await;
        store_payload(&store, device, 3, previous_window(true)).await;
        store_window(&store, device, 4).await;
        let scorer = Scorer::load(store.clone(), ScoringConfig::default(), Outbox::default())
            .await
            .unwrap();
        let got = scorer
            .first_windows(device, 5, 5, true, true)
            .await
            .unwrap();
        let shape: Vec<(bool, bool)> = got
            .iter()
            .map(|v| (v.keyboard.is_some(), v.mouse.is_some()))
            .collect();
        assert_eq!(shape, [(true, false)]);
        store.close().await;
    }

    async fn store_payload(store: &Store, device: DeviceId, seq: u64, payload: String) {
        let record = NewRecord {
            seq,
            kind: Kind::Features,
            created_ms: now_ms(),
            payload,
            envelope_sha256: [u8::try_from(seq).unwrap(); 32],
            effect: Effect::None,
        };
        store
            .commit(device, now_ms(), &[record], &[])
            .await
            .unwrap();
    }

    async fn scored(store: &Store, device: DeviceId) -> bool {
        let t = store.timeline(device).await.unwrap();
        !t.is_empty() && t.iter().all(|e| e.score.is_some())
    }

    /// A window nobody queued (its replica died after the commit) is found by the periodic
    /// sweep even while other devices keep the scorer busy with wake-ups more often than the
    /// sweep period: a sweep timer made anew at every wake-up would never fire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn steady_traffic_does_not_postpone_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Database::Sqlite(dir.path().join("v.db")))
            .await
            .unwrap();
        let busy = enroll(&store, "busy").await;
        let orphan = enroll(&store, "orphan").await;
        // Found by the scan at start: once it is scored, that scan is over.
        store_window(&store, busy, 1).await;
        let scorer = Scorer::load(store.clone(), ScoringConfig::default(), Outbox::default())
            .await
            .unwrap();
        let (stop, shutdown) = watch::channel(false);
        let period = Duration::from_millis(300);
        let task = tokio::spawn(scorer.clone().run_sweeping_every(shutdown, period));
        let start = Instant::now();
        while !scored(&store, busy).await {
            assert!(start.elapsed() < WAIT, "the scan at start scored nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store_window(&store, orphan, 1).await;
        // Wake-ups six times per sweep period, for a device with nothing new.
        let start = Instant::now();
        while !scored(&store, orphan).await {
            assert!(
                start.elapsed() < WAIT,
                "the orphan window was never swept up under steady wake-ups"
            );
            scorer.enqueue(busy);
            tokio::time::sleep(period / 6).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        store.close().await;
    }
}
