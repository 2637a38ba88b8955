//! The JSON report of one run, and the numbers derived from a [`RunResult`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::driver::{Load, RunResult};
use crate::recorder::LatencySummary;
use crate::system::{CpuUse, Machine, round3};

/// How the load was generated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Mode {
    /// A fixed number of requests in flight.
    Closed { concurrency: usize },
    /// A fixed arrival rate (requests/s), latency from the intended time.
    Open {
        rate: f64,
        max_in_flight: usize,
        max_backlog: usize,
    },
}

impl From<Load> for Mode {
    fn from(load: Load) -> Mode {
        match load {
            Load::Closed { concurrency } => Mode::Closed { concurrency },
            Load::Open {
                rate,
                max_in_flight,
                max_backlog,
            } => Mode::Open {
                rate,
                max_in_flight,
                max_backlog,
            },
        }
    }
}

/// What was sent.
#[derive(Debug, Clone, Serialize)]
pub struct PayloadInfo {
    /// `json`, `binary`, or `in-process` (the ORT floor: no wire format).
    pub kind: String,
    pub input: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    /// Request body size in bytes (0 in-process).
    pub request_bytes: usize,
    /// Size of the preflight request's response body, when there was one.
    pub response_bytes: Option<usize>,
}

/// Why requests failed, by kind. Every field counts requests of the
/// measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Errors {
    /// Answers other than 200, by status code.
    pub status: BTreeMap<String, u64>,
    /// Connection refused or reset, malformed responses, in-process errors.
    pub transport: u64,
    /// No answer within the request timeout.
    pub timeouts: u64,
    /// Open loop: due but never sent, the backlog being full.
    pub dropped: u64,
    /// Open loop: sent or queued but not answered when the run stopped
    /// waiting.
    pub unfinished: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.status.values().sum::<u64>()
            + self.transport
            + self.timeouts
            + self.dropped
            + self.unfinished
    }
}

/// One run, as written to the JSON report and summarised on stdout.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// A short name (`sluice-json`, `hello`, `ort`, or the external's name).
    pub name: String,
    /// What was loaded: the infer URL, or `ort:<model file>`.
    pub target: String,
    #[serde(flatten)]
    pub mode: Mode,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Requests completed in the window, successful or not.
    pub requests: u64,
    /// Successful requests per second of the window (failures excluded, so
    /// a server answering 429 quickly does not look fast).
    pub requests_per_s: f64,
    /// Latency of successful requests, µs. `null` when none succeeded.
    pub latency_us: Option<LatencySummary>,
    /// Open loop: how late the generator issued requests relative to their
    /// intended times, µs (its own lateness, included in `latency_us`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_lag_us: Option<LatencySummary>,
    /// All failures: `error_detail`'s counts summed.
    pub errors: u64,
    pub error_detail: Errors,
    pub payload: PayloadInfo,
    /// This process's CPU over the window. For the in-process floor this is
    /// ONNX Runtime's cost per call.
    pub harness_cpu: CpuUse,
    /// The server process's CPU over the window, when its PID is known.
    pub server_cpu: Option<CpuUse>,
    pub server_pid: Option<u32>,
    /// Omitted inside a comparison, whose report names the machine once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        target: String,
        mode: Mode,
        warmup: std::time::Duration,
        result: &RunResult,
        payload: PayloadInfo,
        server_pid: Option<u32>,
        machine: Option<Machine>,
    ) -> Report {
        let r = &result.recorder;
        let error_detail = Errors {
            status: r.status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            transport: r.transport,
            timeouts: r.timeouts,
            dropped: result.dropped,
            unfinished: result.unfinished,
        };
        let window = result.window.as_secs_f64();
        let requests = r.completed();
        let harness_cpu = CpuUse::between(
            result.cpu_start.harness,
            result.cpu_end.harness,
            result.window,
            requests,
        );
        let server_cpu = match (result.cpu_start.server, result.cpu_end.server) {
            (Some(a), Some(b)) => Some(CpuUse::between(a, b, result.window, requests)),
            _ => None,
        };
        Report {
            name: name.to_string(),
            target,
            mode,
            duration_s: round3(window),
            warmup_s: round3(warmup.as_secs_f64()),
            requests,
            requests_per_s: round3(r.ok as f64 / window.max(1e-9)),
            latency_us: r.summary(),
            schedule_lag_us: result.schedule_lag,
            errors: error_detail.total(),
            error_detail,
            payload,
            harness_cpu,
            server_cpu,
            server_pid,
            machine,
        }
    }

    /// One line for humans, after a run.
    pub fn line(&self) -> String {
        let lat = self
            .latency_us
            .map_or("no successful requests".into(), |l| {
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                    crate::recorder::human_us(l.p50),
                    crate::recorder::human_us(l.p90),
                    crate::recorder::human_us(l.p99),
                    crate::recorder::human_us(l.p99_9),
                    crate::recorder::human_us(l.max)
                )
            });
        format!(
            "{}: {:.0} req/s  {lat}  errors {}",
            self.name, self.requests_per_s, self.errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{Outcome, Recorder};
    use crate::system::CpuReading;
    use std::time::Duration;

    fn result() -> RunResult {
        let mut recorder = Recorder::default();
        for _ in 0..1000 {
            recorder.record(Outcome::Ok, Duration::from_micros(250));
        }
        recorder.record(Outcome::Status(503), Duration::ZERO);
        recorder.record(Outcome::Transport, Duration::ZERO);
        RunResult {
            recorder,
            window: Duration::from_secs(2),
            dropped: 3,
            unfinished: 1,
            schedule_lag: None,
            cpu_start: CpuReading {
                harness: Duration::from_millis(100),
                server: Some(Duration::from_secs(1)),
            },
            cpu_end: CpuReading {
                harness: Duration::from_millis(600),
                server: Some(Duration::from_secs(2)),
            },
        }
    }

    fn payload() -> PayloadInfo {
        PayloadInfo {
            kind: "json".into(),
            input: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 16],
            request_bytes: 250,
            response_bytes: Some(180),
        }
    }

    #[test]
    fn the_report_has_the_documented_shape() {
        let report = Report::new(
            "sluice-json",
            "http://127.0.0.1:1/v2/models/m/infer".into(),
            Mode::Closed { concurrency: 64 },
            Duration::from_secs(1),
            &result(),
            payload(),
            Some(42),
            Some(Machine::detect()),
        );
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "name",
            "target",
            "mode",
            "concurrency",
            "duration_s",
            "warmup_s",
            "requests",
            "requests_per_s",
            "latency_us",
            "errors",
            "error_detail",
            "payload",
            "harness_cpu",
            "server_cpu",
            "server_pid",
            "machine",
        ] {
            assert!(json.get(key).is_some(), "missing {key}: {json}");
        }
        assert_eq!(json["mode"], "closed");
        assert_eq!(json["concurrency"], 64);
        assert_eq!(json["requests"], 1002);
        assert_eq!(json["requests_per_s"], 500.0);
        assert_eq!(json["errors"], 6);
        assert_eq!(json["error_detail"]["status"]["503"], 1);
        for key in ["p50", "p90", "p99", "p99_9", "max", "mean"] {
            assert!(json["latency_us"][key].is_number(), "latency_us.{key}");
        }
        assert_eq!(json["latency_us"]["p50"], 250);
        assert_eq!(json["harness_cpu"]["seconds"], 0.5);
        assert_eq!(json["server_cpu"]["cores"], 0.5);
        assert_eq!(json["server_cpu"]["us_per_request"], 998.004);
        for key in ["nproc", "cpu_model", "memory_bytes", "kernel"] {
            assert!(json["machine"].get(key).is_some(), "machine.{key}");
        }
        assert!(
            report
                .line()
                .starts_with("sluice-json: 500 req/s  p50 250µs")
        );
    }

    #[test]
    fn open_loop_reports_its_rate_and_omits_the_machine_in_comparisons() {
        let report = Report::new(
            "x",
            "t".into(),
            Mode::Open {
                rate: 1000.0,
                max_in_flight: 256,
                max_backlog: 10_000,
            },
            Duration::ZERO,
            &result(),
            payload(),
            None,
            None,
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["mode"], "open");
        assert_eq!(json["rate"], 1000.0);
        assert_eq!(json["max_in_flight"], 256);
        assert!(json.get("machine").is_none());
        assert!(json["server_pid"].is_null());
        assert_eq!(json["error_detail"]["dropped"], 3);
    }
}
