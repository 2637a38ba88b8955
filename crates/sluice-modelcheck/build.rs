//! Generates the ONNX message subset (`proto/onnx_subset.proto`) with the
//! protoc binary vendored by `protoc-bin-vendored`, so no system protoc is
//! needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/onnx_subset.proto");
    prost_build::Config::new()
        // Tensor data is a slice of the file that was read, never a copy.
        .bytes(["."])
        .compile_protos(&["proto/onnx_subset.proto"], &["proto"])?;
    Ok(())
}
