//! `compare`: Sluice against its floor, its ceiling and its peers, in one
//! invocation, one run after another (never two at once: they share the
//! machine's cores, and a run is only meaningful alone).
//!
//! For each concurrency asked for, in this order:
//!
//! 1. `sluice-json`, `sluice-binary`: a `sluice serve` started from the given
//!    binary on a temporary copy of the model's directory;
//! 2. `hello`: `sluice-loadtest hello` (this binary) as a subprocess, so the
//!    generator and the server are separate processes, as for Sluice;
//! 3. `ort`: ONNX Runtime in-process on the same model and input;
//! 4. each external server (JSON, and binary with `--external-binary`):
//!    `--external NAME=URL` for one already running, `--external-cmd
//!    NAME=COMMAND` for one this command starts (MLServer through
//!    `scripts/mlserver-serve.sh`, say).
//!
//! Every server runs for the whole comparison; each run reads its server's
//! CPU time from /proc at the window's edges (for a server started here;
//! an `--external` URL's process is unknown, so its CPU is not reported).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::driver::{self, Load};
use crate::floor;
use crate::http::{HttpCaller, InferTarget, Server};
use crate::payload::{self, Payload, PayloadKind};
use crate::report::{Mode, Report};
use crate::system::{Machine, round3};
use crate::{CompareArgs, TensorArgs, emit, floor_report, plan};

/// How long a server may take to print its address and become ready.
const STARTUP: Duration = Duration::from_secs(60);

/// The whole comparison, as written to `--report`.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub machine: Machine,
    pub model: ModelInfo,
    pub concurrency: Vec<usize>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub sluice_bin: Option<String>,
    pub sluice_args: Vec<String>,
    /// Every run, in the order they ran.
    pub runs: Vec<Report>,
    /// Throughput ratios at each concurrency.
    pub ratios: Vec<Ratios>,
    /// What Sluice adds to the floor and the ceiling, at concurrency 1 (or
    /// the lowest concurrency run).
    pub overhead: Option<Overhead>,
    /// Anything skipped or failed, in words.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub dir: String,
    pub name: String,
    pub version: u64,
    pub file: String,
}

/// Requests/s of one target over another's, at one concurrency. `None`
/// where either side is missing or had no successful request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratios {
    pub concurrency: usize,
    pub sluice_json_over_hello: Option<f64>,
    pub sluice_binary_over_hello: Option<f64>,
    pub sluice_json_over_ort: Option<f64>,
    /// sluice-json over each external's JSON run (and sluice-binary over its
    /// binary run, as `<name>-binary`).
    pub sluice_over_external: BTreeMap<String, f64>,
}

/// Sluice's own cost: what it adds beyond the HTTP ceiling and the floor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overhead {
    pub concurrency: usize,
    /// Sluice p50 − (hello p50 + ort p50), µs, by payload (json, binary).
    pub p50_us: BTreeMap<String, f64>,
    /// Sluice's server CPU per request − (hello's server CPU per request +
    /// ort's CPU per call), µs, by payload.
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

/// A server process started for the comparison.
struct ServerProcess {
    name: String,
    child: Child,
    pid: u32,
    server: Server,
}

impl ServerProcess {
    /// Starts `command`, learns its URL (given, or read from a `listening
    /// on http://ADDR` line on its stdout), and polls `ready_path` until it
    /// answers 200.
    async fn start(
        name: &str,
        mut command: Command,
        url: Option<String>,
        ready_path: &str,
    ) -> anyhow::Result<Self> {
        command.stdin(Stdio::null()).kill_on_drop(true);
        if url.is_none() {
            command.stdout(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        let pid = child.id().context("the child has no pid")?;
        let url = match url {
            Some(url) => url,
            None => {
                let stdout = child.stdout.take().context("no stdout")?;
                let mut lines = BufReader::new(stdout).lines();
                let url = tokio::time::timeout(STARTUP, async {
                    while let Some(line) = lines.next_line().await? {
                        if let Some(url) = line.strip_prefix("listening on ") {
                            return Ok(url.trim().to_string());
                        }
                    }
                    bail!("{name} exited before printing `listening on`")
                })
                .await
                .with_context(|| format!("{name} printed no address within {STARTUP:?}"))??;
                // Keep reading stdout so the child never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                url
            }
        };
        let server = Server::resolve(&url).await?;
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if let Ok((status, _)) = server.get(ready_path).await
                && status == 200
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}) before it was ready");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{name} was not ready ({ready_path}) within {STARTUP:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("{name}: pid {pid}, {} ready", server.url);
        Ok(ServerProcess {
            name: name.into(),
            child,
            pid,
            server,
        })
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    async fn stop(mut self) {
        // SAFETY: kill(2) with a pid we started and have not reaped.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("{}: did not stop on SIGTERM; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

/// The model's versions in `dir`: subdirectories named by a number that hold
/// a `model.onnx`, ascending.
fn versions(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        if let Some(v) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            && entry.path().join("model.onnx").is_file()
        {
            found.push(v);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Copies a directory tree (files and directories only), so Sluice serves a
/// private copy that no one else's edits can reload mid-run.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Loads one HTTP target closed-loop and returns its report.
async fn http_run(
    name: &str,
    target: &Arc<InferTarget>,
    concurrency: usize,
    args: &CompareArgs,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let response_bytes = target.preflight().await?;
    let load = Load::Closed { concurrency };
    let label = format!("{name} c={concurrency}");
    let plan = plan(load, &args.timing, &label, server_pid);
    let make = {
        let target = target.clone();
        move |_| HttpCaller::new(target.clone())
    };
    let result = driver::drive(&plan, make).await?;
    let kind = match target.payload.kind {
        PayloadKind::Json => "json",
        PayloadKind::Binary => "binary",
    };
    let info = args
        .tensor
        .payload_info(kind, target.payload.body.len(), Some(response_bytes));
    Ok(Report::new(
        name,
        target.url(),
        Mode::from(load),
        args.timing.warmup,
        &result,
        info,
        server_pid,
        None,
    ))
}

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let skip = |what: &str| args.skip.iter().any(|s| s == what);
    let model_dir = args.model_dir.clone();
    let name = match &args.model {
        Some(n) => n.clone(),
        None => model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("--model-dir has no name; give --model")?
            .to_string(),
    };
    let version = match args.version {
        Some(v) => v,
        None => *versions(&model_dir)?
            .last()
            .with_context(|| format!("{} has no <version>/model.onnx", model_dir.display()))?,
    };
    let model_file = model_dir.join(version.to_string()).join("model.onnx");
    anyhow::ensure!(model_file.is_file(), "{} is missing", model_file.display());
    // Address the version only if asked to: otherwise each server serves its
    // default, which for Sluice is the highest version, the one loaded
    // in-process for the floor.
    let url_version = args.version.map(|v| v.to_string());
    let tensor = args.tensor.tensor()?;
    let json = payload::encode(&args.tensor.input_name, tensor.clone(), PayloadKind::Json);
    let binary = payload::encode(&args.tensor.input_name, tensor.clone(), PayloadKind::Binary);
    let mut notes = Vec::new();

    // The servers, started once for every run.
    let repo = tempfile::tempdir()?;
    let sluice = if skip("sluice") {
        None
    } else {
        copy_tree(&model_dir, &repo.path().join(&name))?;
        let mut command = Command::new(&args.sluice_bin);
        command
            .arg("serve")
            .arg("--models")
            .arg(repo.path())
            .args(["--http-addr", "127.0.0.1:0"])
            .args(&args.sluice_arg);
        command.stderr(match &args.sluice_log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::null(),
        });
        let ready = format!("/v2/models/{name}/ready");
        let started = ServerProcess::start("sluice", command, None, &ready)
            .await
            .with_context(|| {
                format!(
                    "starting {} (build it with `cargo build --release -p sluice-cli`; \
                     --sluice-log FILE keeps its log)",
                    args.sluice_bin.display()
                )
            })?;
        Some(started)
    };
    let hello = if skip("hello") {
        None
    } else {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["hello", "--addr", "127.0.0.1:0"])
            .stderr(Stdio::null());
        Some(ServerProcess::start("hello", command, None, "/").await?)
    };
    // Externals: (name, server, PID when we started it).
    let mut externals: Vec<(String, Server, Option<u32>)> = Vec::new();
    for e in &args.external {
        match Server::resolve(&e.url).await {
            Ok(server) => externals.push((e.name.clone(), server, None)),
            Err(err) => notes.push(format!("{}: skipped, {err:#}", e.name)),
        }
    }
    let mut started = Vec::new();
    for e in &args.external_cmd {
        let port = free_port()?;
        let version_dir = model_dir.join(version.to_string());
        let line = expand(&e.command, &version_dir, &model_dir, &name, port);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("exec {line}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("/v2/models/{name}/ready");
        match ServerProcess::start(&e.name, command, Some(url), &ready).await {
            Ok(p) => {
                externals.push((e.name.clone(), p.server.clone(), Some(p.pid)));
                started.push(p);
            }
            Err(err) => notes.push(format!(
                "{}: skipped, `{line}` did not start: {err:#} (run it by hand to see why)",
                e.name
            )),
        }
    }

    let mut runs = Vec::new();
    let outcome = async {
        for &c in &args.concurrency {
            if let Some(s) = &sluice {
                for (run_name, body) in [("sluice-json", &json), ("sluice-binary", &binary)] {
                    let target = target(&s.server, &name, url_version.as_deref(), body)?;
                    runs.push(http_run(run_name, &target, c, &args, Some(s.pid)).await?);
                    finish(&runs, args.pause).await;
                }
            }
            if let Some(h) = &hello {
                let target = target(&h.server, &name, None, &json)?;
                runs.push(http_run("hello", &target, c, &args, Some(h.pid)).await?);
                finish(&runs, args.pause).await;
            }
            if !skip("ort") {
                runs.push(ort_run(&args, &model_file, tensor.clone(), c).await?);
                finish(&runs, args.pause).await;
            }
            for (ext, server, pid) in &externals {
                let mut kinds = vec![(ext.clone(), &json)];
                if args.external_binary {
                    kinds.push((format!("{ext}-binary"), &binary));
                }
                for (run_name, body) in kinds {
                    let target = target(server, &name, url_version.as_deref(), body)?;
                    match http_run(&run_name, &target, c, &args, *pid).await {
                        Ok(report) => {
                            runs.push(report);
                            finish(&runs, args.pause).await;
                        }
                        Err(err) => notes.push(format!("{run_name} c={c}: {err:#}")),
                    }
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    for server in [sluice, hello].into_iter().flatten().chain(started) {
        server.stop().await;
    }
    outcome?;

    let ratios: Vec<Ratios> = args.concurrency.iter().map(|&c| ratios(&runs, c)).collect();
    let overhead_at = if args.concurrency.contains(&1) {
        Some(1)
    } else {
        args.concurrency.iter().copied().min()
    };
    let comparison = Comparison {
        machine,
        model: ModelInfo {
            dir: model_dir.display().to_string(),
            name: name.clone(),
            version,
            file: model_file.display().to_string(),
        },
        concurrency: args.concurrency.clone(),
        duration_s: args.timing.duration.as_secs_f64(),
        warmup_s: args.timing.warmup.as_secs_f64(),
        sluice_bin: (!skip("sluice")).then(|| args.sluice_bin.display().to_string()),
        sluice_args: args.sluice_arg.clone(),
        overhead: overhead_at.and_then(|c| overhead(&runs, c)),
        runs,
        ratios,
        notes,
    };
    print!("{}", table(&comparison, &args.tensor));
    match &args.report {
        Some(path) => {
            std::fs::write(path, serde_json::to_string_pretty(&comparison)? + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("report: {}", path.display());
            Ok(())
        }
        None => emit(&comparison, None),
    }
}

/// A port that was free a moment ago, for a server that cannot bind port 0
/// and tell us which port it got.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `--external-cmd`'s placeholders, replaced.
fn expand(command: &str, version_dir: &Path, model_dir: &Path, model: &str, port: u16) -> String {
    command
        .replace("{version_dir}", &version_dir.display().to_string())
        .replace("{model_dir}", &model_dir.display().to_string())
        .replace("{model}", model)
        .replace("{port}", &port.to_string())
}

fn target(
    server: &Server,
    model: &str,
    version: Option<&str>,
    payload: &Payload,
) -> anyhow::Result<Arc<InferTarget>> {
    InferTarget::new(server.clone(), model, version, payload.clone())
}

/// Prints the run's summary line, then pauses before the next run.
async fn finish(runs: &[Report], pause: Duration) {
    if let Some(last) = runs.last() {
        eprintln!("{}", last.line());
    }
    tokio::time::sleep(pause).await;
}

async fn ort_run(
    args: &CompareArgs,
    model_file: &Path,
    tensor: sluice_tensor::Tensor,
    concurrency: usize,
) -> anyhow::Result<Report> {
    let plan = floor::FloorPlan {
        concurrency,
        warmup: args.timing.warmup,
        duration: args.timing.duration,
        progress: (!args.timing.quiet).then(|| format!("ort c={concurrency}")),
    };
    let (ort_lib, file, input) = (
        args.ort_lib.clone(),
        model_file.to_path_buf(),
        args.tensor.input_name.clone(),
    );
    let run_plan = plan.clone();
    // Blocking threads; off the generator's runtime so its tasks (the
    // servers' stdout readers) keep running.
    let result = tokio::task::spawn_blocking(move || {
        floor::run(ort_lib.as_deref(), &file, &input, tensor, &run_plan)
    })
    .await??;
    Ok(floor_report(
        "ort",
        model_file,
        &args.tensor,
        &plan,
        &result,
        None,
    ))
}

fn find<'a>(runs: &'a [Report], name: &str, concurrency: usize) -> Option<&'a Report> {
    runs.iter().find(|r| {
        r.name == name && matches!(r.mode, Mode::Closed { concurrency: c } if c == concurrency)
    })
}

/// `a`'s requests/s over `b`'s, when both ran and `b` served anything.
fn rps_ratio(runs: &[Report], a: &str, b: &str, concurrency: usize) -> Option<f64> {
    let a = find(runs, a, concurrency)?.requests_per_s;
    let b = find(runs, b, concurrency)?.requests_per_s;
    (b > 0.0).then(|| round3(a / b))
}

pub fn ratios(runs: &[Report], concurrency: usize) -> Ratios {
    let mut sluice_over_external = BTreeMap::new();
    for r in runs {
        let is_ours = ["sluice-json", "sluice-binary", "hello", "ort"].contains(&r.name.as_str());
        if is_ours || !matches!(r.mode, Mode::Closed { concurrency: c } if c == concurrency) {
            continue;
        }
        let ours = if r.name.ends_with("-binary") {
            "sluice-binary"
        } else {
            "sluice-json"
        };
        if let Some(ratio) = rps_ratio(runs, ours, &r.name, concurrency) {
            sluice_over_external.insert(r.name.clone(), ratio);
        }
    }
    Ratios {
        concurrency,
        sluice_json_over_hello: rps_ratio(runs, "sluice-json", "hello", concurrency),
        sluice_binary_over_hello: rps_ratio(runs, "sluice-binary", "hello", concurrency),
        sluice_json_over_ort: rps_ratio(runs, "sluice-json", "ort", concurrency),
        sluice_over_external,
    }
}

/// Sluice's latency and CPU beyond hello + ort at `concurrency`; `None` if
/// hello or ort did not run there.
pub fn overhead(runs: &[Report], concurrency: usize) -> Option<Overhead> {
    let hello = find(runs, "hello", concurrency)?;
    let ort = find(runs, "ort", concurrency)?;
    let base_p50 = (hello.latency_us?.p50 + ort.latency_us?.p50) as f64;
    let base_cpu = hello.server_cpu?.us_per_request? + ort.server_cpu?.us_per_request?;
    let mut p50_us = BTreeMap::new();
    let mut cpu_us_per_request = BTreeMap::new();
    for (key, name) in [("json", "sluice-json"), ("binary", "sluice-binary")] {
        let Some(s) = find(runs, name, concurrency) else {
            continue;
        };
        if let Some(l) = s.latency_us {
            p50_us.insert(key.to_string(), round3(l.p50 as f64 - base_p50));
        }
        if let Some(cpu) = s.server_cpu.and_then(|c| c.us_per_request) {
            cpu_us_per_request.insert(key.to_string(), round3(cpu - base_cpu));
        }
    }
    Some(Overhead {
        concurrency,
        p50_us,
        cpu_us_per_request,
    })
}

/// The side-by-side table and the ratios, for stdout.
fn table(c: &Comparison, tensor: &TensorArgs) -> String {
    use std::fmt::Write;
    let us = |v: Option<u64>| v.map_or("-".into(), crate::recorder::human_us);
    let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} v{} input {} {:?} {}, {}s per run after {}s warm-up; {} CPUs ({})",
        c.model.name,
        c.model.version,
        tensor.input_name,
        tensor.shape.0,
        tensor.datatype,
        c.duration_s,
        c.warmup_s,
        c.machine.nproc,
        c.machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
    );
    for &conc in &c.concurrency {
        let _ = writeln!(
            out,
            "\nconcurrency {conc}\n{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>12} {:>7} {:>13} {:>8}",
            "target",
            "req/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "errors",
            "srv µs/req",
            "srv cpu",
            "gen µs/req",
            "gen cpu"
        );
        for r in c
            .runs
            .iter()
            .filter(|r| matches!(r.mode, Mode::Closed { concurrency: k } if k == conc))
        {
            let l = r.latency_us;
            let _ = writeln!(
                out,
                "{:<16} {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>12} {:>7} {:>13} {:>8}",
                r.name,
                r.requests_per_s,
                us(l.map(|l| l.p50)),
                us(l.map(|l| l.p90)),
                us(l.map(|l| l.p99)),
                us(l.map(|l| l.p99_9)),
                us(l.map(|l| l.max)),
                r.errors,
                num(r.server_cpu.and_then(|s| s.us_per_request)),
                r.server_cpu
                    .map_or("-".into(), |s| format!("{:.2}", s.cores)),
                num(r.harness_cpu.us_per_request),
                format!("{:.2}", r.harness_cpu.cores),
            );
        }
        if let Some(r) = c.ratios.iter().find(|r| r.concurrency == conc) {
            let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
            let _ = write!(
                out,
                "requests/s ratios: sluice-json/hello {}  sluice-binary/hello {}  sluice-json/ort {}",
                ratio(r.sluice_json_over_hello),
                ratio(r.sluice_binary_over_hello),
                ratio(r.sluice_json_over_ort),
            );
            for (name, v) in &r.sluice_over_external {
                let _ = write!(out, "  sluice/{name} {v:.3}");
            }
            out.push('\n');
        }
    }
    if let Some(o) = &c.overhead {
        let _ = writeln!(
            out,
            "\nSluice overhead at concurrency {} (beyond hello + ort):",
            o.concurrency
        );
        for (kind, v) in &o.p50_us {
            let _ = writeln!(out, "  {kind:<6} p50 {v:+.1} µs");
        }
        for (kind, v) in &o.cpu_us_per_request {
            let _ = writeln!(out, "  {kind:<6} server CPU {v:+.1} µs per request");
        }
    }
    for note in &c.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::RunResult;
    use crate::recorder::{Outcome, Recorder};
    use crate::report::PayloadInfo;
    use crate::system::CpuReading;

    /// A fake closed-loop report: `n` requests of `p50_us` each in 1 s, the
    /// server spending `cpu_us` per request.
    fn report(name: &str, concurrency: usize, n: u64, p50_us: u64, cpu_us: u64) -> Report {
        let mut recorder = Recorder::default();
        for _ in 0..n {
            recorder.record(Outcome::Ok, Duration::from_micros(p50_us));
        }
        let cpu = |us: u64| CpuReading {
            harness: Duration::ZERO,
            server: Some(Duration::from_micros(us)),
        };
        let result = RunResult {
            recorder,
            window: Duration::from_secs(1),
            dropped: 0,
            unfinished: 0,
            schedule_lag: None,
            cpu_start: cpu(0),
            cpu_end: cpu(cpu_us * n),
        };
        let info = PayloadInfo {
            kind: "json".into(),
            input: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            request_bytes: 1,
            response_bytes: None,
        };
        Report::new(
            name,
            "t".into(),
            Mode::Closed { concurrency },
            Duration::ZERO,
            &result,
            info,
            None,
            None,
        )
    }

    fn runs() -> Vec<Report> {
        vec![
            report("sluice-json", 64, 8000, 8000, 100),
            report("sluice-binary", 64, 10000, 6400, 80),
            report("hello", 64, 40000, 1600, 20),
            report("ort", 64, 200000, 50, 10),
            report("mlserver", 64, 1000, 64000, 900),
            report("sluice-json", 1, 2000, 500, 120),
            report("sluice-binary", 1, 2500, 400, 100),
            report("hello", 1, 10000, 100, 30),
            report("ort", 1, 50000, 20, 12),
        ]
    }

    #[test]
    fn ratios_divide_requests_per_second_at_the_same_concurrency() {
        let r = ratios(&runs(), 64);
        assert_eq!(r.sluice_json_over_hello, Some(0.2));
        assert_eq!(r.sluice_binary_over_hello, Some(0.25));
        assert_eq!(r.sluice_json_over_ort, Some(0.04));
        assert_eq!(r.sluice_over_external["mlserver"], 8.0);
        let r = ratios(&runs(), 1);
        assert_eq!(r.sluice_json_over_hello, Some(0.2));
        assert!(r.sluice_over_external.is_empty());
        assert_eq!(ratios(&runs(), 7).sluice_json_over_hello, None);
    }

    #[test]
    fn overhead_subtracts_the_ceiling_and_the_floor() {
        let o = overhead(&runs(), 1).unwrap();
        // p50: 500 − (100 + 20); CPU: 120 − (30 + 12).
        assert_eq!(o.p50_us["json"], 380.0);
        assert_eq!(o.p50_us["binary"], 280.0);
        assert_eq!(o.cpu_us_per_request["json"], 78.0);
        assert_eq!(o.cpu_us_per_request["binary"], 58.0);
        let mut without_ort = runs();
        without_ort.retain(|r| r.name != "ort");
        assert!(overhead(&without_ort, 1).is_none());
    }

    #[test]
    fn the_table_names_every_run_and_ratio() {
        let runs = runs();
        let comparison = Comparison {
            machine: Machine::detect(),
            model: ModelInfo {
                dir: "models/iris".into(),
                name: "iris".into(),
                version: 1,
                file: "models/iris/1/model.onnx".into(),
            },
            concurrency: vec![64, 1],
            duration_s: 5.0,
            warmup_s: 2.0,
            sluice_bin: None,
            sluice_args: vec![],
            ratios: vec![ratios(&runs, 64), ratios(&runs, 1)],
            overhead: overhead(&runs, 1),
            runs,
            notes: vec!["x: skipped".into()],
        };
        let tensor = crate::TensorArgs {
            input_name: "input".into(),
            shape: crate::Shape(vec![1, 4]),
            datatype: sluice_tensor::DataType::Fp32,
            seed: 1,
        };
        let text = table(&comparison, &tensor);
        for needle in [
            "concurrency 64",
            "concurrency 1",
            "sluice-binary",
            "mlserver",
            "sluice-json/hello 0.200",
            "sluice/mlserver 8.000",
            "json   p50 +380.0 µs",
            "note: x: skipped",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        let json = serde_json::to_value(&comparison).unwrap();
        assert_eq!(json["runs"].as_array().unwrap().len(), 9);
        assert_eq!(json["overhead"]["cpu_us_per_request"]["json"], 78.0);
        assert_eq!(json["ratios"][0]["sluice_over_external"]["mlserver"], 8.0);
    }

    #[test]
    fn external_commands_get_their_placeholders() {
        let line = expand(
            "scripts/mlserver-serve.sh {version_dir} {port} # {model} in {model_dir}",
            Path::new("models/mlp/1"),
            Path::new("models/mlp"),
            "mlp",
            8090,
        );
        assert_eq!(
            line,
            "scripts/mlserver-serve.sh models/mlp/1 8090 # mlp in models/mlp"
        );
        assert_ne!(free_port().unwrap(), 0);
    }

    #[test]
    fn versions_are_numbered_directories_with_a_model() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["1", "3", "10"] {
            std::fs::create_dir_all(dir.path().join(v)).unwrap();
            std::fs::write(dir.path().join(v).join("model.onnx"), b"x").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("7")).unwrap(); // no model.onnx
        std::fs::create_dir_all(dir.path().join("notes")).unwrap();
        assert_eq!(versions(dir.path()).unwrap(), vec![1, 3, 10]);
        let copy = tempfile::tempdir().unwrap();
        copy_tree(dir.path(), &copy.path().join("m")).unwrap();
        assert!(copy.path().join("m/10/model.onnx").is_file());
    }
}
