//! The collector's HTTP API: records in (CloudEvents), references in, drift
//! out (JSON and the page), alerts out (webhooks).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/events` | CloudEvents 1.0, batch (`application/cloudevents-batch+json`, a JSON array) or one event (`application/cloudevents+json` or JSON) |
//! | `PUT /v1/models/{m}/versions/{v}/reference` | a reference dataset: CSV (header row) or OIP JSON tensors (`{"inputs": [...], "outputs": [...]}`) |
//! | `GET /v1/models/{m}/drift` | reference, windows with per-feature drift, alert |
//! | `GET /v1/alerts` | alerts in force |
//! | `GET /v1/metrics` | the collector's metrics, Prometheus text format (drift scores, alerts) |

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::collector::{AlertChange, Collector, CollectorError};
use crate::features;
use crate::store::{self, Column, Columns};

/// What the handlers share.
#[derive(Clone)]
pub struct CollectorState {
    pub collector: Arc<Collector>,
    /// Where raised and cleared alerts are posted (CloudEvents).
    pub webhooks: Arc<Vec<String>>,
    pub client: reqwest::Client,
}

/// The collector's routes.
pub fn routes(state: CollectorState) -> axum::Router {
    axum::Router::new()
        .route("/v1/events", post(events))
        .route(
            "/v1/models/{model}/versions/{version}/reference",
            put(reference),
        )
        .route("/v1/models/{model}/drift", get(drift))
        .route("/v1/alerts", get(alerts))
        .route("/v1/metrics", get(metrics))
        .route("/", get(crate::page::index))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl IntoResponse for CollectorError {
    fn into_response(self) -> Response {
        match self {
            CollectorError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
            // The store could not take it: nothing was accepted, retry later.
            CollectorError::Store(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

async fn events(State(state): State<CollectorState>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            );
        }
    };
    let batch = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/cloudevents-batch+json"));
    let events = match parsed {
        Value::Array(list) => list,
        Value::Object(_) if !batch => vec![parsed],
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected a CloudEvent or, in batch mode, a JSON array of them",
            );
        }
    };
    let collector = state.collector.clone();
    let outcome = tokio::task::spawn_blocking(move || collector.ingest(&events)).await;
    let (summary, changes) = match outcome {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    for change in changes {
        announce(&state.webhooks, &state.client, change);
    }
    Json(summary).into_response()
}

/// Closes the windows that are due by time, every second, for as long as
/// the collector lives (a model with little traffic still gets its windows).
pub fn spawn_ticker(state: &CollectorState) {
    let weak = Arc::downgrade(&state.collector);
    let (webhooks, client) = (state.webhooks.clone(), state.client.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(collector) = weak.upgrade() else {
                return;
            };
            let ticked = tokio::task::spawn_blocking(move || collector.tick()).await;
            match ticked {
                Ok(Ok(changes)) => {
                    for change in changes {
                        announce(&webhooks, &client, change);
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "closing drift windows by time failed"),
                Err(_) => return,
            }
        }
    });
}

/// Logs an alert change and posts it to every webhook (in the background,
/// with retries).
fn announce(webhooks: &[String], client: &reqwest::Client, change: AlertChange) {
    if change.raised {
        tracing::warn!(model = %change.model, version = change.version, window = change.window,
            features = %change.features.join(","), "drift alert raised");
    } else {
        tracing::info!(model = %change.model, version = change.version, window = change.window,
            "drift alert cleared");
    }
    let event = json!({
        "specversion": "1.0",
        "type": if change.raised { "dev.sluice.drift.alert.raised" } else { "dev.sluice.drift.alert.cleared" },
        "source": format!("sluice://collector/{}", change.model),
        "id": format!("{}-{}-{}-{}", change.model, change.version, change.window, change.raised),
        "time": change.time,
        "subject": format!("{}/{}", change.model, change.version),
        "datacontenttype": "application/json",
        "data": change,
    });
    for url in webhooks {
        let (client, url, event) = (client.clone(), url.clone(), event.clone());
        tokio::spawn(async move {
            let mut delay = std::time::Duration::from_millis(200);
            for attempt in 1..=5 {
                let sent = client
                    .post(&url)
                    .header(header::CONTENT_TYPE, "application/cloudevents+json")
                    .body(event.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(%url, status = %r.status(), attempt, "drift webhook refused the alert")
                    }
                    Err(e) => {
                        tracing::warn!(%url, error = %e, attempt, "drift webhook unreachable")
                    }
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            tracing::error!(%url, "drift webhook: alert not delivered after 5 attempts");
        });
    }
}

#[derive(Debug, Deserialize)]
struct ReferenceQuery {
    /// For a CSV without feature names of Sluice's form: the input tensor
    /// its columns are (`input` makes them `input[0]`, `input[1]`, ...).
    input: Option<String>,
    /// A name for where it came from (default: the content type).
    source: Option<String>,
}

async fn reference(
    State(state): State<CollectorState>,
    Path((model, version)): Path<(String, u64)>,
    Query(q): Query<ReferenceQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let columns = if content_type.starts_with("text/csv") {
        let Ok(text) = std::str::from_utf8(&body) else {
            return error(StatusCode::BAD_REQUEST, "the CSV is not UTF-8");
        };
        match csv_columns(text, q.input.as_deref()) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    } else if content_type.starts_with("application/json") || content_type.is_empty() {
        let data: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {e}"),
                );
            }
        };
        match features::rows_of(&data) {
            Ok(rows) => {
                let mut columns = Columns::new();
                store::append_rows(&mut columns, &rows);
                columns
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    } else {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "a reference is text/csv or application/json (OIP tensors), not {content_type}"
            ),
        );
    };
    let source = q.source.unwrap_or(content_type);
    let collector = state.collector.clone();
    let set = tokio::task::spawn_blocking(move || {
        collector.set_reference(&model, version, &source, columns)
    })
    .await;
    match set {
        Ok(Ok(reference)) => Json(json!({ "reference": reference })).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Columns of a CSV with a header row: numbers where every value of a
/// column parses, categories otherwise. With `input`, columns are named
/// `input[0]`, `input[1]`, ... in order (the header is skipped).
pub fn csv_columns(text: &str, input: Option<&str>) -> Result<Columns, String> {
    let mut records = crate::csv::records(text)?.into_iter();
    let header = records.next().ok_or("the CSV is empty")?;
    let names: Vec<String> = header
        .into_iter()
        .enumerate()
        .map(|(j, h)| match input {
            Some(i) => format!("{i}[{j}]"),
            None => h,
        })
        .collect();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    for (n, row) in records.enumerate() {
        if row.len() != names.len() {
            return Err(format!(
                "CSV row {} has {} fields, the header {}",
                n + 2,
                row.len(),
                names.len()
            ));
        }
        for (j, v) in row.into_iter().enumerate() {
            cells[j].push(v);
        }
    }
    if cells.first().is_none_or(Vec::is_empty) {
        return Err("the CSV has a header but no rows".into());
    }
    let mut columns = Columns::new();
    for (name, values) in names.into_iter().zip(cells) {
        let numbers: Option<Vec<f64>> = values.iter().map(|v| v.trim().parse().ok()).collect();
        let column = match numbers {
            Some(n) => Column::Numeric(n),
            None => Column::Categorical(values),
        };
        columns.insert(name, column);
    }
    Ok(columns)
}

async fn drift(State(state): State<CollectorState>, Path(model): Path<String>) -> Response {
    match state.collector.model_report(&model) {
        Some(report) => Json(report).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("the collector has nothing for model '{model}'"),
        ),
    }
}

async fn metrics(State(state): State<CollectorState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.collector.metrics_text(),
    )
        .into_response()
}

async fn alerts(State(state): State<CollectorState>) -> Response {
    Json(json!({ "alerts": state.collector.alerts() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_columns_are_numbers_or_categories() {
        let c = csv_columns("a,b,\"c, d\"\n1,x,2.5\n3,\"y\"\"z\",4\n", None).unwrap();
        assert_eq!(c["a"], Column::Numeric(vec![1.0, 3.0]));
        assert_eq!(c["b"], Column::Categorical(vec!["x".into(), "y\"z".into()]));
        assert_eq!(c["c, d"], Column::Numeric(vec![2.5, 4.0]));
        let named = csv_columns("p,q\n1,2\n", Some("input")).unwrap();
        assert!(named.contains_key("input[0]") && named.contains_key("input[1]"));
        assert!(csv_columns("", None).is_err());
        assert!(csv_columns("a,b\n", None).is_err());
        assert!(csv_columns("a,b\n1\n", None).unwrap_err().contains("row 2"));
    }
}
