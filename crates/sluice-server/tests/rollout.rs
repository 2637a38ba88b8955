//! Traffic policies, shadows and progressive rollouts through the real
//! server: the admin API and its keys, canary splits, sticky callers,
//! explicit routes, refused policies, policy files written by another
//! replica, shadow comparisons and their isolation from the primary, manual
//! rollback and the audit log, and the rollout controller's decisions.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TestServer, copy_version, fixtures};
use reqwest::Method;
use serde_json::{Value, json};
use sluice_server::{HttpOptions, KeySet};

const ADMIN_NAME: &str = "alice";
const ADMIN_KEY: &str = "admin-secret-0123456789abcdef";
const API_KEY: &str = "api-secret-fedcba9876543210";
const WRONG_KEY: &str = "not-a-key-000000000000000000";

/// The tests of this file run one at a time: several of them drive load,
/// and the rollout controller judges the latency of what it compares.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn admin_options() -> HttpOptions {
    HttpOptions {
        admin_keys: KeySet::parse(&format!("{ADMIN_NAME}:{ADMIN_KEY}")).unwrap(),
        // No compute budget for shadows: the comparison tests count every
        // copy. The isolation test sets one.
        shadow_cpu: 0.0,
        ..Default::default()
    }
}

/// Copies fixture `<fixture>/1/model.onnx` in as `scale/<version>`.
fn add_version(root: &Path, fixture: &str, version: u64) {
    let dir = root.join("scale").join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixtures().join("models").join(fixture).join("1/model.onnx"),
        dir.join("model.onnx"),
    )
    .unwrap();
}

/// A server over a model `scale` holding `versions` (fixture, version): the
/// fixture `scale` keeps its own version numbers (y = x * version), any
/// other fixture's version 1 is copied in under the number given.
async fn start(
    versions: &[(&str, u64)],
    model_toml: Option<&str>,
    options: HttpOptions,
) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    for &(fixture, version) in versions {
        if fixture == "scale" {
            copy_version(root.path(), "scale", version, "scale");
        } else {
            add_version(root.path(), fixture, version);
        }
    }
    if let Some(text) = model_toml {
        std::fs::write(root.path().join("scale/model.toml"), text).unwrap();
    }
    let server = TestServer::start(root, options).await;
    let ready: Vec<u64> = server
        .manager
        .snapshot()
        .model("scale")
        .map(|m| m.versions.keys().copied().collect())
        .unwrap_or_default();
    let mut wanted: Vec<u64> = versions.iter().map(|(_, v)| *v).collect();
    wanted.sort_unstable();
    assert_eq!(ready, wanted, "every version of the fixture must load");
    server
}

/// An admin call with the admin key: (status, JSON body, or the text as a
/// JSON string when it is not JSON).
async fn admin(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = server
        .client
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(ADMIN_KEY);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn put_policy(server: &TestServer, policy: Value) -> Value {
    let (status, body) = admin(
        server,
        Method::PUT,
        "/admin/models/scale/policy",
        Some(&policy),
    )
    .await;
    assert_eq!(status, 200, "PUT policy {policy}: {body}");
    body
}

async fn get_policy(server: &TestServer) -> Value {
    let (status, body) = admin(server, Method::GET, "/admin/models/scale/policy", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn audit_records(server: &TestServer) -> Vec<Value> {
    let (status, body) = admin(server, Method::GET, "/admin/audit?model=scale", None).await;
    assert_eq!(status, 200, "{body}");
    body["records"].as_array().unwrap().clone()
}

fn actions(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect()
}

/// One inference answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `sluice-model-version`.
    version: Option<u64>,
    /// `x-sluice-variant` on the response.
    variant: Option<String>,
    request_id: String,
    body: Value,
}

impl Answer {
    /// `parameters.variant` of the body.
    fn body_variant(&self) -> Option<&str> {
        self.body["parameters"]["variant"].as_str()
    }

    /// Checks a successful answer: status 200, the version in the header and
    /// in the body agree, and the data is `x * factor(version)`. Returns the
    /// version.
    fn check(&self, x: [f32; 4], factor: impl Fn(u64) -> f32) -> u64 {
        assert_eq!(self.status, 200, "{self:?}");
        let version = self.version.expect("sluice-model-version header");
        assert_eq!(self.body["model_version"], version.to_string(), "{self:?}");
        assert_eq!(self.data(), expected(x, factor(version)), "{self:?}");
        version
    }

    fn data(&self) -> Vec<f64> {
        self.body["outputs"][0]["data"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect())
            .unwrap_or_default()
    }
}

fn expected(x: [f32; 4], k: f32) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v * k)).collect()
}

/// y = x * version: the `scale` fixture's versions.
fn by_version(v: u64) -> f32 {
    v as f32
}

async fn infer_at(
    client: &reqwest::Client,
    url: &str,
    version: Option<u64>,
    headers: &[(&str, &str)],
    x: [f32; 4],
) -> Answer {
    let path = match version {
        Some(v) => format!("{url}/v2/models/scale/versions/{v}/infer"),
        None => format!("{url}/v2/models/scale/infer"),
    };
    let mut request = client.post(path).json(&common::scale_request(x));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let status = response.status().as_u16();
    let version = header("sluice-model-version").map(|v| v.parse().unwrap());
    let variant = header("x-sluice-variant");
    let request_id = header("x-request-id").unwrap_or_default();
    let text = response.text().await.unwrap();
    Answer {
        status,
        version,
        variant,
        request_id,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn infer(server: &TestServer, headers: &[(&str, &str)], x: [f32; 4]) -> Answer {
    infer_at(&server.client, &server.url, None, headers, x).await
}

/// Distinct inputs, so a mixed-up answer cannot pass for the right one.
fn input(i: u64) -> [f32; 4] {
    let b = (i % 1000) as f32;
    [b + 1.0, -b - 2.0, 0.5 * b + 3.0, 4.0]
}

async fn metrics_text(server: &TestServer) -> String {
    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of the series `name{labels...}` (the labels given must all be
/// on the series; others may be too) in Prometheus text.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series_name, series_labels, rest) = match line.find('{') {
                Some(open) => {
                    let close = line.find('}')?;
                    (&line[..open], &line[open + 1..close], &line[close + 1..])
                }
                None => {
                    let (n, r) = line.split_once(' ')?;
                    (n, "", r)
                }
            };
            if series_name != name {
                return None;
            }
            let have = format!(",{series_labels}");
            let all = labels
                .iter()
                .all(|(k, v)| have.contains(&format!(",{k}=\"{v}\"")));
            if !all {
                return None;
            }
            rest.split_whitespace().next()?.parse().ok()
        })
}

fn shadow_count(text: &str, version: &str, outcome: &str) -> f64 {
    metric(
        text,
        "sluice_shadow_requests_total",
        &[
            ("model", "scale"),
            ("version", version),
            ("outcome", outcome),
        ],
    )
    .unwrap_or(0.0)
}

/// Polls `probe` (at most 20 s) until it gives `Ok`; `Err` carries what it
/// saw, for the failure message.
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out after 20 s waiting for {what}; last seen: {seen}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shadow's diffs once it has compared `n` copies (polled).
async fn compared_diffs(server: &TestServer, version: u64, n: u64) -> Value {
    let path = format!("/admin/models/scale/shadow/{version}/diffs");
    eventually("every copy compared", async || {
        let (status, body) = admin(server, Method::GET, &path, None).await;
        if status == 200 && body["compared"] == n {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await
}

/// A gate's entry in a decision's evidence.
fn gate<'a>(evidence: &'a Value, name: &str) -> &'a Value {
    evidence["gates"]
        .as_array()
        .and_then(|gates| gates.iter().find(|g| g["gate"] == name))
        .unwrap_or_else(|| panic!("no gate {name} in {evidence}"))
}

/// Binomial bound: |observed - n p| <= 5 sigma.
fn assert_binomial(observed: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (observed as f64 - mean).abs() <= 5.0 * sigma,
        "{what}: {observed} of {n}, expected {mean} +- {}",
        5.0 * sigma
    );
}

/// What background clients saw: answers per (status, version), and the
/// answers whose data did not match the version that named itself.
#[derive(Debug, Default)]
struct Seen {
    by: HashMap<(u16, Option<u64>), u64>,
    wrong: Vec<String>,
}

impl Seen {
    fn count(&self, status: u16, version: Option<u64>) -> u64 {
        self.by.get(&(status, version)).copied().unwrap_or(0)
    }

    fn not_ok(&self) -> u64 {
        self.by
            .iter()
            .filter(|((s, _), _)| *s != 200)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Clients calling `scale` without a version until stopped, each pausing
/// `pause` between calls.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
}

fn traffic(
    server: &TestServer,
    clients: usize,
    pause: Duration,
    factor: fn(u64) -> f32,
) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let tasks = (0..clients as u64)
        .map(|c| {
            let (stop, sent) = (stop.clone(), sent.clone());
            let (client, url) = (server.client.clone(), server.url.clone());
            tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut i = c * 100_000;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let x = input(i);
                    let answer = infer_at(&client, &url, None, &[], x).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    *seen.by.entry((answer.status, answer.version)).or_default() += 1;
                    if answer.status == 200 {
                        let v = answer.version.unwrap_or(0);
                        if answer.data() != expected(x, factor(v)) {
                            seen.wrong.push(format!("{answer:?}"));
                        }
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                seen
            })
        })
        .collect();
    Traffic { stop, sent, tasks }
}

impl Traffic {
    async fn flowing(&self) {
        let start = self.sent.load(Ordering::Relaxed);
        eventually("background traffic", async || {
            let now = self.sent.load(Ordering::Relaxed);
            if now >= start + 20 {
                Ok(())
            } else {
                Err(format!("{} answered", now - start))
            }
        })
        .await;
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Seen::default();
        for task in self.tasks {
            let seen = task.await.unwrap();
            for (k, n) in seen.by {
                *all.by.entry(k).or_default() += n;
            }
            all.wrong.extend(seen.wrong);
        }
        all
    }
}

/// Polls the rollout status until it is no longer running.
async fn rollout_outcome(server: &TestServer) -> Value {
    eventually("the rollout to finish", async || {
        let (status, body) = admin(server, Method::GET, "/admin/models/scale/rollout", None).await;
        if status != 200 {
            return Err(format!("{status} {body}"));
        }
        if body["state"] == "running" {
            Err(body.to_string())
        } else {
            Ok(body)
        }
    })
    .await
}

fn plan(canary: u64, interval_s: f64, max_p99_ratio: f64) -> Value {
    json!({
        "canary": canary,
        "steps": [50.0, 100.0],
        "interval_s": interval_s,
        "gates": {
            "min_requests": 5,
            "max_error_rate_increase": 0.01,
            "max_p99_ratio": max_p99_ratio,
            "min_shadow_agreement": null,
        },
    })
}

async fn start_rollout(server: &TestServer, plan: &Value) -> Value {
    let (status, body) = admin(
        server,
        Method::POST,
        "/admin/models/scale/rollout",
        Some(plan),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["policy"]["canary"]["version"], plan["canary"],
        "{body}"
    );
    assert_eq!(body["policy"]["canary"]["weight"], 0.5, "{body}");
    assert_eq!(body["rollout"]["state"], "running", "{body}");
    body
}

const FAILING_TOML: &str = "warmup_shapes = { x = [3, 4] }\n";

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_inference_keys_are_enforced_and_never_echoed() {
    let _serial = SERIAL.lock().await;
    let mut bodies: Vec<String> = Vec::new();

    // No admin keys configured: the admin API is off, whatever is sent.
    let off = start(&[("scale", 1)], None, HttpOptions::default()).await;
    for key in [None, Some(ADMIN_KEY)] {
        let mut request = off
            .client
            .get(format!("{}/admin/models/scale/policy", off.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
        bodies.push(body.to_string());
    }
    off.stop().await;

    let options = HttpOptions {
        admin_keys: KeySet::parse(&format!("{ADMIN_NAME}:{ADMIN_KEY}")).unwrap(),
        api_keys: KeySet::parse(&format!("app:{API_KEY}")).unwrap(),
        ..Default::default()
    };
    let server = start(&[("scale", 1), ("scale", 2)], None, options).await;
    let url = server.url.clone();
    let call = |method: Method, path: &str, auth: Option<&str>| {
        let mut request = server.client.request(method, format!("{url}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request
    };

    // Admin API: missing, wrong, a non-admin key, another scheme → 401.
    let bearer = |k: &str| format!("Bearer {k}");
    let refused = [
        None,
        Some(bearer(WRONG_KEY)),
        Some(bearer(API_KEY)),
        Some(format!("Basic {ADMIN_KEY}")),
        Some("Bearer".to_string()),
    ];
    for auth in &refused {
        for (method, path) in [
            (Method::GET, "/admin/models/scale/policy"),
            (Method::GET, "/admin/audit"),
            (Method::POST, "/admin/models/scale/rollback"),
        ] {
            let response = call(method.clone(), path, auth.as_deref())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer",
                "{method} {path} with {auth:?}"
            );
            let body: Value = response.json().await.unwrap();
            assert!(body["error"].is_string(), "{body}");
            bodies.push(body.to_string());
        }
    }
    // Nothing was changed by the refused calls.
    assert!(!server.root.path().join("audit.log").exists());

    // The right key.
    let response = call(
        Method::GET,
        "/admin/models/scale/policy",
        Some(&bearer(ADMIN_KEY)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "scale");
    assert_eq!(body["policy"], Value::Null);
    assert_eq!(body["stable"], 2);
    assert_eq!(body["ready_versions"], json!([1, 2]));
    bodies.push(body.to_string());
    let changed = put_policy(&server, json!({"stable": 1})).await;
    bodies.push(changed.to_string());
    let records = audit_records(&server).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["actor"], ADMIN_NAME);
    bodies.push(json!(records).to_string());

    // Inference: closed without a key, open with an API or admin key.
    for (auth, status) in [
        (None, 401),
        (Some(bearer(WRONG_KEY)), 401),
        (Some(bearer(API_KEY)), 200),
        (Some(bearer(ADMIN_KEY)), 200),
    ] {
        let x = [1.0, 2.0, 3.0, 4.0];
        let response = call(Method::POST, "/v2/models/scale/infer", auth.as_deref())
            .json(&common::scale_request(x))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "infer with {auth:?}");
        if status == 401 {
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        let body: Value = response.json().await.unwrap();
        if status == 200 {
            assert_eq!(body["model_version"], "1", "{body}");
            assert_eq!(body["outputs"][0]["data"], json!([1.0, 2.0, 3.0, 4.0]));
        } else {
            assert!(body["error"].is_string(), "{body}");
        }
        bodies.push(body.to_string());

        let response = call(Method::POST, "/v2/repository/index", auth.as_deref())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "index with {auth:?}");
        bodies.push(response.text().await.unwrap());
    }
    // Probes and scrapers need no key.
    for path in ["/v2/health/live", "/v2/health/ready", "/metrics"] {
        let response = call(Method::GET, path, None).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        bodies.push(response.text().await.unwrap());
    }

    for body in &bodies {
        for secret in [ADMIN_KEY, API_KEY, WRONG_KEY] {
            assert!(
                !body.contains(secret),
                "a key leaked into a response: {body}"
            );
        }
    }
    let log = std::fs::read_to_string(server.root.path().join("audit.log")).unwrap();
    assert!(
        !log.contains(ADMIN_KEY) && log.contains(ADMIN_NAME),
        "{log}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_weight_splits_random_traffic_and_every_answer_names_its_side() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale", 2)], None, admin_options()).await;
    let set = put_policy(
        &server,
        json!({"stable": 1, "canary": {"version": 2, "weight": 0.3}}),
    )
    .await;
    assert_eq!(set["policy"]["canary"]["weight"], 0.3, "{set}");
    let text = metrics_text(&server).await;
    let weight = |v: &str, role: &str| {
        metric(
            &text,
            "sluice_traffic_weight",
            &[("model", "scale"), ("version", v), ("role", role)],
        )
    };
    assert_eq!(weight("2", "canary"), Some(0.3));
    assert!((weight("1", "stable").unwrap() - 0.7).abs() < 1e-9);

    const TASKS: u64 = 8;
    const PER_TASK: u64 = 250;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (client, url) = (server.client.clone(), server.url.clone());
            tokio::spawn(async move {
                let mut canary = 0usize;
                for i in 0..PER_TASK {
                    let x = input(t * PER_TASK + i);
                    let answer = infer_at(&client, &url, None, &[], x).await;
                    let version = answer.check(x, by_version);
                    let side = match version {
                        1 => "stable",
                        2 => "canary",
                        other => panic!("version {other} answered: {answer:?}"),
                    };
                    assert_eq!(answer.variant.as_deref(), Some(side), "{answer:?}");
                    assert_eq!(answer.body_variant(), Some(side), "{answer:?}");
                    canary += usize::from(version == 2);
                }
                canary
            })
        })
        .collect();
    let mut canary = 0;
    for task in tasks {
        canary += task.await.unwrap();
    }
    assert_binomial(canary, (TASKS * PER_TASK) as usize, 0.3, "canary answers");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_callers_keep_their_side_and_never_leave_the_canary_as_it_grows() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale", 2)], None, admin_options()).await;
    const KEYS: usize = 300;
    const TASKS: usize = 6;
    let mut on_canary = vec![false; KEYS];
    // Header names are case-insensitive: the last policy spells it otherwise.
    for (weight, header) in [(0.2, "x-user-id"), (0.5, "x-user-id"), (0.9, "X-User-Id")] {
        let set = put_policy(
            &server,
            json!({
                "stable": 1,
                "canary": {"version": 2, "weight": weight},
                "sticky_header": header,
            }),
        )
        .await;
        assert_eq!(set["policy"]["sticky_header"], "x-user-id", "{set}");
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (client, url) = (server.client.clone(), server.url.clone());
                tokio::spawn(async move {
                    let mut sides = Vec::new();
                    for k in (t..KEYS).step_by(TASKS) {
                        let key = format!("user-{k}");
                        let mut seen = Vec::new();
                        for i in 0..3 {
                            let x = input((k * 3 + i) as u64);
                            let answer =
                                infer_at(&client, &url, None, &[("x-user-id", &key)], x).await;
                            let version = answer.check(x, by_version);
                            let side = if version == 2 { "canary" } else { "stable" };
                            assert_eq!(answer.variant.as_deref(), Some(side), "{answer:?}");
                            seen.push(version == 2);
                        }
                        assert!(
                            seen.iter().all(|&s| s == seen[0]),
                            "{key} changed sides at weight {weight}: {seen:?}"
                        );
                        sides.push((k, seen[0]));
                    }
                    sides
                })
            })
            .collect();
        let mut canary = 0;
        for task in tasks {
            for (k, is_canary) in task.await.unwrap() {
                assert!(
                    !on_canary[k] || is_canary,
                    "user-{k} moved from canary back to stable when the weight rose to {weight}"
                );
                // The documented rule, the same on every replica.
                let point = sluice_rollout::routing::sticky_point(&format!("user-{k}"));
                assert_eq!(is_canary, point < weight, "user-{k} at weight {weight}");
                on_canary[k] = is_canary;
                canary += usize::from(is_canary);
            }
        }
        assert_binomial(canary, KEYS, weight, &format!("keys on canary at {weight}"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_variant_header_and_version_url_win_over_the_split() {
    let _serial = SERIAL.lock().await;
    let server = start(
        &[("scale", 1), ("scale", 2), ("scale", 3)],
        None,
        admin_options(),
    )
    .await;
    let x = [1.0, -2.0, 3.0, 0.5];

    // No policy: the highest version, named stable, no parameters in the body.
    let answer = infer(&server, &[], x).await;
    assert_eq!(answer.check(x, by_version), 3);
    assert_eq!(answer.variant.as_deref(), Some("stable"));
    assert!(answer.body.get("parameters").is_none(), "{answer:?}");

    put_policy(
        &server,
        json!({"stable": 1, "canary": {"version": 2, "weight": 0.0}}),
    )
    .await;
    for i in 0..30 {
        let x = input(i);
        let answer = infer(&server, &[], x).await;
        assert_eq!(
            answer.check(x, by_version),
            1,
            "weight 0 sent a request to the canary"
        );
        assert_eq!(answer.variant.as_deref(), Some("stable"));
        assert_eq!(answer.body_variant(), Some("stable"));
    }
    for (asked, version) in [("canary", 2), ("stable", 1), ("Canary", 2)] {
        let answer = infer(&server, &[("x-sluice-variant", asked)], x).await;
        assert_eq!(answer.check(x, by_version), version, "{asked}");
        let side = asked.to_ascii_lowercase();
        assert_eq!(answer.variant.as_deref(), Some(side.as_str()));
        assert_eq!(answer.body_variant(), Some(side.as_str()));
    }
    let bogus = infer(&server, &[("x-sluice-variant", "bogus")], x).await;
    assert_eq!(bogus.status, 400, "{bogus:?}");
    assert!(
        bogus.body["error"]
            .as_str()
            .unwrap()
            .contains("x-sluice-variant"),
        "{bogus:?}"
    );

    // The URL's version wins over everything.
    for (version, side) in [(3, None), (2, Some("canary")), (1, Some("stable"))] {
        for headers in [&[][..], &[("x-sluice-variant", "canary")][..]] {
            let answer = infer_at(&server.client, &server.url, Some(version), headers, x).await;
            assert_eq!(answer.check(x, by_version), version, "{headers:?}");
            assert_eq!(
                answer.variant.as_deref(),
                side,
                "version {version}: {answer:?}"
            );
            assert_eq!(answer.body_variant(), side, "version {version}: {answer:?}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_refused_whole_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    let server = start(
        &[("scale", 1), ("scale", 2), ("scale_other_sig", 4)],
        Some("allow_signature_change = true\n"),
        admin_options(),
    )
    .await;
    let good = json!({"stable": 1, "canary": {"version": 2, "weight": 0.25}});
    put_policy(&server, good.clone()).await;
    let file = server.root.path().join("scale/policy.toml");
    let on_disk = std::fs::read(&file).unwrap();
    let before = get_policy(&server).await;
    assert_eq!(before["policy"], good);
    assert_eq!(before["ready_versions"], json!([1, 2, 4]));

    let cases: Vec<(Value, &[&str])> = vec![
        (
            json!({"stable": 1, "canary": {"version": 9, "weight": 0.1}}),
            &["9", "not loaded"],
        ),
        (json!({"stable": 7}), &["7", "not loaded"]),
        (
            json!({"stable": 1, "canary": {"version": 2, "weight": 1.5}}),
            &["weight", "1.5"],
        ),
        (
            json!({"stable": 1, "canary": {"version": 2, "weight": -0.1}}),
            &["weight"],
        ),
        (
            json!({"stable": 1, "shadows": [{"version": 2, "percent": 101.0}]}),
            &["percent", "101"],
        ),
        (
            json!({"stable": 1, "canary": {"version": 1, "weight": 0.1}}),
            &["canary", "stable"],
        ),
        (
            json!({"stable": 1, "canray": {"version": 2, "weight": 0.1}}),
            &["unknown field", "canray"],
        ),
        (
            json!({"stable": 1, "canary": {"version": 2, "weight": 0.1, "extra": 1}}),
            &["unknown field", "extra"],
        ),
        (
            json!({"stable": 1, "canary": {"version": 4, "weight": 0.1}}),
            &["4", "compatible"],
        ),
        // A valid canary change with an invalid shadow: nothing applies.
        (
            json!({"stable": 1, "canary": {"version": 2, "weight": 0.9},
                   "shadows": [{"version": 4, "percent": 10.0}]}),
            &["4", "compatible"],
        ),
        (
            json!({"stable": 1, "shadows": [{"version": 2, "percent": 5.0, "agreement": "close"}]}),
            &["close"],
        ),
    ];
    for (policy, words) in cases {
        let (status, body) = admin(
            &server,
            Method::PUT,
            "/admin/models/scale/policy",
            Some(&policy),
        )
        .await;
        assert_eq!(status, 400, "{policy} was not refused: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        for word in words {
            assert!(
                message.contains(word),
                "refusal of {policy} should mention {word:?}: {message}"
            );
        }
        let after = get_policy(&server).await;
        assert_eq!(after["policy"], good, "after {policy}");
        assert_eq!(after["stable"], 1);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            on_disk,
            "policy.toml changed after refusing {policy}"
        );
    }
    // Still routing by the good policy.
    let x = [1.0, 2.0, 3.0, 4.0];
    let answer = infer(&server, &[("x-sluice-variant", "canary")], x).await;
    assert_eq!(answer.check(x, by_version), 2);
    let answer = infer(&server, &[("x-sluice-variant", "stable")], x).await;
    assert_eq!(answer.check(x, by_version), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_written_by_another_replica_is_applied_or_reported() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale", 2)], None, admin_options()).await;
    put_policy(&server, json!({"stable": 1})).await;
    for i in 0..10 {
        let x = input(i);
        assert_eq!(infer(&server, &[], x).await.check(x, by_version), 1);
    }

    // Another gateway sharing the registry writes the file (atomically).
    let dir = server.root.path().join("scale");
    let write = |text: &str| {
        let staging = dir.join(".policy.toml.staging");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(&staging, dir.join("policy.toml")).unwrap();
    };
    write("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n");
    server.manager.reconcile().await.unwrap();
    let now = get_policy(&server).await;
    assert_eq!(
        now["policy"],
        json!({"stable": 1, "canary": {"version": 2, "weight": 1.0}}),
        "{now}"
    );
    assert_eq!(now["policy_error"], Value::Null, "{now}");
    for i in 0..20 {
        let x = input(i);
        let answer = infer(&server, &[], x).await;
        assert_eq!(answer.check(x, by_version), 2);
        assert_eq!(answer.variant.as_deref(), Some("canary"));
    }

    // An invalid file: the policy in effect stays, and the error is shown.
    write("stable = 1\n[canary]\nversion = 2\nweight = 7\n");
    server.manager.reconcile().await.unwrap();
    let now = get_policy(&server).await;
    assert_eq!(now["policy"]["canary"]["weight"], 1.0, "{now}");
    let error = now["policy_error"].as_str().unwrap_or_default();
    assert!(error.contains("weight"), "{now}");
    for i in 0..10 {
        let x = input(i);
        assert_eq!(infer(&server, &[], x).await.check(x, by_version), 2);
    }
    // Another rescan does not lose the policy in effect either.
    server.manager.reconcile().await.unwrap();
    assert_eq!(get_policy(&server).await["policy"]["canary"]["weight"], 1.0);

    // A good file again clears the error.
    write("stable = 1\n");
    server.manager.reconcile().await.unwrap();
    let now = get_policy(&server).await;
    assert_eq!(now["policy"], json!({"stable": 1}), "{now}");
    assert_eq!(now["policy_error"], Value::Null, "{now}");
    let x = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(infer(&server, &[], x).await.check(x, by_version), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_identical_to_the_primary_agrees_on_every_request() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale_slow", 4)], None, admin_options()).await;
    let (status, _) = admin(
        &server,
        Method::GET,
        "/admin/models/scale/shadow/4/diffs",
        None,
    )
    .await;
    assert_eq!(status, 404, "diffs before any copy was sent");
    put_policy(
        &server,
        json!({"stable": 1, "shadows": [{"version": 4, "percent": 100.0, "agreement": "values"}]}),
    )
    .await;
    const N: u64 = 30;
    let mut ids = Vec::new();
    for i in 0..N {
        let x = input(i);
        let answer = infer(&server, &[], x).await;
        assert_eq!(
            answer.check(x, by_version),
            1,
            "a shadow answered the caller"
        );
        ids.push(answer.request_id.clone());
    }
    let diffs = compared_diffs(&server, 4, N).await;
    assert_eq!(diffs["agreed"], N, "{diffs}");
    assert_eq!(diffs["agreement"], 1.0, "{diffs}");
    let samples = diffs["samples"].as_array().unwrap();
    assert!(!samples.is_empty() && samples.len() <= 20, "{diffs}");
    for s in samples {
        assert_eq!(s["agree"], true, "{s}");
        assert_eq!(s["primary_version"], 1, "{s}");
        assert_eq!(s["shadow_version"], 4, "{s}");
        assert!(
            ids.contains(&s["request_id"].as_str().unwrap().to_string()),
            "{s}"
        );
        let out = &s["outputs"][0];
        assert_eq!(out["name"], "y", "{s}");
        assert_eq!(out["max_abs"], 0.0, "{s}");
        assert_eq!(out["max_rel"], 0.0, "{s}");
        assert_eq!(
            s["primary_outputs"][0]["data"], s["shadow_outputs"][0]["data"],
            "{s}"
        );
    }
    let text = metrics_text(&server).await;
    assert_eq!(shadow_count(&text, "4", "compared"), N as f64);
    assert_eq!(shadow_count(&text, "4", "failed"), 0.0);
    assert_eq!(shadow_count(&text, "4", "dropped"), 0.0);
    let comparisons = |agreement: &str| {
        metric(
            &text,
            "sluice_shadow_comparisons_total",
            &[
                ("model", "scale"),
                ("version", "4"),
                ("agreement", agreement),
            ],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(comparisons("agree"), N as f64);
    assert_eq!(comparisons("disagree"), 0.0);
    assert_eq!(
        metric(
            &text,
            "sluice_traffic_weight",
            &[("model", "scale"), ("version", "4"), ("role", "shadow")],
        ),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_shadow_disagrees_with_the_differences_measured() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale", 2)], None, admin_options()).await;
    put_policy(
        &server,
        json!({"stable": 1, "shadows": [{"version": 2, "percent": 100.0, "agreement": "values"}]}),
    )
    .await;
    const N: u64 = 10;
    let x = [1.0f32, 2.0, 3.0, 4.0];
    for _ in 0..N {
        let answer = infer(&server, &[], x).await;
        assert_eq!(answer.check(x, by_version), 1);
    }
    let diffs = compared_diffs(&server, 2, N).await;
    assert_eq!(diffs["agreed"], 0, "{diffs}");
    assert_eq!(diffs["agreement"], 0.0, "{diffs}");
    // Computed here from the known input: primary y = x, shadow y = 2x.
    let primary: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let shadow: Vec<f64> = primary.iter().map(|v| 2.0 * v).collect();
    let max_abs = primary
        .iter()
        .zip(&shadow)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let max_rel = primary
        .iter()
        .zip(&shadow)
        .map(|(a, b)| (a - b).abs() / a.abs().max(b.abs()))
        .fold(0.0, f64::max);
    assert_eq!((max_abs, max_rel), (4.0, 0.5));
    let top = &diffs["samples"][0];
    assert_eq!(top["agree"], false, "{top}");
    assert_eq!(top["primary_version"], 1, "{top}");
    assert_eq!(top["shadow_version"], 2, "{top}");
    assert_eq!(top["outputs"][0]["max_abs"], max_abs, "{top}");
    assert_eq!(top["outputs"][0]["max_rel"], max_rel, "{top}");
    assert_eq!(top["primary_outputs"][0]["data"], json!(primary), "{top}");
    assert_eq!(top["shadow_outputs"][0]["data"], json!(shadow), "{top}");
    assert_eq!(top["inputs"][0]["data"], json!(primary), "{top}");

    let text = metrics_text(&server).await;
    let comparisons = |agreement: &str| {
        metric(
            &text,
            "sluice_shadow_comparisons_total",
            &[
                ("model", "scale"),
                ("version", "2"),
                ("agreement", agreement),
            ],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(comparisons("disagree"), N as f64);
    assert_eq!(comparisons("agree"), 0.0);
    assert_eq!(shadow_count(&text, "2", "compared"), N as f64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_slow_shadows_never_fail_a_primary_request() {
    let _serial = SERIAL.lock().await;
    // Both bounds at work: two copies in flight, and a hundredth of a core
    // (about three of the slow shadow's copies a second).
    let options = HttpOptions {
        shadow_queue: 2,
        shadow_cpu: 0.01,
        ..admin_options()
    };
    let server = start(
        &[("scale", 1), ("scale_failing", 4), ("scale_slow", 5)],
        Some(FAILING_TOML),
        options,
    )
    .await;
    put_policy(
        &server,
        json!({"stable": 1, "shadows": [
            {"version": 4, "percent": 100.0},
            {"version": 5, "percent": 100.0},
        ]}),
    )
    .await;
    const TASKS: u64 = 16;
    const PER_TASK: u64 = 300 / TASKS + 1;
    let total = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (client, url, total) = (server.client.clone(), server.url.clone(), total.clone());
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    if total.fetch_add(1, Ordering::Relaxed) >= 300 {
                        break;
                    }
                    let x = input(t * PER_TASK + i);
                    let answer = infer_at(&client, &url, None, &[], x).await;
                    assert_eq!(answer.check(x, by_version), 1, "{answer:?}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let text = eventually("every shadow copy accounted for", async || {
        let text = metrics_text(&server).await;
        let sum = |v: &str| {
            ["compared", "failed", "dropped"]
                .iter()
                .map(|o| shadow_count(&text, v, o))
                .sum::<f64>()
        };
        if sum("4") == 300.0 && sum("5") == 300.0 {
            Ok(text)
        } else {
            Err(format!("shadow 4: {}, shadow 5: {}", sum("4"), sum("5")))
        }
    })
    .await;
    assert!(shadow_count(&text, "4", "failed") > 0.0);
    assert_eq!(shadow_count(&text, "4", "compared"), 0.0);
    assert!(
        shadow_count(&text, "5", "dropped") > 0.0,
        "16 callers and a queue of 2 must drop copies to the slow shadow"
    );
    assert!(shadow_count(&text, "5", "compared") > 0.0);
    assert_eq!(shadow_count(&text, "5", "failed"), 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_promote_apply_to_the_next_request_and_are_audited() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale", 2)], None, admin_options()).await;
    let x = [1.0, 2.0, 3.0, 4.0];
    let set = put_policy(
        &server,
        json!({"stable": 1, "canary": {"version": 2, "weight": 1.0}}),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(infer(&server, &[], x).await.check(x, by_version), 2);
    }
    let (status, rolled) = admin(&server, Method::POST, "/admin/models/scale/rollback", None).await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(
        rolled["policy"]["canary"],
        json!({"version": 2, "weight": 0.0})
    );
    let next = infer(&server, &[], x).await;
    assert_eq!(
        next.check(x, by_version),
        1,
        "the request right after the rollback"
    );
    assert_eq!(next.variant.as_deref(), Some("stable"));
    for _ in 0..10 {
        assert_eq!(infer(&server, &[], x).await.check(x, by_version), 1);
    }

    // Promote: the canary becomes stable for the very next request.
    put_policy(
        &server,
        json!({"stable": 1, "canary": {"version": 2, "weight": 0.0}}),
    )
    .await;
    let (status, promoted) =
        admin(&server, Method::POST, "/admin/models/scale/promote", None).await;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["policy"], json!({"stable": 2}));
    let next = infer(&server, &[], x).await;
    assert_eq!(
        next.check(x, by_version),
        2,
        "the request right after the promotion"
    );
    assert_eq!(next.variant.as_deref(), Some("stable"));
    let now = get_policy(&server).await;
    assert_eq!(now["stable"], 2);
    assert_eq!(now["policy"]["canary"], Value::Null);
    // Nothing to promote or roll back any more.
    for action in ["promote", "rollback"] {
        let (status, body) = admin(
            &server,
            Method::POST,
            &format!("/admin/models/scale/{action}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{action} without a canary: {body}");
        assert!(body["error"].as_str().unwrap().contains("canary"), "{body}");
    }

    let records = audit_records(&server).await;
    assert_eq!(
        actions(&records),
        ["policy.set", "rollback", "policy.set", "promote"]
    );
    for r in &records {
        assert_eq!(r["actor"], ADMIN_NAME, "{r}");
        assert_eq!(r["model"], "scale", "{r}");
    }
    assert_eq!(records[0]["before"], Value::Null);
    assert_eq!(
        records[0]["after"],
        json!({"stable": 1, "canary": {"version": 2, "weight": 1.0}})
    );
    assert_eq!(records[1]["before"]["canary"]["weight"], 1.0);
    assert_eq!(records[1]["after"]["canary"]["weight"], 0.0);
    assert_eq!(records[3]["after"], json!({"stable": 2}));
    assert_eq!(records[0]["seq"], set["audit"]["seq"]);
    assert_eq!(records[0]["hash"], set["audit"]["hash"]);
    assert_eq!(records[1]["hash"], rolled["audit"]["hash"]);
    for pair in records.windows(2) {
        assert_eq!(pair[1]["prev"], pair[0]["hash"], "the chain is broken");
    }
    let (status, last) = admin(
        &server,
        Method::GET,
        "/admin/audit?model=scale&limit=1",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(last["records"], json!([records[3]]), "{last}");

    let path = sluice_rollout::audit::log_path(server.root.path());
    let report = sluice_rollout::audit::verify(&path).unwrap();
    assert_eq!(report.records, 4);
    // One changed letter or digit in the middle of the log.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (bytes.len() / 2..bytes.len())
        .find(|&i| bytes[i].is_ascii_lowercase() || bytes[i].is_ascii_digit())
        .unwrap();
    bytes[at] = match bytes[at] {
        b'9' => b'0',
        b'z' => b'a',
        b => b + 1,
    };
    std::fs::write(&path, &bytes).unwrap();
    assert!(
        sluice_rollout::audit::verify(&path).is_err(),
        "a changed byte at {at} went unnoticed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_rolls_back_a_failing_canary() {
    let _serial = SERIAL.lock().await;
    let server = start(
        &[("scale", 1), ("scale_failing", 4)],
        Some(FAILING_TOML),
        admin_options(),
    )
    .await;
    put_policy(&server, json!({"stable": 1})).await;
    // Version 4 answers y = x (when it answers at all).
    let factor = |v: u64| if v == 4 { 1.0 } else { v as f32 };
    let load = traffic(&server, 2, Duration::from_millis(2), factor);
    load.flowing().await;
    let plan = plan(4, 0.5, 1.5);
    start_rollout(&server, &plan).await;
    let status = rollout_outcome(&server).await;
    let seen = load.finish().await;

    assert_eq!(status["state"], "rolled_back", "{status}");
    let decisions = status["decisions"].as_array().unwrap();
    assert!(
        !decisions.is_empty() && decisions.len() <= 2,
        "rolled back after {} decisions: {status}",
        decisions.len()
    );
    let last = decisions.last().unwrap();
    assert_eq!(last["decision"]["decision"], "rollback", "{last}");
    let error_gate = gate(&last["evidence"], "error_rate_increase");
    assert_eq!(error_gate["passed"], false, "{last}");
    assert!(status["reason"].is_string(), "{status}");

    let policy = get_policy(&server).await;
    assert_eq!(
        policy["policy"]["canary"],
        json!({"version": 4, "weight": 0.0}),
        "{policy}"
    );
    assert_eq!(policy["rollout"], "rolled_back", "{policy}");
    for i in 0..10 {
        let x = input(i);
        assert_eq!(infer(&server, &[], x).await.check(x, factor), 1);
    }

    // The canary failed its 1-row requests; stable never failed.
    assert!(
        seen.count(500, None) + seen.count(500, Some(4)) > 0,
        "{seen:?}"
    );
    assert!(seen.count(200, Some(1)) > 0, "{seen:?}");
    assert_eq!(seen.count(200, Some(4)), 0, "{seen:?}");
    assert!(seen.wrong.is_empty(), "{:?}", seen.wrong);

    let records = audit_records(&server).await;
    assert_eq!(
        actions(&records),
        ["policy.set", "rollout.start", "rollout.rollback"]
    );
    assert_eq!(records[1]["actor"], ADMIN_NAME);
    let rollback = &records[2];
    assert_eq!(rollback["actor"], "controller");
    assert_eq!(rollback["after"]["canary"]["weight"], 0.0, "{rollback}");
    assert_eq!(rollback["evidence"]["decision"]["decision"], "rollback");
    assert_eq!(
        gate(&rollback["evidence"], "error_rate_increase")["passed"],
        false,
        "{rollback}"
    );
    let text = metrics_text(&server).await;
    assert_eq!(
        metric(
            &text,
            "sluice_rollout_decisions_total",
            &[("model", "scale"), ("decision", "rollback")],
        ),
        Some(1.0)
    );
    sluice_rollout::audit::verify(&sluice_rollout::audit::log_path(server.root.path())).unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_promotes_a_healthy_canary_step_by_step() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale", 2)], None, admin_options()).await;
    put_policy(&server, json!({"stable": 1})).await;
    let load = traffic(&server, 2, Duration::from_millis(2), by_version);
    load.flowing().await;
    // A p99 ratio no scheduling noise reaches: only errors could stop it.
    start_rollout(&server, &plan(2, 0.4, 1000.0)).await;
    let status = rollout_outcome(&server).await;
    let seen = load.finish().await;

    assert_eq!(status["state"], "promoted", "{status}");
    let decided: Vec<&str> = status["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision"]["decision"].as_str().unwrap())
        .filter(|d| *d != "hold")
        .collect();
    assert_eq!(decided, ["advance", "promote"], "{status}");
    assert_eq!(
        seen.not_ok(),
        0,
        "requests failed during the rollout: {seen:?}"
    );
    assert!(seen.wrong.is_empty(), "{:?}", seen.wrong);
    assert!(
        seen.count(200, Some(1)) > 0 && seen.count(200, Some(2)) > 0,
        "{seen:?}"
    );

    let policy = get_policy(&server).await;
    assert_eq!(policy["policy"], json!({"stable": 2}), "{policy}");
    assert_eq!(policy["stable"], 2);
    for i in 0..10 {
        let x = input(i);
        let answer = infer(&server, &[], x).await;
        assert_eq!(answer.check(x, by_version), 2);
        assert_eq!(answer.variant.as_deref(), Some("stable"));
    }
    let records = audit_records(&server).await;
    assert_eq!(
        actions(&records),
        [
            "policy.set",
            "rollout.start",
            "rollout.advance",
            "rollout.promote"
        ]
    );
    assert_eq!(records[1]["actor"], ADMIN_NAME);
    assert_eq!(records[2]["actor"], "controller");
    assert_eq!(
        records[2]["after"]["canary"]["weight"], 1.0,
        "{}",
        records[2]
    );
    assert_eq!(records[3]["actor"], "controller");
    assert_eq!(records[3]["after"], json!({"stable": 2}), "{}", records[3]);
    let text = metrics_text(&server).await;
    for decision in ["advance", "promote"] {
        assert_eq!(
            metric(
                &text,
                "sluice_rollout_decisions_total",
                &[("model", "scale"), ("decision", decision)],
            ),
            Some(1.0),
            "{decision}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_rolls_back_a_slow_canary() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale_slow", 4)], None, admin_options()).await;
    put_policy(&server, json!({"stable": 1})).await;
    let factor = |v: u64| if v == 4 { 1.0 } else { v as f32 };
    let load = traffic(&server, 2, Duration::from_millis(2), factor);
    load.flowing().await;
    start_rollout(&server, &plan(4, 0.5, 1.5)).await;
    let status = rollout_outcome(&server).await;
    let seen = load.finish().await;

    assert_eq!(status["state"], "rolled_back", "{status}");
    let last = status["decisions"].as_array().unwrap().last().unwrap();
    assert_eq!(last["decision"]["decision"], "rollback", "{last}");
    assert_eq!(
        gate(&last["evidence"], "error_rate_increase")["passed"],
        true,
        "{last}"
    );
    let p99 = gate(&last["evidence"], "p99_ratio");
    assert_eq!(p99["passed"], false, "{last}");
    assert!(p99["value"].as_f64().unwrap() > 1.5, "{last}");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("p99"),
        "{status}"
    );
    assert_eq!(
        seen.not_ok(),
        0,
        "a slow canary is not a failing one: {seen:?}"
    );
    assert!(seen.wrong.is_empty(), "{:?}", seen.wrong);

    let policy = get_policy(&server).await;
    assert_eq!(
        policy["policy"]["canary"],
        json!({"version": 4, "weight": 0.0}),
        "{policy}"
    );
    let records = audit_records(&server).await;
    assert_eq!(actions(&records).last(), Some(&"rollout.rollback"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_under_load_fail_no_request() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale", 2)], None, admin_options()).await;
    put_policy(&server, json!({"stable": 1})).await;
    let load = traffic(&server, 8, Duration::ZERO, by_version);
    load.flowing().await;

    let canary = |w: f64| json!({"stable": 1, "canary": {"version": 2, "weight": w}});
    let mut changes: Vec<(&str, Option<Value>)> = (1..=10)
        .map(|i| ("PUT", Some(canary(f64::from(i) / 10.0))))
        .collect();
    changes.extend([
        ("rollback", None),
        ("PUT", Some(canary(0.5))),
        ("promote", None),
        ("PUT", Some(canary(0.3))),
        ("rollback", None),
        ("PUT", Some(json!({"stable": 1}))),
        ("PUT", Some(json!({"stable": 2}))),
        ("PUT", Some(canary(0.7))),
        ("promote", None),
        ("PUT", Some(json!({"stable": 1}))),
    ]);
    assert_eq!(changes.len(), 20);
    for (what, body) in &changes {
        let (status, answer) = match body {
            Some(policy) => {
                admin(
                    &server,
                    Method::PUT,
                    "/admin/models/scale/policy",
                    Some(policy),
                )
                .await
            }
            None => {
                admin(
                    &server,
                    Method::POST,
                    &format!("/admin/models/scale/{what}"),
                    None,
                )
                .await
            }
        };
        assert_eq!(status, 200, "{what} {body:?}: {answer}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let seen = load.finish().await;
    assert_eq!(
        seen.not_ok(),
        0,
        "requests failed while the policy changed: {seen:?}"
    );
    assert!(seen.wrong.is_empty(), "{:?}", seen.wrong);
    assert!(
        seen.count(200, Some(1)) > 0 && seen.count(200, Some(2)) > 0,
        "{seen:?}"
    );
    let x = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(infer(&server, &[], x).await.check(x, by_version), 1);
    assert_eq!(audit_records(&server).await.len(), 21);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_is_the_implicit_stable_version_is_refused() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale", 2)], None, admin_options()).await;
    let (status, body) = admin(
        &server,
        Method::PUT,
        "/admin/models/scale/policy",
        Some(&json!({"canary": {"version": 2, "weight": 0.3}})),
    )
    .await;
    if status == 200 {
        // What it leads to: "stable" and "canary" are the same version.
        let mut versions = Vec::new();
        for i in 0..40 {
            let x = input(i);
            versions.push(infer(&server, &[], x).await.check(x, by_version));
        }
        let policy = get_policy(&server).await;
        panic!(
            "accepted (stable in effect: {}); versions answered: {versions:?}",
            policy["stable"]
        );
    }
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("stable"), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_without_a_pinned_stable_version_compares_with_the_serving_one() {
    let _serial = SERIAL.lock().await;
    let server = start(
        &[("scale", 1), ("scale_failing", 4)],
        Some(FAILING_TOML),
        admin_options(),
    )
    .await;
    let factor = |v: u64| if v == 4 { 1.0 } else { v as f32 };
    let load = traffic(&server, 2, Duration::from_millis(2), factor);
    load.flowing().await;
    let (status, body) = admin(
        &server,
        Method::POST,
        "/admin/models/scale/rollout",
        Some(&plan(4, 0.5, 1.5)),
    )
    .await;
    let outcome = if status == 200 {
        Some(rollout_outcome(&server).await)
    } else {
        None
    };
    let seen = load.finish().await;
    match outcome {
        // Refusing to start is right too: the canary is the stable version.
        None => assert_eq!(status, 400, "{body}"),
        Some(outcome) => {
            assert_eq!(
                outcome["state"], "rolled_back",
                "{outcome}; traffic: {seen:?}"
            );
            assert_eq!(get_policy(&server).await["stable"], 1);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_plan_is_checked_and_a_rollout_can_be_stopped() {
    let _serial = SERIAL.lock().await;
    let server = start(&[("scale", 1), ("scale", 2)], None, admin_options()).await;
    put_policy(&server, json!({"stable": 1})).await;
    let (status, _) = admin(&server, Method::GET, "/admin/models/scale/rollout", None).await;
    assert_eq!(status, 404, "no rollout was started");

    let mut bad_plans = Vec::new();
    for (field, value) in [
        ("steps", json!([50.0, 90.0])),
        ("steps", json!([50.0, 20.0, 100.0])),
        ("steps", json!([])),
        ("interval_s", json!(0.0)),
        ("canary", json!(9)),
        ("canary", json!(1)),
        ("bogus", json!(1)),
    ] {
        let mut plan = plan(2, 30.0, 1.5);
        plan[field] = value;
        bad_plans.push(plan);
    }
    for plan in &bad_plans {
        let (status, body) = admin(
            &server,
            Method::POST,
            "/admin/models/scale/rollout",
            Some(plan),
        )
        .await;
        assert_eq!(status, 400, "{plan}: {body}");
        assert!(body["error"].is_string(), "{body}");
        assert_eq!(get_policy(&server).await["policy"], json!({"stable": 1}));
    }
    let (status, _) = admin(&server, Method::GET, "/admin/models/scale/rollout", None).await;
    assert_eq!(status, 404, "a refused plan started nothing");

    // A long interval: nothing is decided before it is stopped.
    start_rollout(&server, &plan(2, 30.0, 1.5)).await;
    assert_eq!(get_policy(&server).await["rollout"], "running");
    let (status, stopped) =
        admin(&server, Method::DELETE, "/admin/models/scale/rollout", None).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(stopped["decisions"], json!([]), "{stopped}");
    let policy = get_policy(&server).await;
    assert_eq!(policy["rollout"], "stopped", "{policy}");
    // Stopping leaves the weight where it was.
    assert_eq!(
        policy["policy"]["canary"],
        json!({"version": 2, "weight": 0.5})
    );

    // A policy set by hand stops a running rollout.
    start_rollout(&server, &plan(2, 30.0, 1.5)).await;
    put_policy(&server, json!({"stable": 1})).await;
    let (_, status) = admin(&server, Method::GET, "/admin/models/scale/rollout", None).await;
    assert_eq!(status["state"], "stopped", "{status}");

    let records = audit_records(&server).await;
    assert_eq!(
        actions(&records),
        [
            "policy.set",
            "rollout.start",
            "rollout.stop",
            "rollout.start",
            "policy.set"
        ]
    );
    assert_eq!(records[2]["actor"], ADMIN_NAME);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The validation gate (`require_validation = true`)
// ---------------------------------------------------------------------------

/// Writes a validation report beside `scale/<version>` and records its hash
/// in the version's manifest, as `sluice models validate` does.
fn record_report(root: &Path, version: u64, passed: bool) {
    let dir = root.join("scale").join(version.to_string());
    let report = serde_json::to_vec(&json!({
        "passed": passed,
        "checks": [{ "check": "accuracy >= 0.9", "value": if passed { 0.95 } else { 0.5 }, "passed": passed }],
    }))
    .unwrap();
    std::fs::write(dir.join("validation.json"), &report).unwrap();
    let sha256 = |bytes: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    };
    let model = std::fs::read(dir.join("model.onnx")).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&json!({
            "schema": 1, "model": "scale", "version": version, "file": "model.onnx",
            "sha256": sha256(&model), "size_bytes": model.len(),
            "created": "2026-11-26T00:00:00Z", "source_file": "model.onnx", "lineage": {},
            "validation": {
                "file": "validation.json", "sha256": sha256(&report), "passed": passed,
                "created": "2026-11-26T00:00:00Z",
            },
        }))
        .unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn the_validation_gate_keeps_unvalidated_versions_from_traffic() {
    let _serial = SERIAL.lock().await;
    let server = start(
        &[("scale", 1), ("scale", 2), ("scale", 3)],
        Some("require_validation = true\n"),
        admin_options(),
    )
    .await;
    let root = server.root.path().to_path_buf();
    // Nothing validated: every version loads, none takes traffic by default.
    let index = server.post_empty("/v2/repository/index").await;
    assert_eq!(index.status(), 200);
    let response = server
        .post_json(
            "/v2/models/scale/infer",
            &common::scale_request([1.0, 2.0, 3.0, 4.0]),
        )
        .await;
    assert_eq!(response.status(), 503, "no version may take traffic yet");
    // A version can still be called by its number (to test it).
    let response = server
        .post_json(
            "/v2/models/scale/versions/2/infer",
            &common::scale_request([1.0, 2.0, 3.0, 4.0]),
        )
        .await;
    assert_eq!(response.status(), 200);

    // Version 1 passes, version 3 fails, version 2 has no report: the
    // default is 1, although 3 is the highest.
    record_report(&root, 1, true);
    record_report(&root, 3, false);
    server.manager.reconcile().await.unwrap();
    let response = server
        .post_json(
            "/v2/models/scale/infer",
            &common::scale_request([1.0, 2.0, 3.0, 4.0]),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["sluice-model-version"], "1");

    // Neither 2 nor 3 may be canary or shadow; the refusals are audited
    // with the reason.
    for (policy, why) in [
        (
            json!({ "stable": 1, "canary": { "version": 2, "weight": 0.5 } }),
            "may not be canary",
        ),
        (
            json!({ "stable": 1, "shadows": [{ "version": 3, "percent": 100.0 }] }),
            "failed: accuracy >= 0.9",
        ),
        (json!({ "stable": 3 }), "failed"),
    ] {
        let (status, body) = admin(
            &server,
            Method::PUT,
            "/admin/models/scale/policy",
            Some(&policy),
        )
        .await;
        assert_eq!(status, 400, "{policy}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("validation gate") && message.contains(why),
            "{message}"
        );
    }
    let records = audit_records(&server).await;
    assert_eq!(
        actions(&records),
        [
            "policy.set.refused",
            "policy.set.refused",
            "policy.set.refused"
        ]
    );
    assert!(
        records[0]["evidence"]["reason"]
            .as_str()
            .unwrap()
            .contains("version 2")
    );
    assert_eq!(records[0]["actor"], ADMIN_NAME);

    // Validated, version 2 may be canary; the change carries the gate's
    // evidence (the reports' hashes).
    record_report(&root, 2, true);
    server.manager.reconcile().await.unwrap();
    put_policy(
        &server,
        json!({ "stable": 1, "canary": { "version": 2, "weight": 0.5 } }),
    )
    .await;
    let records = audit_records(&server).await;
    let last = records.last().unwrap();
    assert_eq!(last["action"], "policy.set");
    let evidence = &last["evidence"]["validation"];
    assert_eq!(evidence["2"]["passed"], true, "{last}");
    assert_eq!(evidence["1"]["passed"], true, "{last}");
    assert!(evidence["2"]["report_sha256"].as_str().unwrap().len() == 64);

    // The inventory shows the gate's verdicts and the roles.
    let (status, inventory) = admin(&server, Method::GET, "/admin/inventory", None).await;
    assert_eq!(status, 200, "{inventory}");
    let versions = inventory["models"][0]["versions"].as_array().unwrap();
    let v2 = versions.iter().find(|v| v["version"] == 2).unwrap();
    assert_eq!(v2["roles"][0]["role"], "canary", "{v2}");
    assert_eq!(v2["roles"][0]["since"]["actor"], ADMIN_NAME, "{v2}");
    assert_eq!(v2["validation"]["passed"], true, "{v2}");
    let v3 = versions.iter().find(|v| v["version"] == 3).unwrap();
    assert!(v3["traffic"].as_str().unwrap().contains("failed"), "{v3}");
    server.stop().await;
}
