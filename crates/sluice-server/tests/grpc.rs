//! The Open Inference Protocol over gRPC with a real tonic client, against a
//! real server on 127.0.0.1: on the HTTP port (h2c) and on a listener of its
//! own. (The broader suite, through tritonclient.grpc, is tests/grpc/.)

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, copy_version};
use sluice_server::grpc_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_server::grpc_proto::model_infer_request::InferInputTensor;
use sluice_server::grpc_proto::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ServerReadyRequest,
};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A server with HTTP (and gRPC) on one port and gRPC alone on another,
/// over copies of the given fixture versions.
async fn start(models: &[(&str, u64)]) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    for (model, version) in models {
        copy_version(root.path(), model, *version, model);
    }
    TestServer::start_with_grpc(root, sluice_server::HttpOptions::default()).await
}

async fn client(url: &str) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(channel(url).await)
}

fn grpc(server: &TestServer) -> &str {
    server
        .grpc_url
        .as_deref()
        .expect("started with a gRPC listener")
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn fp32(values: &[f32]) -> Bytes {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn raw_request(
    model: &str,
    name: &str,
    dtype: &str,
    shape: &[i64],
    raw: Bytes,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: name.into(),
            datatype: dtype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

fn first_output_f32(r: &ModelInferResponse) -> Vec<f32> {
    r.raw_output_contents[0]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_on_both_ports_raw_and_typed() {
    let server = start(&[("scale", 2)]).await;
    for url in [server.url.as_str(), grpc(&server)] {
        let mut c = client(url).await;
        assert!(
            c.server_ready(ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        let x = [1.0f32, 2.0, -3.0, 0.5];
        let r = c
            .model_infer(raw_request("scale", "x", "FP32", &[1, 4], fp32(&x)))
            .await
            .unwrap();
        assert_eq!(
            r.metadata().get("sluice-model-version").unwrap(),
            "2",
            "{url}"
        );
        assert!(r.metadata().get("x-request-id").is_some());
        let r = r.into_inner();
        assert_eq!(r.model_version, "2");
        assert_eq!(r.outputs[0].name, "y");
        assert_eq!(r.outputs[0].datatype, "FP32");
        assert_eq!(r.outputs[0].shape, vec![1, 4]);
        assert_eq!(first_output_f32(&r), x.map(|v| v * 2.0).to_vec());

        // The same request with typed contents.
        let mut typed = raw_request("scale", "x", "FP32", &[1, 4], Bytes::new());
        typed.raw_input_contents.clear();
        typed.inputs[0].contents = Some(InferTensorContents {
            fp32_contents: x.to_vec(),
            ..Default::default()
        });
        let r = c.model_infer(typed).await.unwrap().into_inner();
        assert_eq!(first_output_f32(&r), x.map(|v| v * 2.0).to_vec());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_and_fp16_through_raw_contents() {
    let server = start(&[("identity_bytes", 1), ("identity_fp16", 1)]).await;
    let mut c = client(&server.url).await;
    let mut raw = Vec::new();
    for e in [&b"hello"[..], b"", "w\u{f6}rld".as_bytes()] {
        raw.extend_from_slice(&(e.len() as u32).to_le_bytes());
        raw.extend_from_slice(e);
    }
    let r = c
        .model_infer(raw_request(
            "identity_bytes",
            "INPUT0",
            "BYTES",
            &[1, 3],
            Bytes::from(raw.clone()),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outputs[0].datatype, "BYTES");
    assert_eq!(r.raw_output_contents[0], raw);

    // 1.0, -2.0, 65504 and the smallest subnormal, as FP16 bits.
    let halves: Bytes = [0x3c00u16, 0xc000, 0x7bff, 0x0001]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let r = c
        .model_infer(raw_request(
            "identity_fp16",
            "INPUT0",
            "FP16",
            &[2, 2],
            halves.clone(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outputs[0].datatype, "FP16");
    assert_eq!(r.raw_output_contents[0], halves);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_their_codes_and_are_counted_as_grpc() {
    let server = start(&[("scale", 1)]).await;
    let mut c = client(grpc(&server)).await;
    let code =
        |r: Result<tonic::Response<ModelInferResponse>, tonic::Status>| r.map(|_| ()).unwrap_err();
    // Wrong datatype, wrong shape, wrong byte count: INVALID_ARGUMENT.
    let e = code(
        c.model_infer(raw_request(
            "scale",
            "x",
            "INT32",
            &[1, 4],
            Bytes::from(vec![0; 16]),
        ))
        .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = code(
        c.model_infer(raw_request("scale", "x", "FP32", &[1, 5], fp32(&[0.0; 5])))
            .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = code(
        c.model_infer(raw_request("scale", "x", "FP32", &[1, 4], fp32(&[0.0; 3])))
            .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Unknown model or version: NOT_FOUND.
    let e = code(
        c.model_infer(raw_request("nope", "x", "FP32", &[1, 4], fp32(&[0.0; 4])))
            .await,
    );
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("unknown model 'nope'"), "{e:?}");
    let mut pinned = raw_request("scale", "x", "FP32", &[1, 4], fp32(&[0.0; 4]));
    pinned.model_version = "7".into();
    assert_eq!(code(c.model_infer(pinned).await).code(), Code::NotFound);
    let e = c
        .model_metadata(ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    c.model_infer(raw_request("scale", "x", "FP32", &[1, 4], fp32(&[1.0; 4])))
        .await
        .unwrap();
    let count = |version: &str, outcome: &str| {
        server
            .metrics
            .requests
            .get(&["scale", version, "grpc", outcome])
            .get()
    };
    assert_eq!(count("1", "success"), 1);
    assert_eq!(count("1", "validation"), 3);
    assert_eq!(count("", "not_found"), 1);
    assert_eq!(
        server
            .metrics
            .requests
            .get(&["scale", "1", "http", "success"])
            .get(),
        0
    );
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "sluice_requests_total{model=\"scale\",version=\"1\",protocol=\"grpc\",outcome=\"success\"} 1\n"
        ),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_variant_metadata() {
    let server = start(&[("scale", 1), ("scale", 2)]).await;
    std::fs::write(
        server.root.path().join("scale/policy.toml"),
        "stable = 1\n[canary]\nversion = 2\nweight = 0.5\n",
    )
    .unwrap();
    server.manager.reconcile().await.unwrap();
    let mut c = client(&server.url).await;
    for (variant, version, k) in [("stable", "1", 1.0), ("canary", "2", 2.0)] {
        for _ in 0..5 {
            let mut request =
                tonic::Request::new(raw_request("scale", "x", "FP32", &[1, 4], fp32(&[1.0; 4])));
            request
                .metadata_mut()
                .insert("x-sluice-variant", variant.parse().unwrap());
            let r = c.model_infer(request).await.unwrap();
            assert_eq!(r.metadata().get("x-sluice-variant").unwrap(), variant);
            assert_eq!(r.metadata().get("sluice-model-version").unwrap(), version);
            let r = r.into_inner();
            assert_eq!(first_output_f32(&r), vec![k; 4]);
            // A model with a traffic policy names the side in the body too.
            assert!(r.parameters.contains_key("variant"));
        }
    }
    let mut request =
        tonic::Request::new(raw_request("scale", "x", "FP32", &[1, 4], fp32(&[1.0; 4])));
    request
        .metadata_mut()
        .insert("x-sluice-variant", "sideways".parse().unwrap());
    assert_eq!(
        c.model_infer(request).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_and_watch() {
    let server = start(&[("scale", 1)]).await;
    let mut health = HealthClient::new(channel(&server.url).await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let serving = ServingStatus::Serving as i32;
    for service in ["", "inference.GRPCInferenceService", "scale"] {
        let r = health.check(check(service)).await.unwrap().into_inner();
        assert_eq!(r.status, serving, "{service:?}");
    }
    let e = health.check(check("nope")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let mut watch = health.watch(check("scale")).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, serving);
    server.manager.unload("scale").await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a status change within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);

    // On the gRPC port too.
    let mut health = HealthClient::new(channel(grpc(&server)).await);
    let r = health.check(check("")).await.unwrap().into_inner();
    assert_eq!(r.status, serving);
    server.stop().await;
}
