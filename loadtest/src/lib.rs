//! `sluice-loadtest`: a load generator for Open Inference Protocol servers,
//! and a harness that compares Sluice with its floor, its ceiling and its
//! peers in one invocation.
//!
//! - `run`: load one server, closed loop (fixed concurrency) or open loop
//!   (fixed arrival rate, latency corrected for coordinated omission).
//! - `hello`: the HTTP ceiling, a hyper server that answers a fixed body.
//! - `ort`: the floor, ONNX Runtime called in-process with no HTTP.
//! - `compare`: Sluice, hello, ort and any external servers, one after the
//!   other, with the ratios side by side.
//!
//! Modules: [`payload`] builds the request body, [`schedule`] is the open
//! loop's arithmetic, [`driver`] runs the load over a [`driver::Caller`],
//! [`http`] is the HTTP caller, [`recorder`] the histograms, [`system`] the
//! machine and CPU readings, [`report`] the JSON, [`hello`], [`floor`] and
//! [`compare`] the three other commands.

pub mod compare;
pub mod driver;
pub mod floor;
pub mod hello;
pub mod http;
pub mod payload;
pub mod recorder;
pub mod report;
pub mod schedule;
pub mod system;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use sluice_tensor::DataType;

use crate::driver::{Load, Plan};
use crate::payload::{PayloadKind, parse_datatype, parse_shape};
use crate::report::{Mode, PayloadInfo, Report};
use crate::system::{CpuProbe, Machine};

/// Load generator and comparison harness for Open Inference Protocol
/// (KServe v2) servers. Progress goes to stderr once a second; reports are
/// JSON on stdout (and in --report).
#[derive(Debug, Parser)]
#[command(name = "sluice-loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load one server's infer endpoint and report throughput and latency
    Run(RunArgs),
    /// Serve a fixed OIP-shaped JSON body to every request: the HTTP ceiling
    Hello(HelloArgs),
    /// Call ONNX Runtime in-process on the model, no HTTP: the floor
    Ort(OrtArgs),
    /// Run Sluice, hello, ort and external servers one after another on the
    /// same model and load, and print the ratios
    Compare(CompareArgs),
}

/// The input tensor every request carries.
#[derive(Debug, Clone, Args)]
pub struct TensorArgs {
    /// Name of the model's input
    #[arg(long, default_value = "input")]
    pub input_name: String,
    /// Shape of the input, every dimension concrete: 1,16 is one row of 16
    #[arg(long, default_value = "1,16", value_parser = parse_shape_arg)]
    pub shape: Shape,
    /// Datatype of the input (FP32, FP64, INT64, BOOL, BYTES, ...)
    #[arg(long, default_value = "FP32", value_parser = parse_datatype)]
    pub datatype: DataType,
    /// Seed of the random input data; the same seed sends the same bytes
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// A parsed `--shape` (a newtype, so clap takes it as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(pub Vec<i64>);

fn parse_shape_arg(text: &str) -> anyhow::Result<Shape> {
    parse_shape(text).map(Shape)
}

impl TensorArgs {
    fn tensor(&self) -> anyhow::Result<sluice_tensor::Tensor> {
        payload::random_tensor(self.datatype, &self.shape.0, self.seed)
    }

    fn payload_info(
        &self,
        kind: &str,
        request_bytes: usize,
        response: Option<usize>,
    ) -> PayloadInfo {
        PayloadInfo {
            kind: kind.into(),
            input: self.input_name.clone(),
            datatype: self.datatype.as_str().into(),
            shape: self.shape.0.clone(),
            request_bytes,
            response_bytes: response,
        }
    }
}

/// How long to run, and how to behave while running.
#[derive(Debug, Clone, Args)]
pub struct TimingArgs {
    /// Length of the measured window (e.g. 10s, 500ms, 1m; a bare number is seconds)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the window, not recorded: connections opened, caches warm
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// A request unanswered after this long counts as a timeout error
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// No progress line on stderr
    #[arg(long)]
    pub quiet: bool,
    /// Tokio worker threads of the generator. One leaves the other cores to
    /// the server it shares the machine with; if the report's harness_cpu
    /// cores is near this number, the generator is the bottleneck: raise it
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("load").required(true).args(["concurrency", "rate"])))]
pub struct RunArgs {
    /// Base URL of the server (http://HOST:PORT)
    #[arg(long)]
    pub url: String,
    /// Model name, as in /v2/models/{model}/infer
    #[arg(long)]
    pub model: String,
    /// Model version to address (/versions/{version}); default: the server's choice
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub tensor: TensorArgs,
    /// Send the input in Triton's binary tensor extension (and ask for binary
    /// outputs) instead of JSON
    #[arg(long)]
    pub binary: bool,
    /// Closed loop: this many connections, each with one request in flight
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Open loop: this many requests per second on a fixed schedule, latency
    /// measured from each request's intended send time
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: most requests outstanding at once (one connection each)
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Open loop: most due requests waiting for a free connection; due
    /// requests beyond it are dropped and counted as errors
    #[arg(long, default_value_t = 10_000)]
    pub max_backlog: usize,
    /// PID of the server process, to report its CPU time per request (from /proc)
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Name of this run in the report and progress line
    #[arg(long, default_value = "run")]
    pub name: String,
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Also write the JSON report to this file
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct HelloArgs {
    /// Address to listen on; port 0 picks a free port (printed as `listening on http://ADDR`)
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: std::net::SocketAddr,
    /// Tokio worker threads [default: one per CPU]
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct OrtArgs {
    /// The ONNX model file
    #[arg(long)]
    pub model_file: PathBuf,
    #[command(flatten)]
    pub tensor: TensorArgs,
    /// Threads, each with its own session, calling it in a loop
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// The ONNX Runtime library [default: .sluice/ort/libonnxruntime.so of the checkout]
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Also write the JSON report to this file
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The model's directory in a Triton-layout repository (DIR/<version>/model.onnx)
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Model name [default: the directory's name]
    #[arg(long)]
    pub model: Option<String>,
    /// Version to load in-process and to address [default: the highest in --model-dir]
    #[arg(long)]
    pub version: Option<u64>,
    #[command(flatten)]
    pub tensor: TensorArgs,
    /// Concurrency of every run; repeat or comma-separate to run each set at
    /// several (64,1). Overheads are computed at 1 if it is among them
    #[arg(long, default_value = "64", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// The Sluice binary to start (build it with `cargo build --release -p sluice-cli`)
    #[arg(long, default_value = "target/release/sluice")]
    pub sluice_bin: PathBuf,
    /// Extra argument for `sluice serve` (repeatable), e.g. --sluice-arg=--log=warn
    #[arg(long, allow_hyphen_values = true)]
    pub sluice_arg: Vec<String>,
    /// Where Sluice's stderr (its log) goes [default: discarded]
    #[arg(long)]
    pub sluice_log: Option<PathBuf>,
    /// A peer OIP server already running, as NAME=URL (repeatable), e.g.
    /// mlserver=http://127.0.0.1:8080; loaded with JSON requests
    #[arg(long, value_parser = parse_external)]
    pub external: Vec<External>,
    /// A peer OIP server to start for the comparison, as NAME=COMMAND
    /// (repeatable). The command runs under `sh -c "exec COMMAND"` after
    /// `{version_dir}` (DIR/<version>), `{model_dir}`, `{model}` and `{port}`
    /// (a free port) are replaced; it must serve on 127.0.0.1:{port}, is
    /// ready when /v2/models/{model}/ready answers 200, and gets SIGTERM at
    /// the end. Its PID's CPU is measured, so it should exec the server.
    /// E.g. mlserver='scripts/mlserver-serve.sh {version_dir} {port}'
    #[arg(long, value_parser = parse_external_cmd)]
    pub external_cmd: Vec<ExternalCmd>,
    /// Also load the external servers with binary requests
    #[arg(long)]
    pub external_binary: bool,
    /// Targets to skip (sluice, hello, ort; comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Idle time between runs, so one run's tail does not overlap the next
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub pause: Duration,
    /// The ONNX Runtime library for the in-process floor [default: .sluice/ort/libonnxruntime.so of the checkout]
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    #[command(flatten)]
    pub timing: TimingArgs,
    /// Also write the JSON report to this file
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// `--external NAME=URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    pub name: String,
    pub url: String,
}

/// `--external-cmd NAME=COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalCmd {
    pub name: String,
    pub command: String,
}

fn parse_external_cmd(text: &str) -> anyhow::Result<ExternalCmd> {
    let (name, command) = text.split_once('=').context(
        "expected NAME=COMMAND, e.g. mlserver='scripts/mlserver-serve.sh {version_dir} {port}'",
    )?;
    anyhow::ensure!(
        !name.is_empty() && !command.trim().is_empty(),
        "expected NAME=COMMAND"
    );
    Ok(ExternalCmd {
        name: name.into(),
        command: command.into(),
    })
}

fn parse_external(text: &str) -> anyhow::Result<External> {
    let (name, url) = text
        .split_once('=')
        .context("expected NAME=URL, e.g. mlserver=http://127.0.0.1:8080")?;
    anyhow::ensure!(!name.is_empty() && !url.is_empty(), "expected NAME=URL");
    Ok(External {
        name: name.into(),
        url: url.into(),
    })
}

/// Parses `10s`, `500ms`, `2m`, `1.5s`, `250us`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration (e.g. 10s, 500ms)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        other => anyhow::bail!("{text:?}: unknown unit {other:?} (s, ms, us, m)"),
    };
    Duration::try_from_secs_f64(seconds).with_context(|| format!("{text:?} is out of range"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => runtime(args.timing.threads).and_then(|rt| rt.block_on(run(args))),
        Command::Hello(args) => hello_main(args),
        Command::Ort(args) => ort_main(args),
        Command::Compare(args) => {
            runtime(args.timing.threads).and_then(|rt| rt.block_on(compare::run(args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The generator's runtime: one thread is a current-thread runtime (no
/// work-stealing machinery at all), more is a multi-thread one.
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(rt)
}

/// Prints `report` as JSON on stdout and writes it to `path` if given.
pub fn emit<T: Serialize>(report: &T, path: Option<&Path>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if let Some(path) = path {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}")?;
    Ok(())
}

/// The plan of a closed-loop run from the command line's timing options.
fn plan(load: Load, timing: &TimingArgs, label: &str, server_pid: Option<u32>) -> Plan {
    Plan {
        load,
        warmup: timing.warmup,
        duration: timing.duration,
        timeout: timing.timeout,
        progress: (!timing.quiet).then(|| label.to_string()),
        probe: CpuProbe { server_pid },
        pacing: driver::Pacing::Thread,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let kind = if args.binary {
        PayloadKind::Binary
    } else {
        PayloadKind::Json
    };
    let payload = payload::encode(&args.tensor.input_name, args.tensor.tensor()?, kind);
    let server = http::Server::resolve(&args.url).await?;
    let target = http::InferTarget::new(server, &args.model, args.version.as_deref(), payload)?;
    let response_bytes = target.preflight().await?;
    let load = match (args.concurrency, args.rate) {
        (Some(concurrency), None) => Load::Closed { concurrency },
        (None, Some(rate)) => Load::Open {
            rate,
            max_in_flight: args.max_in_flight,
            max_backlog: args.max_backlog,
        },
        _ => anyhow::bail!("give exactly one of --concurrency and --rate"),
    };
    let plan = plan(load, &args.timing, &args.name, args.server_pid);
    let result = {
        let target = target.clone();
        driver::drive(&plan, move |_| http::HttpCaller::new(target.clone())).await?
    };
    let kind_name = if args.binary { "binary" } else { "json" };
    let report = Report::new(
        &args.name,
        target.url(),
        Mode::from(load),
        args.timing.warmup,
        &result,
        args.tensor
            .payload_info(kind_name, target.payload.body.len(), Some(response_bytes)),
        args.server_pid,
        Some(machine),
    );
    eprintln!("{}", report.line());
    emit(&report, args.report.as_deref())
}

fn hello_main(args: HelloArgs) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n);
    }
    let rt = builder.enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        // `compare` (and scripts) read this line to find the port.
        println!("listening on http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        hello::serve(listener, shutdown_signal()).await;
        Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn ort_main(args: OrtArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let name = "ort";
    let plan = floor::FloorPlan {
        concurrency: args.concurrency,
        warmup: args.timing.warmup,
        duration: args.timing.duration,
        progress: (!args.timing.quiet).then(|| name.to_string()),
    };
    let result = floor::run(
        args.ort_lib.as_deref(),
        &args.model_file,
        &args.tensor.input_name,
        args.tensor.tensor()?,
        &plan,
    )?;
    let report = floor_report(
        name,
        &args.model_file,
        &args.tensor,
        &plan,
        &result,
        Some(machine),
    );
    eprintln!("{}", report.line());
    emit(&report, args.report.as_deref())
}

/// The report of an in-process run. The process is the server here, so its
/// own CPU is reported as the server's too (that is ONNX Runtime's cost per
/// call, which `compare` subtracts).
fn floor_report(
    name: &str,
    model_file: &Path,
    tensor: &TensorArgs,
    plan: &floor::FloorPlan,
    result: &driver::RunResult,
    machine: Option<Machine>,
) -> Report {
    let mut report = Report::new(
        name,
        format!("ort:{}", model_file.display()),
        Mode::Closed {
            concurrency: plan.concurrency,
        },
        plan.warmup,
        result,
        tensor.payload_info("in-process", 0, None),
        Some(std::process::id()),
        machine,
    );
    report.server_cpu = Some(report.harness_cpu);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn run_needs_exactly_one_load_shape() {
        let base = [
            "sluice-loadtest",
            "run",
            "--url",
            "http://127.0.0.1:1",
            "--model",
            "m",
        ];
        assert!(Cli::try_parse_from(base).is_err());
        assert!(Cli::try_parse_from(base.iter().chain(&["--concurrency", "4"])).is_ok());
        assert!(Cli::try_parse_from(base.iter().chain(&["--rate", "100"])).is_ok());
        assert!(
            Cli::try_parse_from(base.iter().chain(&["--rate", "100", "--concurrency", "4"]))
                .is_err()
        );
    }

    #[test]
    fn compare_takes_several_concurrencies_and_externals() {
        let cli = Cli::try_parse_from([
            "sluice-loadtest",
            "compare",
            "--model-dir",
            "models/mlp",
            "--concurrency",
            "64,1",
            "--external",
            "mlserver=http://127.0.0.1:8080",
            "--sluice-arg=--log=warn",
            "--external-cmd",
            "mlserver=scripts/mlserver-serve.sh {version_dir} {port}",
        ])
        .unwrap();
        let Command::Compare(args) = cli.command else {
            panic!("compare")
        };
        assert_eq!(args.concurrency, vec![64, 1]);
        assert_eq!(args.external[0].name, "mlserver");
        assert_eq!(args.sluice_arg, vec!["--log=warn"]);
        assert_eq!(args.tensor.shape, Shape(vec![1, 16]));
        assert!(parse_external("no-equals-sign").is_err());
        assert_eq!(args.external_cmd[0].name, "mlserver");
        assert_eq!(
            args.external_cmd[0].command,
            "scripts/mlserver-serve.sh {version_dir} {port}"
        );
    }
}
