//! Inline execution: a version whose warm-up runs are shorter than
//! `inline_max_run` runs a small request that finds it idle on the caller's
//! thread. Checked on
//! the `scale` fixture (`y = x * 2` for version 2): which versions go inline,
//! that small and large requests, concurrent and mixed, each get their own
//! answer, and that statistics count both paths alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_runtime::{ModelExecutor, OrtRuntime, SessionOptions};
use sluice_tensor::{DataType, Tensor};

fn scale_v2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/scale/2/model.onnx")
}

fn load(options: SessionOptions) -> ModelExecutor {
    let rt = OrtRuntime::init(None).expect("ONNX Runtime (run scripts/fetch-ort.sh)");
    ModelExecutor::load(&rt, "scale", 2, &scale_v2(), options, None).expect("scale v2 loads")
}

fn rows(values: &[f32]) -> Vec<(String, Tensor)> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = vec![(values.len() / 4) as i64, 4];
    vec![(
        "x".to_string(),
        Tensor::from_raw(DataType::Fp32, shape, Bytes::from(bytes)).unwrap(),
    )]
}

fn floats(t: &Tensor) -> Vec<f32> {
    t.to_binary()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Runs `values` through the executor and checks the answer is exactly
/// `values * 2`.
async fn check(exec: &ModelExecutor, values: Vec<f32>) {
    let out = exec.infer(rows(&values), vec![]).await.unwrap();
    let (name, y) = &out.outputs[0];
    assert_eq!(name, "y");
    assert_eq!(y.shape(), &[(values.len() / 4) as i64, 4]);
    let want: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
    assert_eq!(floats(y), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_model_runs_inline_unless_told_not_to() {
    let inline = load(SessionOptions {
        // Generous, so a slow debug build or a busy machine still qualifies.
        inline_max_run: Duration::from_millis(20),
        ..SessionOptions::default()
    });
    let probe = inline.inline_run().expect("the scale model runs inline");
    assert!(probe > Duration::ZERO);

    let off = load(SessionOptions {
        inline_max_run: Duration::ZERO,
        ..SessionOptions::default()
    });
    assert_eq!(off.inline_run(), None);

    let batched = load(SessionOptions {
        inline_max_run: Duration::from_millis(20),
        batching: Some(sluice_runtime::BatchingOptions {
            max_batch_size: 8,
            max_queue_delay: Duration::from_micros(100),
            preferred_batch_sizes: vec![],
        }),
        ..SessionOptions::default()
    });
    assert_eq!(batched.inline_run(), None, "batched versions always queue");

    let no_warmup = load(SessionOptions {
        inline_max_run: Duration::from_millis(20),
        warmup: false,
        ..SessionOptions::default()
    });
    assert_eq!(
        no_warmup.inline_run(),
        None,
        "nothing measured, nothing inline"
    );

    // Both answer the same.
    check(&inline, vec![1.0, 2.0, 3.0, 4.0]).await;
    check(&off, vec![1.0, 2.0, 3.0, 4.0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_and_large_requests_from_many_callers_each_get_their_own_answer() {
    let exec = Arc::new(load(SessionOptions {
        instances: 2,
        inline_max_run: Duration::from_millis(20),
        ..SessionOptions::default()
    }));
    assert!(exec.inline_run().is_some());
    // Large requests (50,000 rows) exceed any inline budget (at most 64x
    // the 4-element warm-up) and go through the queue; small ones run inline
    // when they find the version idle, and queue while others are in flight.
    let mut calls = Vec::new();
    let mut rows_sent = 0u64;
    for caller in 0..16u32 {
        let exec = exec.clone();
        let sizes: Vec<usize> = (0..25)
            .map(|i| if i % 10 == 9 { 50_000 } else { 1 + i % 3 })
            .collect();
        rows_sent += sizes.iter().map(|&r| r as u64).sum::<u64>();
        calls.push(tokio::spawn(async move {
            for (i, rows) in sizes.into_iter().enumerate() {
                let base = (caller * 1000 + i as u32) as f32;
                let values: Vec<f32> = (0..rows * 4).map(|j| base + j as f32 * 0.5).collect();
                check(&exec, values).await;
            }
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let stats = exec.stats().snapshot();
    assert_eq!(stats.success.count, 16 * 25);
    assert_eq!(stats.execution_count, 16 * 25);
    assert_eq!(stats.inference_count, rows_sent);
    assert_eq!(stats.fail.count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_request_that_fails_validation_fails_alone() {
    let exec = load(SessionOptions {
        inline_max_run: Duration::from_millis(20),
        ..SessionOptions::default()
    });
    assert!(exec.inline_run().is_some());
    let wrong = vec![(
        "x".to_string(),
        Tensor::from_raw(DataType::Fp32, vec![1, 3], Bytes::from(vec![0u8; 12])).unwrap(),
    )];
    assert!(exec.infer(wrong, vec![]).await.is_err());
    check(&exec, vec![5.0, 6.0, 7.0, 8.0]).await;
    let stats = exec.stats().snapshot();
    assert_eq!((stats.success.count, stats.fail.count), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_lane_answers_on_a_session_of_its_own() {
    let exec = load(SessionOptions {
        max_queue_size: 4,
        ..SessionOptions::default()
    });
    // The lane starts on first use (its session loads then), and answers
    // exactly as the version does.
    let values = vec![1.0, -2.0, 3.5, 4.0];
    let out = exec.infer_background(rows(&values), vec![]).await.unwrap();
    assert_eq!(
        floats(&out.outputs[0].1),
        values.iter().map(|v| v * 2.0).collect::<Vec<_>>()
    );
    assert!(out.compute > Duration::ZERO);
    // Many at once: its own bounded queue refuses what does not fit, and
    // every copy it takes is answered right.
    let exec = Arc::new(exec);
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let exec = exec.clone();
            tokio::spawn(async move {
                let v = vec![i as f32, 0.0, 1.0, 2.0];
                exec.infer_background(rows(&v), vec![])
                    .await
                    .map(|o| (v, floats(&o.outputs[0].1)))
            })
        })
        .collect();
    let (mut answered, mut refused) = (0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok((v, y)) => {
                assert_eq!(y, v.iter().map(|x| x * 2.0).collect::<Vec<_>>());
                answered += 1;
            }
            Err(sluice_runtime::InferError::QueueFull { .. }) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(answered + refused, 32);
    assert!(answered >= 4, "at least a queue's worth is answered");
    // The foreground still answers, inline or queued.
    check(&exec, vec![5.0, 6.0, 7.0, 8.0]).await;
}
