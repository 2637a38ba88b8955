//! The dynamic batcher's own costs (`sluice_runtime::batch`), for the tiny
//! MLP (input FP32 `[-1, 16]`, output FP32 `[-1, 4]`), at 16 requests of
//! one row each:
//!
//! - `batch_key`: the key of one `[1, 16]` request asking for `output`,
//!   computed for every request a worker takes or joins.
//! - `concat_16x1x16`: joining 16 requests of `[1, 16]` into one `[16, 16]`
//!   input (one copy of 1 KiB).
//! - `split_16x4`: splitting a `[16, 4]` output back into 16 `[1, 4]`
//!   tensors (zero-copy slices).
//!
//! Throughput is in requests (rows): 1 for `batch_key`, 16 for the others.
//! Before measuring, the results are checked: equal requests have equal
//! keys and a different shape another key; the joined tensor holds the 16
//! rows in order; each split part is its own row.
//!
//! Environment (optional): `SLUICE_BENCH_MEASUREMENT_S` (default 3),
//! criterion's measurement time per bench, in seconds.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_runtime::batch::{batch_key, concat, split};
use sluice_tensor::{DataType, Tensor};

const REQUESTS: usize = 16;

fn fp32_tensor(shape: &[i64], values: impl IntoIterator<Item = f32>) -> Tensor {
    let raw: Vec<u8> = values.into_iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_raw(DataType::Fp32, shape.to_vec(), Bytes::from(raw)).expect("FP32 tensor")
}

/// Request `i`: one row of 16 values, `i * 16 + j`.
fn mlp_request(i: usize) -> Vec<(String, Tensor)> {
    let row = (0..16).map(|j| (i * 16 + j) as f32);
    vec![("input".to_string(), fp32_tensor(&[1, 16], row))]
}

fn check(requests: &[Vec<(String, Tensor)>], outputs: &[String], output: &Tensor) {
    let (key, rows) = batch_key(&requests[0], outputs).expect("a [1, 16] request batches");
    assert_eq!(rows, 1);
    for r in requests {
        assert_eq!(batch_key(r, outputs).expect("batches").0, key);
    }
    let other = vec![("input".to_string(), fp32_tensor(&[1, 8], [0.0; 8]))];
    assert_ne!(batch_key(&other, outputs).expect("batches").0, key);

    let refs: Vec<&[(String, Tensor)]> = requests.iter().map(Vec::as_slice).collect();
    let joined = concat(&refs).expect("concat");
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].0, "input");
    assert_eq!(joined[0].1.shape(), &[REQUESTS as i64, 16]);
    let want: Vec<u8> = requests.iter().flat_map(|r| r[0].1.to_binary()).collect();
    assert_eq!(joined[0].1.to_binary().as_ref(), want.as_slice());
    // Splitting the joined input gives back each request's own tensor.
    let back = split(&joined[0].1, &[1; REQUESTS]).expect("split");
    for (part, r) in back.iter().zip(requests) {
        assert_eq!(part, &r[0].1);
    }

    let parts = split(output, &[1; REQUESTS]).expect("split");
    assert_eq!(parts.len(), REQUESTS);
    for (i, part) in parts.iter().enumerate() {
        let row = (0..4).map(|j| (i * 4 + j) as f32);
        assert_eq!(part, &fp32_tensor(&[1, 4], row), "row {i}");
    }
}

fn batch(c: &mut Criterion) {
    let requests: Vec<Vec<(String, Tensor)>> = (0..REQUESTS).map(mlp_request).collect();
    let outputs = vec!["output".to_string()];
    let output = fp32_tensor(&[REQUESTS as i64, 4], (0..REQUESTS * 4).map(|v| v as f32));
    check(&requests, &outputs, &output);

    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(1));
    group.bench_function("batch_key", |b| {
        b.iter(|| batch_key(black_box(&requests[0]), black_box(&outputs)))
    });
    group.throughput(Throughput::Elements(REQUESTS as u64));
    let refs: Vec<&[(String, Tensor)]> = requests.iter().map(Vec::as_slice).collect();
    group.bench_function("concat_16x1x16", |b| {
        b.iter(|| concat(black_box(&refs)).expect("concat"))
    });
    let rows = [1usize; REQUESTS];
    group.bench_function("split_16x4", |b| {
        b.iter(|| split(black_box(&output), black_box(&rows)).expect("split"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(sluice_benches::measurement_time());
    targets = batch
}
criterion_main!(benches);
