//! The Prometheus text format (0.0.4) and OpenMetrics 1.0, written by hand
//! from the metric snapshots: both are simple line formats, and owning the
//! encoder lets the metrics themselves stay lock-free.

use std::fmt::Write;

use crate::metric::{Counter, Gauge, Histogram};
use crate::metrics::{Family, Kind, Metrics};

/// Which exposition format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: what Prometheus and most tools read.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`: adds exemplars.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header asks for it, else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn number(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// `{a="x",b="y"}` (empty when there are no labels), with `extra` appended.
fn labels(names: &[&str], values: &[String], extra: Option<(&str, &str)>, out: &mut String) {
    if names.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (n, v) in names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, v.as_str()))
        .chain(extra)
    {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(n);
        out.push_str("=\"");
        escape(v, out);
        out.push('"');
    }
    out.push('}');
}

fn header(name: &str, help: &str, kind: Kind, format: Format, out: &mut String) {
    // OpenMetrics names a counter family without its `_total` suffix.
    let family = match (format, kind) {
        (Format::OpenMetrics, Kind::Counter) => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {family} {help}");
    let _ = writeln!(out, "# TYPE {family} {kind}");
}

fn sample(name: &str, names: &[&str], values: &[String], value: f64, out: &mut String) {
    out.push_str(name);
    labels(names, values, None, out);
    out.push(' ');
    number(value, out);
    out.push('\n');
}

fn counters(f: &Family<Counter>, format: Format, out: &mut String) {
    header(f.name, f.help, Kind::Counter, format, out);
    for (values, c) in f.series() {
        sample(f.name, f.labels, &values, c.get() as f64, out);
    }
}

fn gauges(f: &Family<Gauge>, format: Format, out: &mut String) {
    header(f.name, f.help, Kind::Gauge, format, out);
    for (values, g) in f.series() {
        sample(f.name, f.labels, &values, g.get() as f64, out);
    }
}

fn histograms(f: &Family<Histogram>, format: Format, out: &mut String) {
    header(f.name, f.help, Kind::Histogram, format, out);
    for (values, h) in f.series() {
        let s = h.snapshot();
        let mut le = String::new();
        for (i, (bound, count)) in s.buckets.iter().enumerate() {
            le.clear();
            number(*bound, &mut le);
            out.push_str(f.name);
            out.push_str("_bucket");
            labels(f.labels, &values, Some(("le", &le)), out);
            let _ = write!(out, " {count}");
            if format == Format::OpenMetrics
                && let Some(e) = &s.exemplars[i]
            {
                out.push_str(" # {trace_id=\"");
                escape(&e.trace_id, out);
                out.push_str("\"} ");
                number(e.value, out);
                let _ = write!(out, " {:.3}", e.timestamp);
            }
            out.push('\n');
        }
        sample(&format!("{}_sum", f.name), f.labels, &values, s.sum, out);
        sample(
            &format!("{}_count", f.name),
            f.labels,
            &values,
            s.count as f64,
            out,
        );
    }
}

/// Resident set size of this process, from /proc (Linux); None elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Writes every metric in `format`.
pub fn encode(metrics: &Metrics, format: Format) -> String {
    let mut out = String::with_capacity(64 * 1024);
    counters(&metrics.requests, format, &mut out);
    histograms(&metrics.request_duration, format, &mut out);
    histograms(&metrics.queue_duration, format, &mut out);
    histograms(&metrics.compute_input, format, &mut out);
    histograms(&metrics.compute_infer, format, &mut out);
    histograms(&metrics.compute_output, format, &mut out);
    histograms(&metrics.batch_size, format, &mut out);
    gauges(&metrics.in_flight, format, &mut out);

    let live = metrics.live_state();
    header(
        "sluice_queue_depth",
        "Requests waiting in a version's queue, read at scrape time.",
        Kind::Gauge,
        format,
        &mut out,
    );
    for (model, version, depth) in &live.queues {
        sample(
            "sluice_queue_depth",
            &["model", "version"],
            &[model.clone(), version.clone()],
            *depth as f64,
            &mut out,
        );
    }
    histograms(&metrics.load_duration, format, &mut out);
    counters(&metrics.loads, format, &mut out);
    header(
        "sluice_model_versions_loaded",
        "Versions of a model ready to serve, read at scrape time.",
        Kind::Gauge,
        format,
        &mut out,
    );
    for (model, n) in &live.versions_loaded {
        sample(
            "sluice_model_versions_loaded",
            &["model"],
            std::slice::from_ref(model),
            *n as f64,
            &mut out,
        );
    }
    header(
        "sluice_process_resident_memory_bytes",
        "Resident memory of the process (RSS), read at scrape time.",
        Kind::Gauge,
        format,
        &mut out,
    );
    if let Some(rss) = resident_memory_bytes() {
        sample(
            "sluice_process_resident_memory_bytes",
            &[],
            &[],
            rss as f64,
            &mut out,
        );
    }
    counters(&metrics.spans_exported, format, &mut out);
    histograms(&metrics.http_duration, format, &mut out);
    header(
        "sluice_traffic_weight",
        "Share of a model's traffic a version gets by its traffic policy, read at scrape time.",
        Kind::Gauge,
        format,
        &mut out,
    );
    for (model, version, role, share) in &live.traffic {
        sample(
            "sluice_traffic_weight",
            &["model", "version", "role"],
            &[model.clone(), version.clone(), role.to_string()],
            *share,
            &mut out,
        );
    }
    counters(&metrics.shadow_requests, format, &mut out);
    counters(&metrics.shadow_comparisons, format, &mut out);
    histograms(&metrics.shadow_abs_diff, format, &mut out);
    histograms(&metrics.shadow_rel_diff, format, &mut out);
    histograms(&metrics.shadow_latency_ratio, format, &mut out);
    counters(&metrics.rollout_decisions, format, &mut out);
    counters(&metrics.capture_records, format, &mut out);
    header(
        "sluice_capture_queue_depth",
        "Capture records waiting for export (queued or in the batch being sent), read at scrape time.",
        Kind::Gauge,
        format,
        &mut out,
    );
    sample(
        "sluice_capture_queue_depth",
        &[],
        &[],
        metrics.capture_queue_depth() as f64,
        &mut out,
    );
    histograms(&metrics.capture_export_duration, format, &mut out);
    counters(&metrics.registry_syncs, format, &mut out);
    let registry = metrics.registry_gauges_if_used();
    let synced = registry.filter(|g| g.last_success_seconds.get() > 0);
    for (name, help, value) in [
        (
            "sluice_registry_degraded",
            "1 while the registry on object storage cannot be reached and this replica serves what it has.",
            registry.map(|g| g.degraded.get()),
        ),
        // These two have no sample until a poll succeeded (no revision yet).
        (
            "sluice_registry_revision",
            "The registry revision this replica serves: the first 52 bits of its SHA-256, as an integer.",
            synced.map(|g| g.revision.get()),
        ),
        (
            "sluice_registry_last_success_timestamp_seconds",
            "Unix time of the last successful poll of the registry on object storage.",
            synced.map(|g| g.last_success_seconds.get()),
        ),
    ] {
        header(name, help, Kind::Gauge, format, &mut out);
        if let Some(value) = value {
            sample(name, &[], &[], value as f64, &mut out);
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{LiveState, Outcome, Protocol, VersionMetrics};

    #[test]
    fn prometheus_text_and_openmetrics() {
        let m = Metrics::new();
        let v = VersionMetrics::new(&m, "ir\"is", 1);
        v.record_request(
            Protocol::Http,
            Outcome::Success,
            3e-5,
            Some("0af7651916cd43dd8448eb211c80319c".into()),
        );
        m.set_live_source(|| LiveState {
            queues: vec![("iris".into(), "1".into(), 3)],
            versions_loaded: vec![("iris".into(), 2)],
            traffic: vec![("iris".into(), "2".into(), "canary", 0.25)],
        });
        let text = encode(&m, Format::Prometheus);
        assert!(
            text.contains("# TYPE sluice_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains(
            "sluice_requests_total{model=\"ir\\\"is\",version=\"1\",protocol=\"http\",outcome=\"success\"} 1\n"
        ));
        assert!(text.contains(
            "sluice_request_duration_seconds_bucket{model=\"ir\\\"is\",version=\"1\",protocol=\"http\",outcome=\"success\",le=\"0.000032\"} 1\n"
        ), "{text}");
        assert!(text.contains("le=\"+Inf\"} 1\n"));
        assert!(text.contains(
            "sluice_traffic_weight{model=\"iris\",version=\"2\",role=\"canary\"} 0.25\n"
        ));
        assert!(text.contains("sluice_queue_depth{model=\"iris\",version=\"1\"} 3\n"));
        assert!(text.contains("sluice_model_versions_loaded{model=\"iris\"} 2\n"));
        // Capture: the model's counters exist at zero once a version has
        // handles; the depth is read from its source; both export outcomes
        // exist from the start.
        assert!(
            text.contains(
                "sluice_capture_records_total{model=\"ir\\\"is\",outcome=\"dropped\"} 0\n"
            )
        );
        assert!(text.contains("sluice_capture_queue_depth 0\n"));
        assert!(
            text.contains("sluice_capture_export_duration_seconds_count{outcome=\"failure\"} 0\n")
        );
        v.capture.record(crate::CaptureOutcome::Sent, 3);
        m.set_capture_depth_source(|| 7);
        let text = encode(&m, Format::Prometheus);
        assert!(text.contains("sluice_capture_queue_depth 7\n"));
        assert!(
            text.contains("sluice_capture_records_total{model=\"ir\\\"is\",outcome=\"sent\"} 3\n")
        );
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("trace_id"));

        let om = encode(&m, Format::OpenMetrics);
        assert!(om.contains("# TYPE sluice_requests counter\n"));
        assert!(
            om.contains("# {trace_id=\"0af7651916cd43dd8448eb211c80319c\"} 0.00003 "),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
