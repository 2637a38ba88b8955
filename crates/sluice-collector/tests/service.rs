//! The collector over HTTP on 127.0.0.1: records in, a reference set from a
//! CSV, drift out as JSON and as the page, alerts to a webhook, and a
//! restart that loses nothing it accepted.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sluice_collector::collector::{Collector, CollectorOptions};
use sluice_collector::server::{CollectorState, routes};

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

fn batch(rng: &mut Normal, events: usize, rows: usize, shift: f64) -> Value {
    let list: Vec<Value> = (0..events)
        .map(|e| {
            let x: Vec<f64> = (0..rows * 3)
                .map(|i| rng.next() + if i % 3 == 1 { shift } else { 0.0 })
                .collect();
            json!({"specversion": "1.0", "type": "dev.sluice.inference", "id": format!("e{e}"),
                   "source": "sluice://test/m", "data": {"model": "m", "version": 1,
                   "inputs": [{"name": "input", "datatype": "FP64", "shape": [rows, 3], "data": x}]}})
        })
        .collect();
    Value::Array(list)
}

async fn serve(state: CollectorState) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, routes(state)).await.unwrap();
    });
    (url, task)
}

/// A webhook receiver that keeps what it is sent.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock()
                    .unwrap()
                    .push(serde_json::from_slice::<Value>(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_found_shown_announced_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = CollectorOptions {
        window_rows: 400,
        ..CollectorOptions::new(dir.path().join("store.jsonl"))
    };
    let (hook, received) = webhook().await;
    let state = CollectorState {
        collector: Arc::new(Collector::open(options.clone()).unwrap()),
        webhooks: Arc::new(vec![hook]),
        client: reqwest::Client::new(),
    };
    let (url, task) = serve(state).await;
    let client = reqwest::Client::new();
    let mut rng = Normal(3);

    // A reference from a CSV, its columns named after the input.
    let mut csv = String::from("a,b,c\n");
    for _ in 0..1000 {
        csv.push_str(&format!("{},{},{}\n", rng.next(), rng.next(), rng.next()));
    }
    let r = client
        .put(format!(
            "{url}/v1/models/m/versions/1/reference?input=input&source=golden.csv"
        ))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let post = |body: Value| {
        client
            .post(format!("{url}/v1/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(body.to_string())
            .send()
    };
    // Two windows like the reference, then a shift of input[1].
    for _ in 0..2 {
        let r = post(batch(&mut rng, 8, 50, 0.0)).await.unwrap();
        assert_eq!(r.status(), 200);
        let summary: Value = r.json().await.unwrap();
        assert_eq!(summary["accepted"], 8);
        assert_eq!(summary["windows_closed"], 1);
    }
    for _ in 0..2 {
        assert_eq!(
            post(batch(&mut rng, 8, 50, 0.5)).await.unwrap().status(),
            200
        );
    }
    let report: Value = client
        .get(format!("{url}/v1/models/m/drift"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let v1 = &report["versions"]["1"];
    assert_eq!(v1["reference"]["source"], "golden.csv");
    assert_eq!(v1["windows"].as_array().unwrap().len(), 4);
    assert_eq!(v1["alert"]["raised"], true, "{v1}");
    assert_eq!(v1["alert"]["features"][0], "input[1]", "{v1}");

    // The webhook got the alert as a CloudEvent.
    for _ in 0..100 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let hooks = received.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["type"], "dev.sluice.drift.alert.raised");
    assert_eq!(hooks[0]["data"]["features"][0], "input[1]");

    // The metrics: the alert, and the drifted feature's score.
    let text = client
        .get(format!("{url}/v1/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("sluice_drift_alert{model=\"m\",version=\"1\"} 1"),
        "{text}"
    );
    assert!(text.contains("sluice_drift_windows_total{model=\"m\",version=\"1\"} 4"));
    assert!(text.contains("sluice_collector_events_total{outcome=\"accepted\"} 32"));
    assert!(
        text.contains("sluice_drift_feature_drifted{model=\"m\",version=\"1\",feature=\"input[1]\",method=\"ks\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "sluice_drift_score{model=\"m\",version=\"1\",feature=\"input[1]\",method=\"ks\"} "
    ));

    // The page has the charts.
    let page = client.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("class=\"chart timeline\""), "{html}");
    assert!(html.contains("class=\"chart distribution\""));
    assert!(html.contains("input[1]"));
    assert!(!html.contains("http://") || !html.contains("<script src"));

    // Bad input is refused with a reason; nothing is accepted from it.
    let r = post(json!({"not": "an array"})).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .put(format!("{url}/v1/models/m/versions/1/reference"))
        .header("content-type", "text/csv")
        .body("a,b\n1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A restart over the same store: the same report.
    // (The store is the collector's alone: the first must be gone first,
    // with the connections that still hold it.)
    task.abort();
    let _ = task.await;
    drop(client);
    let mut reopened = None;
    for _ in 0..100 {
        match Collector::open(options.clone()) {
            Ok(c) => {
                reopened = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let reopened = reopened.expect("the store is released once the first collector is gone");
    let again = reopened.model_report("m").unwrap();
    assert_eq!(again, report);
}
