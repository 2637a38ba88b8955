//! The progressive rollout controller: one task per model in rollout. Each
//! interval it compares the canary with the stable version over the same
//! window (requests, server-side errors and p99 from the versions' own
//! metrics; the canary's shadow agreement, when it was shadowed), then
//! holds, raises the canary's weight, promotes it, or rolls it back
//! (`sluice_rollout::gates::decide`). Every change goes through the model
//! manager (checked, stored in the registry, swapped atomically) and into the
//! audit log with its evidence, as actor `controller`.
//!
//! The controller lives in the gateway that started it; its plan and
//! decisions are in the audit log and in `GET /admin/models/{m}/rollout`.
//! A manual policy change or rollback of the model stops it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use sluice_rollout::audit::{self, AuditEntry};
use sluice_rollout::gates::{self, Decision, Plan, WindowStats};
use sluice_rollout::policy::{Canary, TrafficPolicy};
use sluice_serving::ModelManager;
use sluice_telemetry::{Metrics, RequestTotals};
use tokio::sync::Notify;

use crate::shadow::ShadowBook;

/// Decisions kept in a rollout's status.
const KEPT_DECISIONS: usize = 50;

/// Where a rollout stands.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    pub model: String,
    /// `running`, `promoted`, `rolled_back`, `stopped` or `failed`.
    pub state: &'static str,
    pub plan: Plan,
    /// Index into `plan.steps` of the weight in force.
    pub step: usize,
    pub weight_percent: f64,
    pub started: String,
    /// Why it stopped, when it did.
    pub reason: Option<String>,
    /// The latest decisions, oldest first, each with its evidence.
    pub decisions: VecDeque<Value>,
}

/// One model's rollout: its status, and a way to stop its task.
pub struct Rollout {
    status: Mutex<RolloutStatus>,
    stop: Notify,
}

impl Rollout {
    pub fn status(&self) -> RolloutStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut RolloutStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Stops the task at its next wake-up; `reason` goes in the status.
    pub fn stop(&self, reason: &str) {
        self.update(|s| {
            if s.state == "running" {
                s.state = "stopped";
                s.reason = Some(reason.to_string());
            }
        });
        self.stop.notify_one();
    }
}

/// The rollouts of this gateway, by model (admin requests only).
#[derive(Default)]
pub struct Rollouts {
    runs: Mutex<HashMap<String, Arc<Rollout>>>,
}

impl Rollouts {
    pub fn get(&self, model: &str) -> Option<Arc<Rollout>> {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .cloned()
    }

    /// Stops the model's rollout if one is running.
    pub fn stop(&self, model: &str, reason: &str) {
        if let Some(r) = self.get(model) {
            r.stop(reason);
        }
    }

    fn insert(&self, model: &str, rollout: Arc<Rollout>) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = runs.insert(model.to_string(), rollout) {
            old.stop("replaced by a new rollout");
        }
    }
}

/// What the controller needs from the gateway.
#[derive(Clone)]
pub struct Context {
    pub manager: ModelManager,
    pub metrics: Arc<Metrics>,
    pub shadows: Arc<ShadowBook>,
    pub rollouts: Arc<Rollouts>,
}

/// Appends to the registry's audit log: the local file (off the async
/// threads: it fsyncs), or, with a registry on object storage, the log in
/// the bucket, by a conditional write that concurrent replicas cannot undo.
pub async fn record(
    manager: &ModelManager,
    mut entry: AuditEntry,
) -> Result<audit::AuditRecord, String> {
    // A model that requires validation: the gate's evidence for the versions
    // the new policy gives traffic to goes with the change.
    if let Some(gate) = gate_evidence(manager, &entry.model, &entry.after) {
        match &mut entry.evidence {
            Value::Object(map) => {
                map.insert("validation".into(), gate);
            }
            other => *other = json!({ "validation": gate, "evidence": other.take() }),
        }
    }
    if let Some(registry) = manager.registry() {
        return registry
            .remote()
            .update(sluice_registry::AUDIT_FILE, |old| {
                audit::append_to(old, entry.clone())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string());
    }
    let root = manager.repository_root().to_path_buf();
    tokio::task::spawn_blocking(move || audit::append(&root, entry))
        .await
        .map_err(|e| format!("audit task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// The validation gate's verdicts on the versions `policy` (JSON) names,
/// for a model that requires validation; `None` otherwise.
fn gate_evidence(manager: &ModelManager, model: &str, policy: &Value) -> Option<Value> {
    let snapshot = manager.snapshot();
    let entry = snapshot.model(model)?;
    if !entry.config.require_validation {
        return None;
    }
    let policy: sluice_rollout::policy::TrafficPolicy =
        serde_json::from_value(policy.clone()).ok()?;
    let mut out = serde_json::Map::new();
    for v in policy.versions() {
        let verdict = match entry.gate.get(&v) {
            Some(Ok(evidence)) => evidence.clone(),
            Some(Err(why)) => json!({ "refused": why }),
            None => json!({ "refused": "not loaded" }),
        };
        out.insert(v.to_string(), verdict);
    }
    Some(Value::Object(out))
}

/// Records a policy change the validation gate refused (who asked, what,
/// and why), and hands the error back. Other refusals are not audited:
/// they are a caller's mistakes, not the gate's decisions.
pub async fn refused(
    manager: &ModelManager,
    actor: &str,
    action: &str,
    model: &str,
    requested: &sluice_rollout::policy::TrafficPolicy,
    error: sluice_serving::ServingError,
) -> sluice_serving::ServingError {
    if let sluice_serving::ServingError::InvalidPolicy { reason, .. } = &error
        && reason.starts_with(sluice_serving::policy::GATE_REFUSAL)
    {
        let before = manager
            .snapshot()
            .model(model)
            .and_then(|m| m.policy.as_deref().cloned());
        let entry = AuditEntry {
            actor: actor.to_string(),
            action: format!("{action}.refused"),
            model: model.to_string(),
            before: serde_json::to_value(&before).unwrap_or(Value::Null),
            after: serde_json::to_value(requested).unwrap_or(Value::Null),
            evidence: json!({ "reason": reason }),
        };
        if let Err(e) = record(manager, entry).await {
            tracing::error!(model = %model, error = %e, "cannot append to the audit log");
        }
    }
    error
}

/// Starts a rollout of `plan` on `model`: the canary at the first step's
/// weight (checked and stored like any policy change, and audited as
/// `actor`'s), then the controller task. Returns the policy put in effect.
pub async fn start(
    ctx: Context,
    model: &str,
    plan: Plan,
    actor: &str,
) -> Result<TrafficPolicy, crate::ApiError> {
    plan.check().map_err(crate::ApiError::BadRequest)?;
    let (current, serving) = {
        let snapshot = ctx.manager.snapshot();
        let entry = snapshot
            .model(model)
            .ok_or_else(|| crate::ApiError::NotFound(format!("unknown model '{model}'")))?;
        (
            entry.policy.as_deref().cloned().unwrap_or_default(),
            entry.default_version().map(|e| e.version()),
        )
    };
    let mut policy = current.clone();
    // The rollout compares the canary with the version serving now: pin it,
    // so that it stays the stable one whatever versions appear meanwhile.
    if policy.stable.is_none() {
        policy.stable = serving;
    }
    policy.canary = Some(Canary {
        version: plan.canary,
        weight: plan.steps[0] / 100.0,
    });
    policy.shadows.retain(|s| s.version != plan.canary);
    let change = match ctx.manager.set_policy(model, policy.clone()).await {
        Ok(change) => change,
        Err(e) => {
            return Err(
                refused(&ctx.manager, actor, "rollout.start", model, &policy, e)
                    .await
                    .into(),
            );
        }
    };
    record(
        &ctx.manager,
        AuditEntry {
            actor: actor.to_string(),
            action: "rollout.start".into(),
            model: model.to_string(),
            before: serde_json::to_value(&change.before).unwrap_or(Value::Null),
            after: serde_json::to_value(&change.after).unwrap_or(Value::Null),
            evidence: json!({ "plan": plan }),
        },
    )
    .await
    .map_err(crate::ApiError::Internal)?;
    let rollout = Arc::new(Rollout {
        status: Mutex::new(RolloutStatus {
            model: model.to_string(),
            state: "running",
            step: 0,
            weight_percent: plan.steps[0],
            plan: plan.clone(),
            started: audit::format_time(std::time::SystemTime::now()),
            reason: None,
            decisions: VecDeque::new(),
        }),
        stop: Notify::new(),
    });
    ctx.rollouts.insert(model, rollout.clone());
    tokio::spawn(run(ctx, model.to_string(), plan, rollout));
    Ok(change.after)
}

/// The totals of a version now, if it is loaded and has metrics.
fn totals(manager: &ModelManager, model: &str, version: u64) -> Option<RequestTotals> {
    let snapshot = manager.snapshot();
    let executor = snapshot.model(model)?.versions.get(&version)?.clone();
    drop(snapshot);
    Some(executor.metrics()?.totals())
}

fn window(before: &RequestTotals, after: &RequestTotals) -> WindowStats {
    WindowStats {
        requests: after.requests.saturating_sub(before.requests),
        errors: after.errors.saturating_sub(before.errors),
        p99_seconds: gates::window_quantile(
            0.99,
            after.latency_bounds,
            &before.latency_buckets,
            &after.latency_buckets,
        ),
    }
}

async fn run(ctx: Context, model: String, plan: Plan, rollout: Arc<Rollout>) {
    let interval = Duration::from_secs_f64(plan.interval_s);
    let mut step = 0usize;
    let stable_version = |m: &ModelManager| {
        m.snapshot()
            .model(&model)
            .and_then(|e| e.default_version().map(|d| d.version()))
    };
    let Some(mut stable) = stable_version(&ctx.manager) else {
        rollout.update(|s| {
            s.state = "failed";
            s.reason = Some("the model has no stable version".into());
        });
        return;
    };
    let read = |v: u64| totals(&ctx.manager, &model, v);
    let (Some(mut stable_before), Some(mut canary_before)) = (read(stable), read(plan.canary))
    else {
        rollout.update(|s| {
            s.state = "failed";
            s.reason = Some("the rollout controller needs metrics (they are off)".into());
        });
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = rollout.stop.notified() => return,
        }
        if rollout.status().state != "running" {
            return;
        }
        // The policy must still be ours: a manual change stops the rollout.
        let (current, now_stable) = {
            let snapshot = ctx.manager.snapshot();
            let entry = snapshot.model(&model).cloned();
            drop(snapshot);
            let policy = entry.as_ref().and_then(|e| e.policy.as_deref().cloned());
            let now_stable = entry
                .as_ref()
                .and_then(|e| e.default_version().map(|d| d.version()));
            (policy, now_stable)
        };
        let Some(current) = current.filter(|p| {
            p.canary
                .as_ref()
                .is_some_and(|c| c.version == plan.canary && c.weight > 0.0)
        }) else {
            rollout.update(|s| {
                s.state = "stopped";
                s.reason = Some("the policy no longer has this canary".into());
            });
            return;
        };
        if now_stable != Some(stable) {
            // A new stable version: compare against it from now on.
            stable = match now_stable {
                Some(v) => v,
                None => continue,
            };
            if let (Some(s), Some(c)) = (read(stable), read(plan.canary)) {
                (stable_before, canary_before) = (s, c);
            }
            continue;
        }
        let (Some(stable_now), Some(canary_now)) = (read(stable), read(plan.canary)) else {
            rollout.update(|s| {
                s.state = "failed";
                s.reason = Some("a version of the rollout is no longer loaded".into());
            });
            return;
        };
        let stable_window = window(&stable_before, &stable_now);
        let canary_window = window(&canary_before, &canary_now);
        (stable_before, canary_before) = (stable_now, canary_now);
        let agreement = ctx
            .shadows
            .existing(&model, plan.canary)
            .and_then(|s| s.agreement())
            .filter(|(_, compared)| *compared > 0);
        let (decision, evidence) =
            gates::decide(&plan, step, &stable_window, &canary_window, agreement);
        let name = match &decision {
            Decision::Hold { .. } => "hold",
            Decision::Advance { .. } => "advance",
            Decision::Promote => "promote",
            Decision::Rollback { .. } => "rollback",
        };
        ctx.metrics
            .rollout_decisions
            .get(&[model.as_str(), name])
            .inc();
        let entry = json!({
            "time": audit::format_time(std::time::SystemTime::now()),
            "decision": decision,
            "evidence": evidence,
        });
        rollout.update(|s| {
            s.decisions.push_back(entry);
            while s.decisions.len() > KEPT_DECISIONS {
                s.decisions.pop_front();
            }
        });
        let mut next = current.clone();
        let (state, action) = match &decision {
            Decision::Hold { .. } => continue,
            Decision::Advance { to_percent } => {
                if let Some(c) = next.canary.as_mut() {
                    c.weight = to_percent / 100.0;
                }
                ("running", "rollout.advance")
            }
            Decision::Promote => {
                next.stable = Some(plan.canary);
                next.canary = None;
                ("promoted", "rollout.promote")
            }
            Decision::Rollback { .. } => {
                if let Some(c) = next.canary.as_mut() {
                    c.weight = 0.0;
                }
                ("rolled_back", "rollout.rollback")
            }
        };
        let applied = ctx.manager.set_policy(&model, next).await;
        let change = match applied {
            Ok(change) => change,
            Err(e) => {
                tracing::warn!(model = %model, error = %e, "rollout controller could not apply its decision");
                rollout.update(|s| {
                    s.state = "failed";
                    s.reason = Some(e.to_string());
                });
                return;
            }
        };
        tracing::info!(model = %model, decision = name, canary = plan.canary, "rollout decision applied");
        if let Err(e) = record(
            &ctx.manager,
            AuditEntry {
                actor: "controller".into(),
                action: action.into(),
                model: model.clone(),
                before: serde_json::to_value(&change.before).unwrap_or(Value::Null),
                after: serde_json::to_value(&change.after).unwrap_or(Value::Null),
                evidence: {
                    // The decision beside the evaluation it came from, at
                    // the same level as in the rollout's status.
                    let mut e = evidence;
                    if let Value::Object(map) = &mut e {
                        map.insert(
                            "decision".into(),
                            serde_json::to_value(&decision).unwrap_or(Value::Null),
                        );
                    }
                    e
                },
            },
        )
        .await
        {
            tracing::error!(model = %model, error = %e, "cannot append to the audit log");
        }
        if let Decision::Advance { to_percent } = decision {
            step += 1;
            rollout.update(|s| {
                s.step = step;
                s.weight_percent = to_percent;
            });
        } else {
            let reason = match &decision {
                Decision::Rollback { reason } => Some(reason.clone()),
                _ => None,
            };
            rollout.update(|s| {
                s.state = state;
                s.reason = reason;
            });
            return;
        }
    }
}
