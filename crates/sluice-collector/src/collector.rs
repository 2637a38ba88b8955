//! The collector's state: per model version, its reference, the window being
//! filled, the closed windows and the alert. Everything it accepts goes
//! through the store first (synced), then into memory; opening replays the
//! store, so a restart resumes where it stopped.
//!
//! A window closes after `window_rows` rows (items of captured batches).
//! Without a reference, the first `reference_rows` rows of a version become
//! its reference (recorded as such). Each closed window is compared with the
//! reference feature by feature ([`crate::evaluate`]); when any feature
//! drifts the version's alert is raised, and when a window shows none it is
//! cleared. Raising and clearing are recorded and announced to the
//! `on_alert` hook (the server posts them to webhooks).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::evaluate::{self, FeatureResult};
use crate::features::{self, Row};
use crate::store::{self, Column, Columns, Entry, Store, StoreError};

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// The store file.
    pub store: PathBuf,
    /// Rows per window.
    pub window_rows: usize,
    /// A window also closes when its first row is older than this, if it
    /// has at least `min_window_rows` (a quiet model still gets windows).
    /// `None`: by rows only.
    pub window_span: Option<std::time::Duration>,
    /// The fewest rows a window closed by time may have; fewer wait on.
    pub min_window_rows: usize,
    /// Rows taken as the reference of a version that has none.
    pub reference_rows: usize,
    /// Closed windows kept in memory per version, for the page and the API
    /// (all of them stay in the store).
    pub history: usize,
    pub thresholds: evaluate::Thresholds,
}

impl CollectorOptions {
    pub fn new(store: PathBuf) -> CollectorOptions {
        CollectorOptions {
            store,
            window_rows: 500,
            window_span: None,
            min_window_rows: 30,
            reference_rows: 1000,
            history: 200,
            thresholds: evaluate::Thresholds::default(),
        }
    }
}

/// A version's reference.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub time: String,
    pub source: String,
    pub rows: usize,
    #[serde(skip)]
    pub columns: Columns,
}

/// A closed window, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WindowSummary {
    pub index: u64,
    pub time: String,
    pub records: u64,
    pub rows: u64,
    pub drifted: Vec<String>,
    pub features: Vec<FeatureResult>,
}

/// An alert being raised or cleared.
#[derive(Debug, Clone, Serialize)]
pub struct AlertChange {
    pub model: String,
    pub version: u64,
    pub raised: bool,
    pub window: u64,
    pub time: String,
    /// The drifted features (when raised), most drifted first.
    pub features: Vec<String>,
}

#[derive(Debug, Default)]
struct VersionState {
    reference: Option<Reference>,
    /// Rows gathered towards an automatic reference.
    pending_reference: Columns,
    current: Columns,
    current_records: u64,
    current_rows: u64,
    /// When the current window got its first row (this process's clock;
    /// after a restart, the time of the replay).
    current_since: Option<std::time::Instant>,
    windows: VecDeque<WindowSummary>,
    next_index: u64,
    /// The alert in force, if any: the window that raised it and why.
    alert: Option<AlertChange>,
    /// The latest window's columns, for the reference-versus-current charts.
    last_window: Columns,
}

/// What `ingest` did with a batch of events.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IngestSummary {
    pub accepted: u64,
    pub rows: u64,
    /// Events that were not inference records or could not be read, with
    /// why (the first few).
    pub rejected: u64,
    pub errors: Vec<String>,
    pub windows_closed: u64,
}

/// Why the collector could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

/// The collector (shared by its HTTP handlers).
pub struct Collector {
    store: Store,
    options: CollectorOptions,
    versions: Mutex<HashMap<(String, u64), VersionState>>,
    /// Events accepted and rejected since start (for the metrics).
    accepted: std::sync::atomic::AtomicU64,
    rejected: std::sync::atomic::AtomicU64,
}

fn now() -> String {
    sluice_rollout::audit::format_time(std::time::SystemTime::now())
}

fn merge(into: &mut Columns, from: &Columns) {
    for (name, column) in from {
        match (into.get_mut(name), column) {
            (Some(Column::Numeric(a)), Column::Numeric(b)) => a.extend_from_slice(b),
            (Some(Column::Categorical(a)), Column::Categorical(b)) => a.extend(b.iter().cloned()),
            (Some(_), _) => {}
            (None, c) => {
                into.insert(name.clone(), c.clone());
            }
        }
    }
}

fn rows_in(columns: &Columns) -> usize {
    columns.values().map(Column::len).max().unwrap_or(0)
}

impl Collector {
    /// Opens the store and replays it.
    pub fn open(options: CollectorOptions) -> Result<Collector, CollectorError> {
        let (store, entries) = Store::open(&options.store)?;
        let collector = Collector {
            store,
            options,
            versions: Mutex::new(HashMap::new()),
            accepted: Default::default(),
            rejected: Default::default(),
        };
        {
            let mut versions = collector.lock();
            for entry in entries {
                collector.replay(&mut versions, entry);
            }
        }
        Ok(collector)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), VersionState>> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a stored entry to memory (at start, the same as when it
    /// happened).
    fn replay(&self, versions: &mut HashMap<(String, u64), VersionState>, entry: Entry) {
        match entry {
            Entry::Rows {
                model,
                version,
                records,
                columns,
            } => {
                let state = versions.entry((model, version)).or_default();
                self.take_rows(state, records, &columns);
            }
            Entry::Reference {
                model,
                version,
                time,
                source,
                consumed,
                columns,
            } => {
                let state = versions.entry((model, version)).or_default();
                state.reference = Some(Reference {
                    time,
                    source,
                    rows: rows_in(&columns),
                    columns,
                });
                let pending = std::mem::take(&mut state.pending_reference);
                let (_, rest) = split_columns(&pending, consumed as usize);
                self.take_rows(state, 0, &rest);
            }
            Entry::Window {
                model,
                version,
                index,
                time,
                records,
                rows,
                drift,
            } => {
                let state = versions.entry((model, version)).or_default();
                let features: Vec<FeatureResult> =
                    serde_json::from_value(drift).unwrap_or_default();
                let (window, rest) = split_columns(&state.current, rows as usize);
                state.last_window = window;
                state.current = rest;
                state.current_records = 0;
                state.current_rows = rows_in(&state.current) as u64;
                state.next_index = index + 1;
                self.keep_window(
                    state,
                    WindowSummary {
                        index,
                        time,
                        records,
                        rows,
                        drifted: evaluate::drifted_names(&features),
                        features,
                    },
                );
            }
            Entry::Alert {
                model,
                version,
                time,
                raised,
                window,
                features,
            } => {
                let state = versions.entry((model.clone(), version)).or_default();
                state.alert = raised.then_some(AlertChange {
                    model,
                    version,
                    raised,
                    window,
                    time,
                    features,
                });
            }
        }
    }

    /// Puts rows where they belong: towards an automatic reference while a
    /// version has none, else into the current window.
    fn take_rows(&self, state: &mut VersionState, records: u64, columns: &Columns) {
        if state.reference.is_none() {
            merge(&mut state.pending_reference, columns);
            return;
        }
        merge(&mut state.current, columns);
        state.current_records += records;
        state.current_rows = rows_in(&state.current) as u64;
        if state.current_rows > 0 && state.current_since.is_none() {
            state.current_since = Some(std::time::Instant::now());
        }
    }

    /// Whether the current window is due by time.
    fn due_by_time(&self, state: &VersionState) -> bool {
        match (self.options.window_span, state.current_since) {
            (Some(span), Some(since)) => {
                state.current_rows as usize >= self.options.min_window_rows.max(1)
                    && since.elapsed() >= span
            }
            _ => false,
        }
    }

    /// Closes every window that is due by time (the server calls this every
    /// second, so a model with little traffic still gets its windows).
    /// Returns the alerts raised or cleared.
    pub fn tick(&self) -> Result<Vec<AlertChange>, CollectorError> {
        let mut changes = Vec::new();
        let mut versions = self.lock();
        for ((model, version), state) in versions.iter_mut() {
            if state.reference.is_some() && self.due_by_time(state) {
                let rows = state.current_rows as usize;
                if let Some(change) = self.close_window(model, *version, state, rows)? {
                    changes.push(change);
                }
            }
        }
        Ok(changes)
    }

    fn keep_window(&self, state: &mut VersionState, window: WindowSummary) {
        state.windows.push_back(window);
        while state.windows.len() > self.options.history.max(1) {
            state.windows.pop_front();
        }
    }

    /// Accepts a batch of CloudEvents (inference records): stores their
    /// features, then closes the windows they fill. Returns the alerts
    /// raised or cleared by it.
    pub fn ingest(
        &self,
        events: &[Value],
    ) -> Result<(IngestSummary, Vec<AlertChange>), CollectorError> {
        let mut summary = IngestSummary::default();
        let mut by_version: BTreeMap<(String, u64), (u64, Vec<Row>)> = BTreeMap::new();
        for event in events {
            match record_rows(event) {
                Ok((model, version, rows)) => {
                    summary.accepted += 1;
                    summary.rows += rows.len() as u64;
                    let slot = by_version.entry((model, version)).or_default();
                    slot.0 += 1;
                    slot.1.extend(rows);
                }
                Err(e) => {
                    summary.rejected += 1;
                    if summary.errors.len() < 5 {
                        summary.errors.push(e);
                    }
                }
            }
        }
        use std::sync::atomic::Ordering::Relaxed;
        self.accepted.fetch_add(summary.accepted, Relaxed);
        self.rejected.fetch_add(summary.rejected, Relaxed);
        let mut changes = Vec::new();
        let mut versions = self.lock();
        for ((model, version), (records, rows)) in by_version {
            let mut columns = Columns::new();
            store::append_rows(&mut columns, &rows);
            let entry = Entry::Rows {
                model: model.clone(),
                version,
                records,
                columns,
            };
            self.store.append(&entry)?;
            let Entry::Rows { columns, .. } = entry else {
                unreachable!("built above")
            };
            let state = versions.entry((model.clone(), version)).or_default();
            self.take_rows(state, records, &columns);
            self.maybe_auto_reference(&model, version, state)?;
            while state.reference.is_some()
                && state.current_rows as usize >= self.options.window_rows
            {
                summary.windows_closed += 1;
                let rows = self.options.window_rows;
                if let Some(change) = self.close_window(&model, version, state, rows)? {
                    changes.push(change);
                }
            }
        }
        Ok((summary, changes))
    }

    /// Makes the first `reference_rows` rows a version's reference, once
    /// there are that many; rows beyond them start its first window.
    fn maybe_auto_reference(
        &self,
        model: &str,
        version: u64,
        state: &mut VersionState,
    ) -> Result<(), CollectorError> {
        let want = self.options.reference_rows.max(1);
        if state.reference.is_some() || rows_in(&state.pending_reference) < want {
            return Ok(());
        }
        let (reference, rest) = split_columns(&state.pending_reference, want);
        let entry = Entry::Reference {
            model: model.to_string(),
            version,
            time: now(),
            source: format!("the first {want} captured rows"),
            consumed: want as u64,
            columns: reference,
        };
        self.store.append(&entry)?;
        if let Entry::Reference {
            time,
            source,
            columns,
            ..
        } = entry
        {
            state.reference = Some(Reference {
                time,
                source,
                rows: want,
                columns,
            });
        }
        state.pending_reference.clear();
        if !rest.is_empty() {
            let records = 0;
            self.take_rows(state, records, &rest);
        }
        Ok(())
    }

    /// Closes the current window (its first `window_rows` rows), compares it
    /// with the reference, records it, and raises or clears the alert.
    fn close_window(
        &self,
        model: &str,
        version: u64,
        state: &mut VersionState,
        rows: usize,
    ) -> Result<Option<AlertChange>, CollectorError> {
        let reference = state
            .reference
            .as_ref()
            .expect("windows close only with a reference");
        let (window, rest) = split_columns(&state.current, rows);
        let features = evaluate::compare(&reference.columns, &window, &self.options.thresholds);
        let index = state.next_index;
        let time = now();
        let rows = rows_in(&window) as u64;
        let records = state.current_records;
        self.store.append(&Entry::Window {
            model: model.to_string(),
            version,
            index,
            time: time.clone(),
            records,
            rows,
            drift: serde_json::to_value(&features).unwrap_or(Value::Null),
        })?;
        let drifted = evaluate::drifted_names(&features);
        state.next_index = index + 1;
        state.last_window = window;
        state.current = rest;
        state.current_records = 0;
        state.current_rows = rows_in(&state.current) as u64;
        state.current_since = (state.current_rows > 0).then(std::time::Instant::now);
        self.keep_window(
            state,
            WindowSummary {
                index,
                time: time.clone(),
                records,
                rows,
                drifted: drifted.clone(),
                features,
            },
        );
        let change = match (&state.alert, drifted.is_empty()) {
            (None, false) => Some(AlertChange {
                model: model.to_string(),
                version,
                raised: true,
                window: index,
                time,
                features: drifted,
            }),
            (Some(_), true) => Some(AlertChange {
                model: model.to_string(),
                version,
                raised: false,
                window: index,
                time,
                features: Vec::new(),
            }),
            _ => None,
        };
        if let Some(c) = &change {
            self.store.append(&Entry::Alert {
                model: c.model.clone(),
                version,
                time: c.time.clone(),
                raised: c.raised,
                window: c.window,
                features: c.features.clone(),
            })?;
            state.alert = c.raised.then(|| c.clone());
        }
        Ok(change)
    }

    /// Sets (replaces) a version's reference.
    pub fn set_reference(
        &self,
        model: &str,
        version: u64,
        source: &str,
        columns: Columns,
    ) -> Result<Reference, CollectorError> {
        let rows = rows_in(&columns);
        if rows == 0 {
            return Err(CollectorError::Invalid(
                "the reference has no rows".to_string(),
            ));
        }
        let entry = Entry::Reference {
            model: model.to_string(),
            version,
            time: now(),
            source: source.to_string(),
            consumed: 0,
            columns: columns.clone(),
        };
        self.store.append(&entry)?;
        let mut versions = self.lock();
        let state = versions.entry((model.to_string(), version)).or_default();
        let reference = Reference {
            time: match entry {
                Entry::Reference { time, .. } => time,
                _ => unreachable!("built above"),
            },
            source: source.to_string(),
            rows,
            columns,
        };
        state.reference = Some(reference.clone());
        // Rows that were waiting to become a reference are a window now.
        let pending = std::mem::take(&mut state.pending_reference);
        merge(&mut state.current, &pending);
        state.current_rows = rows_in(&state.current) as u64;
        Ok(reference)
    }

    /// Everything known about a model, per version, as the JSON API shows
    /// it.
    pub fn model_report(&self, model: &str) -> Option<Value> {
        let versions = self.lock();
        let mut out = BTreeMap::new();
        for ((m, v), state) in versions.iter() {
            if m != model {
                continue;
            }
            out.insert(
                v.to_string(),
                serde_json::json!({
                    "reference": state.reference,
                    "reference_pending_rows": rows_in(&state.pending_reference),
                    "current_window": {"rows": state.current_rows, "records": state.current_records,
                                       "closes_at_rows": self.options.window_rows},
                    "alert": state.alert,
                    "windows": state.windows,
                }),
            );
        }
        (!out.is_empty()).then(|| serde_json::json!({ "model": model, "versions": out }))
    }

    /// (model, version) pairs known, sorted.
    pub fn versions(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// A version's reference and latest window columns of one feature, for
    /// the charts.
    pub fn feature_columns(
        &self,
        model: &str,
        version: u64,
        feature: &str,
    ) -> Option<(Column, Column)> {
        let versions = self.lock();
        let state = versions.get(&(model.to_string(), version))?;
        let reference = state.reference.as_ref()?.columns.get(feature)?.clone();
        let current = state.last_window.get(feature)?.clone();
        Some((reference, current))
    }

    /// The alerts in force.
    pub fn alerts(&self) -> Vec<AlertChange> {
        let mut v: Vec<_> = self
            .lock()
            .values()
            .filter_map(|s| s.alert.clone())
            .collect();
        v.sort_by(|a, b| (&a.model, a.version).cmp(&(&b.model, b.version)));
        v
    }

    /// The collector's metrics in the Prometheus text format (0.0.4): events
    /// accepted and rejected, windows closed, alerts in force, and each
    /// feature's latest score and verdict.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        fn esc(s: &str) -> String {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        }
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            "sluice_collector_events_total",
            "counter",
            "CloudEvents received by the collector, by outcome.",
        );
        let mut lines = String::new();
        for (outcome, n) in [
            ("accepted", self.accepted.load(Relaxed)),
            ("rejected", self.rejected.load(Relaxed)),
        ] {
            let _ = writeln!(
                lines,
                "sluice_collector_events_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str(&lines);
        let versions = self.lock();
        let mut keys: Vec<&(String, u64)> = versions.keys().collect();
        keys.sort();
        let mut windows = String::new();
        let mut alerts = String::new();
        let mut scores = String::new();
        let mut drifted = String::new();
        for key in keys {
            let state = &versions[key];
            let labels = format!("model=\"{}\",version=\"{}\"", esc(&key.0), key.1);
            let _ = writeln!(
                windows,
                "sluice_drift_windows_total{{{labels}}} {}",
                state.next_index
            );
            let _ = writeln!(
                alerts,
                "sluice_drift_alert{{{labels}}} {}",
                u8::from(state.alert.is_some())
            );
            if let Some(w) = state.windows.back() {
                for f in &w.features {
                    let fl = format!(
                        "{labels},feature=\"{}\",method=\"{}\"",
                        esc(&f.feature),
                        esc(&f.method)
                    );
                    if f.score.is_finite() {
                        let _ = writeln!(scores, "sluice_drift_score{{{fl}}} {}", f.score);
                    }
                    let _ = writeln!(
                        drifted,
                        "sluice_drift_feature_drifted{{{fl}}} {}",
                        u8::from(f.drifted)
                    );
                }
            }
        }
        drop(versions);
        let mut family2 = |name: &str, kind: &str, help: &str, body: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            out.push_str(body);
        };
        family2(
            "sluice_drift_windows_total",
            "counter",
            "Windows closed and compared with the reference, per model version.",
            &windows,
        );
        family2(
            "sluice_drift_alert",
            "gauge",
            "1 while a model version's drift alert is raised, else 0.",
            &alerts,
        );
        family2(
            "sluice_drift_score",
            "gauge",
            "Each feature's score in the latest window, by the method that judged it.",
            &scores,
        );
        family2(
            "sluice_drift_feature_drifted",
            "gauge",
            "1 when the feature drifted in the latest window, else 0.",
            &drifted,
        );
        out
    }

    /// Each version's latest window scores, for metrics:
    /// (model, version, feature, method, score, drifted).
    pub fn latest_scores(&self) -> Vec<(String, u64, FeatureResult)> {
        let versions = self.lock();
        let mut out = Vec::new();
        for ((m, v), state) in versions.iter() {
            if let Some(w) = state.windows.back() {
                for f in &w.features {
                    out.push((m.clone(), *v, f.clone()));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, a.1, &a.2.feature).cmp(&(&b.0, b.1, &b.2.feature)));
        out
    }
}

/// The first `n` rows of every column, and the rest.
fn split_columns(columns: &Columns, n: usize) -> (Columns, Columns) {
    let mut head = Columns::new();
    let mut tail = Columns::new();
    for (name, column) in columns {
        let (a, b) = match column {
            Column::Numeric(v) => {
                let k = n.min(v.len());
                (
                    Column::Numeric(v[..k].to_vec()),
                    Column::Numeric(v[k..].to_vec()),
                )
            }
            Column::Categorical(v) => {
                let k = n.min(v.len());
                (
                    Column::Categorical(v[..k].to_vec()),
                    Column::Categorical(v[k..].to_vec()),
                )
            }
        };
        head.insert(name.clone(), a);
        if !b.is_empty() {
            tail.insert(name.clone(), b);
        }
    }
    (head, tail)
}

/// The model, version and feature rows of one CloudEvent of type
/// `dev.sluice.inference`.
pub fn record_rows(event: &Value) -> Result<(String, u64, Vec<Row>), String> {
    if event.get("specversion").and_then(Value::as_str) != Some("1.0") {
        return Err("not a CloudEvent 1.0 (specversion)".into());
    }
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "dev.sluice.inference" {
        return Err(format!("event type '{kind}' is not dev.sluice.inference"));
    }
    let data = event.get("data").ok_or("the event has no data")?;
    let model = data
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or("data.model is missing")?
        .to_string();
    let version = data
        .get("version")
        .and_then(Value::as_u64)
        .ok_or("data.version is missing or not a number")?;
    let rows = features::rows_of(data).map_err(|e| e.to_string())?;
    Ok((model, version, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Deterministic normal draws (Box–Muller over a 64-bit LCG).
    struct Normal(u64);

    impl Normal {
        fn unit(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn next(&mut self) -> f64 {
            let (u, v) = (self.unit(), self.unit());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    /// A batch of `rows` rows of two features, the first shifted by
    /// `shift` standard deviations; the label is the sign of the second.
    fn event(rng: &mut Normal, rows: usize, shift: f64, id: usize) -> Value {
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..rows {
            let (a, b) = (rng.next() + shift, rng.next());
            x.push(a);
            x.push(b);
            labels.push(i64::from(b > 0.0));
        }
        json!({
            "specversion": "1.0", "type": "dev.sluice.inference", "id": format!("r-{id}"),
            "source": "sluice://test/iris", "subject": "iris/2",
            "data": {"model": "iris", "version": 2,
                     "inputs": [{"name": "x", "datatype": "FP64", "shape": [rows, 2], "data": x}],
                     "outputs": [{"name": "label", "datatype": "INT64", "shape": [rows], "data": labels}]}
        })
    }

    fn options(dir: &tempfile::TempDir) -> CollectorOptions {
        CollectorOptions {
            window_rows: 500,
            reference_rows: 1000,
            ..CollectorOptions::new(dir.path().join("collector.jsonl"))
        }
    }

    #[test]
    fn a_shift_raises_an_alert_and_its_end_clears_it_and_a_restart_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let collector = Collector::open(options(&dir)).unwrap();
        let mut rng = Normal(7);
        let mut id = 0;
        let mut send = |c: &Collector, rng: &mut Normal, shift: f64, batches: usize| {
            let mut changes = Vec::new();
            for _ in 0..batches {
                id += 1;
                let (summary, ch) = c.ingest(&[event(rng, 50, shift, id)]).unwrap();
                assert_eq!((summary.accepted, summary.rejected), (1, 0));
                changes.extend(ch);
            }
            changes
        };
        // 1000 rows become the reference; then 4 windows like it: no alert.
        assert!(send(&collector, &mut rng, 0.0, 20).is_empty());
        let report = collector.model_report("iris").unwrap();
        assert_eq!(report["versions"]["2"]["reference"]["rows"], 1000);
        assert!(send(&collector, &mut rng, 0.0, 40).is_empty());
        assert_eq!(
            collector.model_report("iris").unwrap()["versions"]["2"]["windows"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
        // Half a standard deviation on x[0]: raised within two windows,
        // x[0] ranked first.
        let raised = send(&collector, &mut rng, 0.5, 20);
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert!(raised[0].raised);
        assert_eq!(raised[0].features[0], "x[0]");
        assert!(raised[0].window <= 5, "{raised:?}");
        assert_eq!(collector.alerts().len(), 1);

        // A restart replays everything: same windows, same alert, and the
        // half-filled window goes on filling.
        let before = collector.model_report("iris").unwrap();
        drop(collector);
        let collector = Collector::open(options(&dir)).unwrap();
        assert_eq!(collector.model_report("iris").unwrap(), before);
        assert_eq!(collector.alerts().len(), 1);

        // Back to the reference distribution: cleared.
        let cleared = send(&collector, &mut rng, 0.0, 30);
        assert!(
            cleared.iter().any(|c| !c.raised),
            "not cleared: {cleared:?}"
        );
        assert!(collector.alerts().is_empty());
    }

    #[test]
    fn an_uploaded_reference_replaces_the_automatic_one() {
        let dir = tempfile::tempdir().unwrap();
        let collector = Collector::open(options(&dir)).unwrap();
        let mut rng = Normal(11);
        collector.ingest(&[event(&mut rng, 300, 0.0, 1)]).unwrap();
        let mut columns = Columns::new();
        columns.insert(
            "x[0]".into(),
            Column::Numeric((0..800).map(|_| rng.next()).collect()),
        );
        let reference = collector
            .set_reference("iris", 2, "reference.csv", columns)
            .unwrap();
        assert_eq!(
            (reference.rows, reference.source.as_str()),
            (800, "reference.csv")
        );
        // The 300 rows that were waiting now count towards a window.
        let report = collector.model_report("iris").unwrap();
        assert_eq!(report["versions"]["2"]["current_window"]["rows"], 300);
        drop(collector);
        let collector = Collector::open(options(&dir)).unwrap();
        let report = collector.model_report("iris").unwrap();
        assert_eq!(
            report["versions"]["2"]["reference"]["source"],
            "reference.csv"
        );
        assert_eq!(report["versions"]["2"]["current_window"]["rows"], 300);
        assert!(
            collector
                .set_reference("iris", 2, "empty", Columns::new())
                .is_err()
        );
    }

    #[test]
    fn events_that_are_not_inference_records_are_counted_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let collector = Collector::open(options(&dir)).unwrap();
        let (summary, _) = collector
            .ingest(&[
                json!({"specversion": "0.3"}),
                json!({"specversion": "1.0", "type": "other"}),
                json!({"specversion": "1.0", "type": "dev.sluice.inference", "data": {"version": 1}}),
            ])
            .unwrap();
        assert_eq!((summary.accepted, summary.rejected), (0, 3));
        assert_eq!(summary.errors.len(), 3);
        assert!(summary.errors[2].contains("model"));
    }

    #[test]
    fn missing_values_are_left_out_and_the_store_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        let collector = Collector::open(options(&dir)).unwrap();
        let event = json!({"specversion": "1.0", "type": "dev.sluice.inference", "id": "n",
            "data": {"model": "iris", "version": 2, "inputs": [{"name": "x", "datatype": "FP32",
            "shape": [2, 2], "data": [1.0, null, 3.0, 4.0]}]}});
        let (summary, _) = collector.ingest(&[event]).unwrap();
        assert_eq!(summary.accepted, 1);
        drop(collector);
        let collector = Collector::open(options(&dir)).unwrap();
        let report = collector.model_report("iris").unwrap();
        assert_eq!(report["versions"]["2"]["reference_pending_rows"], 2);
    }

    #[test]
    fn a_quiet_model_gets_windows_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let collector = Collector::open(CollectorOptions {
            window_rows: 10_000,
            window_span: Some(std::time::Duration::from_millis(100)),
            min_window_rows: 40,
            reference_rows: 200,
            ..CollectorOptions::new(dir.path().join("s.jsonl"))
        })
        .unwrap();
        let mut rng = Normal(5);
        collector.ingest(&[event(&mut rng, 200, 0.0, 1)]).unwrap();
        // Too few rows: the window waits, however old.
        collector.ingest(&[event(&mut rng, 20, 0.0, 2)]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(collector.tick().unwrap().is_empty());
        let windows = |c: &Collector| {
            c.model_report("iris").unwrap()["versions"]["2"]["windows"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!(windows(&collector), 0);
        // Enough rows and old enough: it closes on the tick.
        collector.ingest(&[event(&mut rng, 30, 0.0, 3)]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        collector.tick().unwrap();
        assert_eq!(windows(&collector), 1);
        let report = collector.model_report("iris").unwrap();
        assert_eq!(report["versions"]["2"]["windows"][0]["rows"], 50);
    }
}
