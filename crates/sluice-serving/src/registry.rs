//! A registry on object storage, kept in sync with its local cache.
//!
//! The reconcile task reads the cache like any repository; this module
//! polls the bucket ([`RemoteRegistry::sync`]) every `poll_interval` and asks
//! the reconcile task to rescan when the cache changed. What it saw is kept
//! as a [`RegistryStatus`]: the revision served (the same on every replica
//! that serves the same objects), whether the last poll failed (degraded:
//! the replica keeps serving what it has), and the versions left out.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use sluice_registry::RemoteRegistry;
use sluice_telemetry::Metrics;

/// How the manager uses a registry on object storage.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub remote: Arc<RemoteRegistry>,
    /// How often the bucket is listed. A change reaches this replica within
    /// one interval (plus the download).
    pub poll_interval: Duration,
}

/// What the last polls of the registry found; served in the server
/// metadata and the `sluice_registry_*` metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RegistryStatus {
    /// The registry URL (`s3://bucket/prefix`).
    pub source: String,
    /// SHA-256 over the objects the cache holds; `None` until a first sync
    /// succeeded.
    pub revision: Option<String>,
    /// The last poll failed: this replica serves what it has, which may be
    /// behind the registry.
    pub degraded: bool,
    /// Why the last poll failed.
    pub error: Option<String>,
    /// Versions the last successful poll left out, and why.
    pub problems: Vec<String>,
    /// When a poll last succeeded (RFC 3339).
    pub last_success: Option<String>,
    pub poll_interval_seconds: f64,
}

/// The registry as the manager and the server see it.
#[derive(Debug)]
pub struct RegistryHandle {
    options: RegistryOptions,
    status: ArcSwap<RegistryStatus>,
    metrics: Option<Arc<Metrics>>,
}

impl RegistryHandle {
    pub(crate) fn new(options: RegistryOptions, metrics: Option<Arc<Metrics>>) -> RegistryHandle {
        let status = RegistryStatus {
            source: options.remote.url().to_string(),
            revision: None,
            degraded: false,
            error: None,
            problems: Vec::new(),
            last_success: None,
            poll_interval_seconds: options.poll_interval.as_secs_f64(),
        };
        if let Some(m) = &metrics {
            m.registry_gauges();
            for outcome in ["success", "failure"] {
                m.registry_syncs.get(&[outcome]);
            }
        }
        RegistryHandle {
            options,
            status: ArcSwap::from_pointee(status),
            metrics,
        }
    }

    /// The object-storage side: for writes (policies, the audit log).
    pub fn remote(&self) -> &Arc<RemoteRegistry> {
        &self.options.remote
    }

    pub fn poll_interval(&self) -> Duration {
        self.options.poll_interval
    }

    /// What the last poll found.
    pub fn status(&self) -> Arc<RegistryStatus> {
        self.status.load_full()
    }

    /// Polls the bucket once; returns whether the cache changed.
    pub(crate) async fn sync(&self) -> bool {
        let result = self.options.remote.sync().await;
        let previous = self.status.load_full();
        let mut status = (*previous).clone();
        let changed = match result {
            Ok(report) => {
                if previous.degraded {
                    tracing::info!(registry = %status.source, "registry reachable again");
                }
                if previous.revision.as_deref() != Some(report.revision.as_str()) {
                    tracing::info!(registry = %status.source, revision = %report.revision, "registry revision");
                }
                let now = SystemTime::now();
                status.revision = Some(report.revision);
                status.degraded = false;
                status.error = None;
                status.problems = report.problems;
                status.last_success = Some(sluice_registry::format_rfc3339(now));
                if let Some(m) = &self.metrics {
                    let g = m.registry_gauges();
                    g.degraded.set(0);
                    g.revision.set(revision_number(status.revision.as_deref()));
                    g.last_success_seconds.set(
                        now.duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64),
                    );
                    m.registry_syncs.get(&["success"]).inc();
                }
                report.changed
            }
            Err(e) => {
                // Logged when it starts failing and when the reason changes,
                // not on every poll.
                let reason = e.to_string();
                if previous.error.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(
                        registry = %status.source,
                        error = %reason,
                        "registry unreachable: serving the versions this replica has (degraded)"
                    );
                }
                status.degraded = true;
                status.error = Some(reason);
                if let Some(m) = &self.metrics {
                    m.registry_gauges().degraded.set(1);
                    m.registry_syncs.get(&["failure"]).inc();
                }
                false
            }
        };
        self.status.store(Arc::new(status));
        changed
    }
}

/// The first 13 hex digits (52 bits) of a revision as an integer, exact in
/// a float: the `sluice_registry_revision` gauge, equal on two replicas iff
/// (but for a 2^-52 chance) they serve the same revision. 0: none yet.
pub fn revision_number(revision: Option<&str>) -> i64 {
    revision
        .and_then(|r| r.get(..13))
        .and_then(|r| i64::from_str_radix(r, 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn revision_numbers_are_exact_in_a_float() {
        let n = super::revision_number(Some("fffffffffffff0123"));
        assert_eq!(n, (1i64 << 52) - 1);
        assert_eq!(n as f64 as i64, n);
        assert_eq!(super::revision_number(None), 0);
    }
}
