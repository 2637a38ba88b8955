//! The immutable routing snapshot the request path reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use sluice_registry::ModelConfig;
use sluice_rollout::policy::{Shadow, TrafficPolicy};
use sluice_runtime::ModelExecutor;

/// The state of one version, as the repository index reports it (Triton's
/// names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VersionState {
    Ready,
    Loading,
    Unavailable,
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    pub name: String,
    /// Empty for a model-level row (a model with no version at all, or an
    /// invalid `model.toml`).
    pub version: String,
    pub state: VersionState,
    /// Why it is not ready; empty when it is.
    pub reason: String,
    /// Whether its manifest matched (`Some(true)`), or there was none
    /// (`Some(false)`); `None` when not loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// Who signed its manifest (`name (key id)`), when the server has
    /// trusted keys and the signature verified with one of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// One model as requests see it.
#[derive(Debug)]
pub struct ModelSnapshot {
    pub name: String,
    pub config: ModelConfig,
    /// Ready versions only: everything here can answer now.
    pub versions: BTreeMap<u64, Arc<ModelExecutor>>,
    /// The traffic policy in effect: every version it names is in
    /// `versions` (checked before it was put here).
    pub policy: Option<Arc<TrafficPolicy>>,
    /// Why the model's policy file is not (or no longer) in effect.
    pub policy_error: Option<String>,
    /// With `require_validation`: the validation gate's verdict on each
    /// ready version (the evidence it passed on, or why it may take no
    /// traffic). Empty otherwise: every ready version may.
    pub gate: BTreeMap<u64, crate::gate::Verdict>,
}

impl ModelSnapshot {
    /// The version a request without one goes to: the policy's stable
    /// version, else the highest ready version the validation gate lets
    /// take traffic.
    pub fn default_version(&self) -> Option<&Arc<ModelExecutor>> {
        self.policy
            .as_ref()
            .and_then(|p| p.stable)
            .and_then(|v| self.versions.get(&v))
            .or_else(|| {
                self.versions
                    .iter()
                    .rev()
                    .find(|(v, _)| self.may_take_traffic(**v))
                    .map(|(_, e)| e)
            })
    }

    /// Whether the validation gate lets `version` be stable, canary or
    /// shadow (always, for a model that does not require validation).
    pub fn may_take_traffic(&self, version: u64) -> bool {
        self.gate.get(&version).is_none_or(Result::is_ok)
    }

    /// The canary version and its weight, when the policy has one.
    pub fn canary(&self) -> Option<(&Arc<ModelExecutor>, f64)> {
        let canary = self.policy.as_ref()?.canary.as_ref()?;
        Some((self.versions.get(&canary.version)?, canary.weight))
    }

    /// The shadow versions, each with its policy entry (the percentage of
    /// requests it gets a copy of, and how agreement is judged).
    pub fn shadows(&self) -> impl Iterator<Item = (&Arc<ModelExecutor>, &Shadow)> {
        self.policy
            .iter()
            .flat_map(|p| p.shadows.iter())
            .filter_map(|s| Some((self.versions.get(&s.version)?, s)))
    }
}

/// Everything the request path needs, swapped as one value.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Models with at least one version known (ready or not).
    pub models: HashMap<String, Arc<ModelSnapshot>>,
    /// Every model and version the manager knows of, for the index.
    pub index: Vec<IndexEntry>,
    /// True once the first reconcile finished (the server is ready).
    pub initialised: bool,
}

impl Snapshot {
    pub fn model(&self, name: &str) -> Option<&Arc<ModelSnapshot>> {
        self.models.get(name)
    }

    /// Whether any row of the index names this model.
    pub fn knows(&self, name: &str) -> bool {
        self.index.iter().any(|e| e.name == name)
    }

    /// Why a model has no ready version, from its index rows: each reason,
    /// prefixed with its version, joined with "; ".
    pub fn why_not_ready(&self, name: &str) -> String {
        let why: Vec<String> = self
            .index
            .iter()
            .filter(|e| e.name == name && !e.reason.is_empty())
            .map(|e| {
                if e.version.is_empty() {
                    e.reason.clone()
                } else {
                    format!("version {}: {}", e.version, e.reason)
                }
            })
            .collect();
        if why.is_empty() {
            "no version has loaded yet".into()
        } else {
            why.join("; ")
        }
    }

    /// The index rows of one version, if the manager knows it.
    pub fn version_entry(&self, name: &str, version: u64) -> Option<&IndexEntry> {
        let v = version.to_string();
        self.index.iter().find(|e| e.name == name && e.version == v)
    }
}
