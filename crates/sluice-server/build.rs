//! Generates the gRPC service (`inference.GRPCInferenceService`) from
//! `proto/grpc_service.proto` with the protoc binary vendored by
//! `protoc-bin-vendored`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Raw contents are handed around as `Bytes`, without copying.
        .bytes(".inference")
        .compile_protos(&["proto/grpc_service.proto"], &["proto"])?;
    Ok(())
}
