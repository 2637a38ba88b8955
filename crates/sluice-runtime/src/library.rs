//! Finding and loading the ONNX Runtime shared library.
//!
//! `ort` is built with `load-dynamic`: nothing links against ONNX Runtime at
//! build time, and the library is opened once per process, here. The search
//! order is: an explicit path (`--ort-lib` / `ORT_DYLIB_PATH`), then
//! `.sluice/ort/libonnxruntime.so` (where `scripts/fetch-ort.sh` puts it) in the
//! working directory and in each ancestor of the running executable, so
//! `target/debug/sluice` finds the checkout's copy from anywhere.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::RuntimeError;

/// Where `scripts/fetch-ort.sh` puts the library, relative to a checkout.
pub const FETCHED_LIBRARY: &str = ".sluice/ort/libonnxruntime.so";

/// Resolves the library path without loading it.
pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(RuntimeError::ExplicitMissing {
                path: path.to_path_buf(),
            })
        };
    }
    let mut candidates = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join(FETCHED_LIBRARY));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            candidates.push(dir.join(FETCHED_LIBRARY));
        }
    }
    candidates.dedup();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    Err(RuntimeError::NotFound {
        looked: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The process-wide ONNX Runtime environment. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OrtRuntime {
    env: ort::environment::Environment,
    library: PathBuf,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();

impl OrtRuntime {
    /// Loads the library (once per process; later calls return the first
    /// runtime, whatever path they name) and creates the environment.
    pub fn init(explicit: Option<&Path>) -> Result<OrtRuntime, RuntimeError> {
        if let Some(rt) = RUNTIME.get() {
            return Ok(rt.clone());
        }
        let library = locate_library(explicit)?;
        let load = |message: String| RuntimeError::Load {
            path: library.clone(),
            message,
        };
        let env = ort::init_from(&library)
            .map_err(|e| load(e.to_string()))?
            .with_name("sluice")
            .with_telemetry(false)
            .build()
            .map_err(|e| load(e.to_string()))?;
        let rt = OrtRuntime { env, library };
        Ok(RUNTIME.get_or_init(|| rt).clone())
    }

    pub fn environment(&self) -> &ort::environment::Environment {
        &self.env
    }

    /// The library file this process loaded.
    pub fn library(&self) -> &Path {
        &self.library
    }
}
