//! Traffic policies as the serving side applies them: a policy file is only
//! put in effect once every version it names is loaded and compatible with
//! the stable one.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_rollout::policy::TrafficPolicy;
use sluice_runtime::ModelExecutor;

/// How a refusal by the validation gate begins (the admin API records
/// these in the audit log).
pub const GATE_REFUSAL: &str = "refused by the validation gate";

/// Checks `policy` whole against the versions that are ready now: its own
/// rules (weights in range, no version in two roles), every version it names
/// loaded, and the canary's and shadows' signatures compatible with the
/// stable version's (a caller pinned to either side must get an answer of
/// the same form). The first problem found, worded for the user.
///
/// With a validation gate (`gate`: the verdicts of a model that requires
/// validation), every version the policy gives traffic to, the implicit
/// stable one included, must have passed it.
pub fn validate(
    policy: &TrafficPolicy,
    versions: &BTreeMap<u64, Arc<ModelExecutor>>,
    gate: &BTreeMap<u64, crate::gate::Verdict>,
) -> Result<(), String> {
    policy.check().map_err(|e| e.to_string())?;
    for v in policy.versions() {
        if !versions.contains_key(&v) {
            let ready: Vec<String> = versions.keys().map(u64::to_string).collect();
            return Err(format!(
                "version {v} is not loaded (ready: {})",
                if ready.is_empty() {
                    "none".to_string()
                } else {
                    ready.join(", ")
                }
            ));
        }
    }
    let stable = match policy.stable {
        Some(v) => versions.get(&v),
        None => versions
            .iter()
            .rev()
            .find(|(v, _)| gate.get(v).is_none_or(Result::is_ok))
            .map(|(_, e)| e),
    };
    let Some(stable) = stable else {
        return Err("the model has no ready version".into());
    };
    // Without `stable` the highest ready version is the stable one: a canary
    // or shadow that is that version would be compared with itself.
    if policy.stable.is_none() {
        let v = stable.version();
        if policy.canary.as_ref().is_some_and(|c| c.version == v) {
            return Err(format!(
                "canary version {v} is the stable version (without `stable`, the highest ready \
                 version is stable); name the stable version"
            ));
        }
        if policy.shadows.iter().any(|s| s.version == v) {
            return Err(format!(
                "shadow version {v} is the stable version (without `stable`, the highest ready \
                 version is stable); name the stable version"
            ));
        }
    }
    let roles = policy
        .stable
        .map(|v| ("stable", v))
        .into_iter()
        .chain(policy.canary.iter().map(|c| ("canary", c.version)))
        .chain(policy.shadows.iter().map(|s| ("shadow", s.version)));
    for (role, v) in roles {
        if let Some(Err(why)) = gate.get(&v) {
            return Err(format!(
                "{GATE_REFUSAL}: version {v} may not be {role}: the model requires validation \
                 and {why}"
            ));
        }
    }
    let others = policy
        .canary
        .iter()
        .map(|c| ("canary", c.version))
        .chain(policy.shadows.iter().map(|s| ("shadow", s.version)));
    for (role, v) in others {
        let Some(other) = versions.get(&v) else {
            continue;
        };
        if let Some(why) = stable.signature().incompatibility(other.signature()) {
            return Err(format!(
                "{role} version {v} is not compatible with stable version {}: {why}",
                stable.version()
            ));
        }
    }
    Ok(())
}
