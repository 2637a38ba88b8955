//! The inventory (`GET /admin/inventory`, `sluice models inventory`): every
//! model and version the registry holds, with what an auditor asks of it:
//! its content hash and signer, its lineage as given at publish time, its
//! validation result, the role it has now (stable, canary and weight,
//! shadow and percent) and when and by whom it took that role, from the
//! audit log.
//!
//! Built on demand from the routing snapshot (roles, load state), the
//! version directories (`manifest.json`, `manifest.sig`, `validation.json`,
//! read as JSON so that fields added later show up as they are) and the
//! audit log. Reads files: call it off the async threads.

use std::path::Path;

use serde_json::{Map, Value, json};
use sluice_rollout::audit::{self, AuditRecord};
use sluice_rollout::policy::TrafficPolicy;
use sluice_serving::Snapshot;

/// The inventory of the repository at `root` as `snapshot` serves it.
pub fn build(snapshot: &Snapshot, root: &Path) -> Result<Value, String> {
    let records = audit::read(root, None, usize::MAX).map_err(|e| e.to_string())?;
    let mut models: Vec<String> = snapshot.index.iter().map(|e| e.name.clone()).collect();
    models.sort();
    models.dedup();
    let mut out = Vec::new();
    for model in models {
        let served = snapshot.model(&model);
        let policy = served.and_then(|m| m.policy.as_deref());
        let default = served.and_then(|m| m.default_version().map(|e| e.version()));
        let history: Vec<&AuditRecord> = records.iter().filter(|r| r.model == model).collect();
        let mut versions = Vec::new();
        for entry in snapshot.index.iter().filter(|e| e.name == model) {
            let Ok(version) = entry.version.parse::<u64>() else {
                continue;
            };
            let dir = root.join(&model).join(&entry.version);
            let manifest = read_json(&dir.join(sluice_registry::MANIFEST_FILE));
            let signature = read_json(&dir.join("manifest.sig"));
            let validation = read_json(&dir.join("validation.json"));
            let roles: Vec<Value> = roles_of(policy, default, version)
                .into_iter()
                .map(|role| {
                    let since = took_role(&history, &role, version);
                    let mut v = role.to_json();
                    v["since"] = since;
                    v
                })
                .collect();
            versions.push(json!({
                "version": version,
                "state": entry.state,
                "reason": entry.reason,
                "verified": entry.verified,
                "sha256": manifest.as_ref().and_then(|m| m.get("sha256")).cloned(),
                "size_bytes": manifest.as_ref().and_then(|m| m.get("size_bytes")).cloned(),
                "published": manifest.as_ref().and_then(|m| m.get("created")).cloned(),
                "lineage": manifest.as_ref().and_then(|m| m.get("lineage")).cloned()
                    .unwrap_or(Value::Object(Map::new())),
                // Verified: the server's trusted keys checked the signature
                // when the version loaded. Otherwise what manifest.sig
                // claims, unchecked (no trusted keys configured).
                "signer": signature.as_ref().map(|s| json!({
                    "key_id": s.get("key_id"),
                    "algorithm": s.get("algorithm"),
                    "verified": entry.signer.is_some(),
                    "name": entry.signer,
                })),
                "validation": validation_summary(manifest.as_ref(), validation.as_ref()),
                // The validation gate (models with `require_validation`):
                // "allowed", or why the version may take no traffic.
                "traffic": match served.and_then(|m| m.gate.get(&version)) {
                    None => Value::from("allowed"),
                    Some(Ok(_)) => Value::from("allowed (validated)"),
                    Some(Err(why)) => Value::from(format!("refused: {why}")),
                },
                "roles": roles,
            }));
        }
        out.push(json!({
            "model": model,
            "policy": policy,
            "versions": versions,
        }));
    }
    Ok(json!({ "models": out }))
}

/// A role a version can hold under a policy.
#[derive(Debug, Clone, PartialEq)]
enum Role {
    /// `implicit`: there is no policy and this is the highest version.
    Stable {
        share: f64,
        implicit: bool,
    },
    Canary {
        weight: f64,
    },
    Shadow {
        percent: f64,
    },
}

impl Role {
    fn kind(&self) -> &'static str {
        match self {
            Role::Stable { .. } => "stable",
            Role::Canary { .. } => "canary",
            Role::Shadow { .. } => "shadow",
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Role::Stable { share, implicit } => {
                json!({ "role": "stable", "share": share, "implicit": implicit })
            }
            Role::Canary { weight } => json!({ "role": "canary", "weight": weight }),
            Role::Shadow { percent } => json!({ "role": "shadow", "percent": percent }),
        }
    }
}

/// The roles `version` holds under `policy` (`None`: no policy, and the
/// highest ready version, `default`, is stable).
fn roles_of(policy: Option<&TrafficPolicy>, default: Option<u64>, version: u64) -> Vec<Role> {
    let mut roles = Vec::new();
    let canary_weight = policy
        .and_then(|p| p.canary.as_ref())
        .map_or(0.0, |c| c.weight);
    let stable = policy.and_then(|p| p.stable).or(default);
    if stable == Some(version) {
        roles.push(Role::Stable {
            share: 1.0 - canary_weight,
            implicit: policy.is_none_or(|p| p.stable.is_none()),
        });
    }
    if let Some(canary) = policy.and_then(|p| p.canary.as_ref())
        && canary.version == version
    {
        roles.push(Role::Canary {
            weight: canary.weight,
        });
    }
    for shadow in policy.map(|p| p.shadows.as_slice()).unwrap_or_default() {
        if shadow.version == version {
            roles.push(Role::Shadow {
                percent: shadow.percent,
            });
        }
    }
    roles
}

/// The audit record by which `version` last took `role` (its kind: a weight
/// changed later is the same role), as `{time, actor, action, seq}`; null
/// when no record gave it (e.g. stable as the highest version, no policy).
fn took_role(history: &[&AuditRecord], role: &Role, version: u64) -> Value {
    let holds = |policy: &Value| -> bool {
        let policy: Option<TrafficPolicy> = match policy {
            Value::Null => None,
            other => match serde_json::from_value(other.clone()) {
                Ok(p) => Some(p),
                Err(_) => return false,
            },
        };
        roles_of(policy.as_ref(), None, version)
            .iter()
            .any(|r| r.kind() == role.kind())
    };
    history
        .iter()
        .rev()
        .filter(|r| r.after.is_object())
        .find(|r| holds(&r.after) && !holds(&r.before))
        .map_or(
            Value::Null,
            |r| json!({ "time": r.time, "actor": r.actor, "action": r.action, "seq": r.seq }),
        )
}

/// The validation result: the manifest's record of the report (its hash,
/// whether it passed), checked against the report beside the version.
fn validation_summary(manifest: Option<&Value>, report: Option<&Value>) -> Value {
    let record = manifest.and_then(|m| m.get("validation")).cloned();
    match (record, report) {
        (None, None) => Value::Null,
        (record, report) => json!({
            "recorded": record,
            "passed": report.and_then(|r| r.get("passed")).cloned(),
            "created": report.and_then(|r| r.get("created")).cloned(),
        }),
    }
}

fn read_json(path: &Path) -> Option<Value> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(value: Value) -> TrafficPolicy {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn roles_follow_the_policy() {
        let p = policy(json!({
            "stable": 1,
            "canary": { "version": 2, "weight": 0.25 },
            "shadows": [{ "version": 3, "percent": 50.0 }],
        }));
        assert_eq!(
            roles_of(Some(&p), Some(3), 1),
            vec![Role::Stable {
                share: 0.75,
                implicit: false
            }]
        );
        assert_eq!(
            roles_of(Some(&p), Some(3), 2),
            vec![Role::Canary { weight: 0.25 }]
        );
        assert_eq!(
            roles_of(Some(&p), Some(3), 3),
            vec![Role::Shadow { percent: 50.0 }]
        );
        assert_eq!(
            roles_of(None, Some(3), 3),
            vec![Role::Stable {
                share: 1.0,
                implicit: true
            }]
        );
        assert!(roles_of(None, Some(3), 2).is_empty());
    }
}
