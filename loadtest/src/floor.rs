//! The floor: ONNX Runtime called in-process on the same model and input,
//! with no HTTP, no queue and no async runtime.
//!
//! `concurrency` threads each own a session (`Session::run` takes `&mut
//! self`, so parallelism comes from several sessions, as in Sluice) and call
//! it in a loop. A call is what Sluice's worker does per request: copy the
//! input into an ONNX Runtime value (`sluice_runtime::convert::to_ort`), run
//! the session, copy every output back out (`convert::from_ort`). Sessions
//! are built with Sluice's defaults (one intra-op and one inter-op thread,
//! all graph optimisations, the CPU provider), so the only difference from
//! Sluice's compute is everything around it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use sluice_runtime::OrtRuntime;
use sluice_runtime::convert;
use sluice_tensor::Tensor;

use crate::driver::{Progress, RunResult, Tally};
use crate::recorder::Outcome;
use crate::system::CpuProbe;

/// What to run.
#[derive(Debug, Clone)]
pub struct FloorPlan {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub progress: Option<String>,
}

/// A session built as Sluice builds one by default.
fn session(rt: &OrtRuntime, file: &Path) -> anyhow::Result<Session> {
    let fail = |e: &dyn std::fmt::Display| anyhow!("{}: {e}", file.display());
    Session::builder(rt.environment())
        .map_err(|e| fail(&e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| fail(&e))?
        .with_intra_threads(1)
        .map_err(|e| fail(&e))?
        .with_inter_threads(1)
        .map_err(|e| fail(&e))?
        .commit_from_file(file)
        .map_err(|e| fail(&e))
}

/// One inference: input in, run, every output out.
fn infer(session: &mut Session, inputs: &[(String, Tensor)]) -> Result<(), String> {
    let values = inputs
        .iter()
        .map(|(name, t)| Ok((name.as_str(), convert::to_ort(t)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let outputs = session.run(values).map_err(|e| e.to_string())?;
    for (_, value) in outputs {
        std::hint::black_box(convert::from_ort(&value)?);
    }
    Ok(())
}

/// Runs the floor. `ort_lib` is as `sluice serve --ort-lib` (None: the
/// checkout's `.sluice/ort`).
pub fn run(
    ort_lib: Option<&Path>,
    model_file: &Path,
    input_name: &str,
    tensor: Tensor,
    plan: &FloorPlan,
) -> anyhow::Result<RunResult> {
    anyhow::ensure!(plan.concurrency > 0, "concurrency must be at least 1");
    let rt = OrtRuntime::init(ort_lib).context("loading ONNX Runtime")?;
    let inputs = Arc::new(vec![(input_name.to_string(), tensor)]);
    // Every session is built, and one call made on the first, before the
    // clock starts: loading is not what is measured, and a wrong input
    // name or shape should fail here, not as a run of errors.
    let mut sessions = (0..plan.concurrency)
        .map(|_| session(&rt, model_file))
        .collect::<anyhow::Result<Vec<_>>>()?;
    infer(&mut sessions[0], &inputs)
        .map_err(|e| anyhow!("{} refused the input: {e}", model_file.display()))?;

    let tally = Arc::new(Tally::new(plan.concurrency));
    let start = Instant::now();
    let measure_start = start + plan.warmup;
    let end = measure_start + plan.duration;
    let progress = plan
        .progress
        .as_ref()
        .map(|label| Progress::start(label.clone(), tally.clone(), plan.warmup, plan.duration));
    let threads: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut session)| {
            let (tally, inputs) = (tally.clone(), inputs.clone());
            std::thread::Builder::new()
                .name(format!("floor-{i}"))
                .spawn(move || {
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let outcome = match infer(&mut session, &inputs) {
                            Ok(()) => Outcome::Ok,
                            Err(_) => Outcome::Transport,
                        };
                        tally.record(i, outcome, t0.elapsed(), t0 >= measure_start);
                    }
                })
        })
        .collect::<std::io::Result<_>>()?;

    // This thread reads the CPU at the window's edges. The process is the
    // "server" here, so its own CPU is the cost per call.
    let probe = CpuProbe { server_pid: None };
    std::thread::sleep(measure_start.saturating_duration_since(Instant::now()));
    let cpu_start = probe.read();
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cpu_end = probe.read();
    for t in threads {
        t.join().map_err(|_| anyhow!("a floor thread panicked"))?;
    }
    if let Some(p) = progress {
        p.stop();
    }
    Ok(RunResult {
        recorder: tally.merged(),
        window: plan.duration,
        dropped: 0,
        unfinished: 0,
        schedule_lag: None,
        cpu_start,
        cpu_end,
    })
}
