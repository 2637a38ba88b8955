//! The admin API (`/admin/...`): traffic policies, promotion and rollback,
//! progressive rollouts, shadow comparisons and the audit log. Every route
//! needs an admin key (`Authorization: Bearer ...`); the key's name is the
//! actor the audit log records.

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_rollout::audit::{self, AuditEntry};
use sluice_rollout::gates::Plan;
use sluice_rollout::policy::TrafficPolicy;

use crate::AppState;
use crate::auth::Denied;
use crate::error::ApiError;
use crate::rollout;

/// The name of the admin key a request was let in with.
#[derive(Debug, Clone)]
struct Actor(String);

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/admin/models/{model}/policy",
            get(get_policy).put(put_policy),
        )
        .route("/admin/models/{model}/promote", post(promote))
        .route("/admin/models/{model}/rollback", post(rollback))
        .route(
            "/admin/models/{model}/rollout",
            get(rollout_status).post(rollout_start).delete(rollout_stop),
        )
        .route(
            "/admin/models/{model}/shadow/{version}/diffs",
            get(shadow_diffs),
        )
        .route("/admin/audit", get(audit_log))
        .route("/admin/inventory", get(inventory))
        .route_layer(axum::middleware::from_fn_with_state(state, require_admin))
}

/// Lets a request in only with a valid admin key.
async fn require_admin(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match state.options.admin_keys.check(request.headers()) {
        Ok(name) => {
            let actor = Actor(name.to_string());
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(Denied::NotConfigured) => ApiError::Forbidden(
            "the admin API is off: start sluice with --admin-keys-file or SLUICE_ADMIN_KEYS".into(),
        )
        .into_response(),
        Err(Denied::Missing) => ApiError::Unauthorized(
            "the admin API needs an admin key: Authorization: Bearer <key>".into(),
        )
        .into_response(),
        Err(Denied::Wrong) => {
            ApiError::Unauthorized("that is not an admin key".into()).into_response()
        }
    }
}

fn actor(request_actor: &Option<axum::Extension<Actor>>) -> String {
    request_actor
        .as_ref()
        .map(|a| a.0.0.clone())
        .unwrap_or_else(|| "unknown".into())
}

async fn get_policy(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = state.manager.snapshot();
    let entry = snapshot
        .model(&model)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("unknown model '{model}'")))?;
    drop(snapshot);
    let rollout = state.rollouts.get(&model).map(|r| r.status());
    Ok(Json(json!({
        "model": model,
        "policy": entry.policy.as_deref(),
        "stable": entry.default_version().map(|e| e.version()),
        "ready_versions": entry.versions.keys().collect::<Vec<_>>(),
        "policy_error": entry.policy_error,
        "rollout": rollout.map(|r| r.state),
    })))
}

/// Applies a policy change and audits it; the answer is the audit record.
async fn apply(
    state: &AppState,
    model: &str,
    policy: TrafficPolicy,
    who: String,
    action: &str,
    evidence: Value,
) -> Result<Json<Value>, ApiError> {
    let change = match state.manager.set_policy(model, policy.clone()).await {
        Ok(change) => change,
        Err(e) => {
            return Err(
                rollout::refused(&state.manager, &who, action, model, &policy, e)
                    .await
                    .into(),
            );
        }
    };
    let record = rollout::record(
        &state.manager,
        AuditEntry {
            actor: who,
            action: action.to_string(),
            model: model.to_string(),
            before: serde_json::to_value(&change.before).unwrap_or(Value::Null),
            after: serde_json::to_value(&change.after).unwrap_or(Value::Null),
            evidence,
        },
    )
    .await
    .map_err(ApiError::Internal)?;
    Ok(Json(json!({
        "model": model,
        "policy": change.after,
        "audit": { "seq": record.seq, "hash": record.hash },
    })))
}

fn current_policy(state: &AppState, model: &str) -> Result<TrafficPolicy, ApiError> {
    let snapshot = state.manager.snapshot();
    let entry = snapshot
        .model(model)
        .ok_or_else(|| ApiError::NotFound(format!("unknown model '{model}'")))?;
    Ok(entry.policy.as_deref().cloned().unwrap_or_default())
}

async fn put_policy(
    State(state): State<AppState>,
    Path(model): Path<String>,
    who: Option<axum::Extension<Actor>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let policy: TrafficPolicy = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the policy is not valid JSON of a traffic policy: {e}"
        ))
    })?;
    // A policy set by hand overrides a running rollout, once it took
    // effect (a refused change leaves the rollout running).
    let answer = apply(
        &state,
        &model,
        policy,
        actor(&who),
        "policy.set",
        Value::Null,
    )
    .await?;
    state.rollouts.stop(&model, "the policy was set by hand");
    Ok(answer)
}

async fn promote(
    State(state): State<AppState>,
    Path(model): Path<String>,
    who: Option<axum::Extension<Actor>>,
) -> Result<Json<Value>, ApiError> {
    let mut policy = current_policy(&state, &model)?;
    let Some(canary) = policy.canary.take() else {
        return Err(ApiError::BadRequest(format!(
            "model '{model}' has no canary to promote"
        )));
    };
    policy.stable = Some(canary.version);
    let answer = apply(&state, &model, policy, actor(&who), "promote", Value::Null).await?;
    state.rollouts.stop(&model, "promoted by hand");
    Ok(answer)
}

async fn rollback(
    State(state): State<AppState>,
    Path(model): Path<String>,
    who: Option<axum::Extension<Actor>>,
) -> Result<Json<Value>, ApiError> {
    let mut policy = current_policy(&state, &model)?;
    let Some(canary) = policy.canary.as_mut() else {
        return Err(ApiError::BadRequest(format!(
            "model '{model}' has no canary to roll back"
        )));
    };
    canary.weight = 0.0;
    let answer = apply(&state, &model, policy, actor(&who), "rollback", Value::Null).await?;
    state.rollouts.stop(&model, "rolled back by hand");
    Ok(answer)
}

async fn rollout_start(
    State(state): State<AppState>,
    Path(model): Path<String>,
    who: Option<axum::Extension<Actor>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let plan: Plan = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the rollout plan is not valid: {e}")))?;
    let Some(metrics) = state.options.metrics.clone() else {
        return Err(ApiError::BadRequest(
            "the rollout controller compares versions by their metrics, which are off".into(),
        ));
    };
    let ctx = rollout::Context {
        manager: state.manager.clone(),
        metrics,
        shadows: state.shadows.clone(),
        rollouts: state.rollouts.clone(),
    };
    let policy = rollout::start(ctx, &model, plan, &actor(&who)).await?;
    let status = state.rollouts.get(&model).map(|r| r.status());
    Ok(Json(
        json!({ "model": model, "policy": policy, "rollout": status }),
    ))
}

async fn rollout_status(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.rollouts.get(&model) {
        Some(r) => Ok(Json(
            serde_json::to_value(r.status()).unwrap_or(Value::Null),
        )),
        None => Err(ApiError::NotFound(format!(
            "no rollout of model '{model}' was started on this gateway"
        ))),
    }
}

async fn rollout_stop(
    State(state): State<AppState>,
    Path(model): Path<String>,
    who: Option<axum::Extension<Actor>>,
) -> Result<Response, ApiError> {
    let Some(r) = state.rollouts.get(&model) else {
        return Err(ApiError::NotFound(format!(
            "no rollout of model '{model}' was started on this gateway"
        )));
    };
    r.stop("stopped by hand");
    let who = actor(&who);
    rollout::record(
        &state.manager,
        AuditEntry {
            actor: who,
            action: "rollout.stop".into(),
            model: model.clone(),
            before: Value::Null,
            after: Value::Null,
            evidence: json!({ "status": r.status() }),
        },
    )
    .await
    .map_err(ApiError::Internal)?;
    Ok((
        StatusCode::OK,
        Json(serde_json::to_value(r.status()).unwrap_or(Value::Null)),
    )
        .into_response())
}

async fn shadow_diffs(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, u64)>,
) -> Result<Json<Value>, ApiError> {
    let Some(shadow) = state.shadows.existing(&model, version) else {
        return Err(ApiError::NotFound(format!(
            "model '{model}' version {version} has not been shadowed since this gateway started"
        )));
    };
    let (agreed, compared) = shadow.agreement().unwrap_or((0, 0));
    Ok(Json(json!({
        "model": model,
        "version": version,
        "compared": compared,
        "agreed": agreed,
        "agreement": if compared > 0 { Some(agreed as f64 / compared as f64) } else { None },
        "samples": shadow.diffs.samples(),
    })))
}

/// Every model and version with its hash, signer, lineage, validation and
/// current role, and when and by whom it took that role.
async fn inventory(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snapshot = state.manager.snapshot_full();
    let root = state.manager.repository_root().to_path_buf();
    tokio::task::spawn_blocking(move || crate::inventory::build(&snapshot, &root))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(Json)
        .map_err(ApiError::Internal)
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    model: Option<String>,
    limit: Option<usize>,
}

async fn audit_log(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let root = state.manager.repository_root().to_path_buf();
    let limit = q.limit.unwrap_or(100).min(10_000);
    let records =
        tokio::task::spawn_blocking(move || audit::read(&root, q.model.as_deref(), limit))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({ "records": records })))
}
