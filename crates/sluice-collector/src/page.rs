//! `GET /`: the collector's page. Per model version: the drift of its
//! features over the closed windows (each score divided by its threshold, so
//! 1 is the line where a feature counts as drifted), and the reference
//! against the latest window for its most drifted features. Charts are SVG
//! made here; the page loads nothing else.

use std::fmt::Write;

use axum::extract::State;
use axum::response::Html;

use crate::evaluate::FeatureResult;
use crate::server::CollectorState;
use crate::store::Column;

/// Features charted per version (the most drifted).
const TOP_FEATURES: usize = 4;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How far over its threshold a result is: 1 at the threshold, above 1
/// drifted, for p-value and distance methods alike.
pub fn severity(f: &FeatureResult) -> f64 {
    match f.adjusted_p_value.or(f.p_value) {
        Some(p) => {
            // p below the threshold is drift: -log10(p) / -log10(threshold).
            let t = f.threshold.clamp(1e-300, 0.999_999);
            (-p.max(1e-300).log10()) / (-t.log10())
        }
        None if f.threshold > 0.0 => f.score / f.threshold,
        None => 0.0,
    }
}

pub async fn index(State(state): State<CollectorState>) -> Html<String> {
    let collector = &state.collector;
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sluice drift</title>\
         <style>body{font-family:sans-serif;margin:2em;color:#222}h2{margin-top:2em}\
         .alert{color:#b00;font-weight:bold}.ok{color:#070}figure{display:inline-block;margin:0 1em 1em 0}\
         figcaption{font-size:.9em}</style></head><body><h1>Sluice drift</h1>",
    );
    let versions = collector.versions();
    if versions.is_empty() {
        html.push_str("<p>No captured records yet.</p>");
    }
    for (model, version) in versions {
        let Some(report) = collector.model_report(&model) else {
            continue;
        };
        let v = &report["versions"][version.to_string()];
        let _ = write!(
            html,
            "<section class=\"version\" data-model=\"{m}\" data-version=\"{version}\"><h2>{m} version {version}</h2>",
            m = escape(&model)
        );
        match v["alert"].as_object() {
            Some(a) => {
                let features: Vec<String> = a["features"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str().map(escape))
                    .collect();
                let _ = write!(
                    html,
                    "<p class=\"alert\">Drift alert since window {}: {}</p>",
                    a["window"],
                    features.join(", ")
                );
            }
            None => html.push_str("<p class=\"ok\">No drift alert.</p>"),
        }
        let windows: Vec<(u64, Vec<FeatureResult>)> = v["windows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| {
                Some((
                    w["index"].as_u64()?,
                    serde_json::from_value(w["features"].clone()).ok()?,
                ))
            })
            .collect();
        if windows.is_empty() {
            let _ = write!(
                html,
                "<p>No window closed yet (reference: {}).</p>",
                escape(v["reference"]["source"].as_str().unwrap_or("not yet"))
            );
            html.push_str("</section>");
            continue;
        }
        // The most drifted features of the latest window.
        let mut latest = windows.last().map(|w| w.1.clone()).unwrap_or_default();
        latest.sort_by(|a, b| severity(b).total_cmp(&severity(a)));
        let top: Vec<String> = latest
            .iter()
            .take(TOP_FEATURES)
            .map(|f| f.feature.clone())
            .collect();
        html.push_str(&timeline(&windows, &top));
        for feature in &top {
            if let Some((reference, current)) = collector.feature_columns(&model, version, feature)
            {
                html.push_str(&distribution(feature, &reference, &current));
            }
        }
        html.push_str("</section>");
    }
    html.push_str("</body></html>");
    Html(html)
}

/// Severity of each top feature over the windows, one line each, with the
/// threshold at 1.
fn timeline(windows: &[(u64, Vec<FeatureResult>)], top: &[String]) -> String {
    let (w, h, pad) = (640.0, 240.0, 40.0);
    let series: Vec<Vec<(u64, f64)>> = top
        .iter()
        .map(|name| {
            windows
                .iter()
                .filter_map(|(i, fs)| {
                    fs.iter()
                        .find(|f| &f.feature == name)
                        .map(|f| (*i, severity(f)))
                })
                .collect()
        })
        .collect();
    let max_y = series
        .iter()
        .flatten()
        .map(|(_, s)| *s)
        .filter(|s| s.is_finite())
        .fold(2.0f64, f64::max);
    let (first, last) = (windows[0].0, windows[windows.len() - 1].0);
    let x = |i: u64| pad + (w - 2.0 * pad) * ((i - first) as f64 / ((last - first).max(1)) as f64);
    let y = |s: f64| h - pad - (h - 2.0 * pad) * (s.min(max_y) / max_y);
    let mut svg = format!(
        "<figure><svg class=\"chart timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">\
         <title>drift over windows</title>\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
         <line x1=\"{pad}\" y1=\"{t}\" x2=\"{r}\" y2=\"{t}\" stroke=\"#b00\" stroke-dasharray=\"4 3\"/>\
         <text x=\"{r}\" y=\"{t2}\" font-size=\"10\" text-anchor=\"end\" fill=\"#b00\">threshold</text>",
        b = h - pad,
        r = w - pad,
        t = y(1.0),
        t2 = y(1.0) - 3.0,
    );
    for (k, (name, points)) in top.iter().zip(&series).enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(i, s)| {
                format!(
                    "{:.1},{:.1}",
                    x(*i),
                    y(if s.is_finite() { *s } else { max_y })
                )
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>\
             <text x=\"{pad}\" y=\"{}\" font-size=\"11\" fill=\"{colour}\">{}</text>",
            path.join(" "),
            escape(name),
            14.0 + 13.0 * k as f64,
            escape(name)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">window {first}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">window {last}</text></svg>\
         <figcaption>Drift per window (score over threshold; above the line: drifted)</figcaption></figure>",
        h - pad + 14.0,
        w - pad,
        h - pad + 14.0
    );
    svg
}

/// Reference against the latest window: histograms over shared bins
/// (numeric) or category shares (categorical).
fn distribution(feature: &str, reference: &Column, current: &Column) -> String {
    let (labels, r, c) = match (reference, current) {
        (Column::Numeric(r), Column::Numeric(c)) => {
            let finite = |v: &Vec<f64>| {
                v.iter()
                    .copied()
                    .filter(|x| x.is_finite())
                    .collect::<Vec<_>>()
            };
            let (r, c) = (finite(r), finite(c));
            let lo = r.iter().chain(&c).copied().fold(f64::INFINITY, f64::min);
            let hi = r
                .iter()
                .chain(&c)
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            if !(lo.is_finite() && hi.is_finite()) {
                return String::new();
            }
            let bins = 20usize;
            let width = ((hi - lo) / bins as f64).max(f64::MIN_POSITIVE);
            let count = |v: &[f64]| {
                let mut h = vec![0f64; bins];
                for x in v {
                    let i = (((x - lo) / width) as usize).min(bins - 1);
                    h[i] += 1.0;
                }
                let n = v.len().max(1) as f64;
                h.into_iter().map(|k| k / n).collect::<Vec<_>>()
            };
            let labels = vec![format!("{lo:.3}"), format!("{hi:.3}")];
            (labels, count(&r), count(&c))
        }
        (Column::Categorical(r), Column::Categorical(c)) => {
            let mut cats: Vec<String> = r.iter().chain(c).cloned().collect();
            cats.sort();
            cats.dedup();
            cats.truncate(20);
            let share = |v: &[String]| {
                let n = v.len().max(1) as f64;
                cats.iter()
                    .map(|k| v.iter().filter(|x| *x == k).count() as f64 / n)
                    .collect::<Vec<_>>()
            };
            let (rs, cs) = (share(r), share(c));
            (cats, rs, cs)
        }
        _ => return String::new(),
    };
    let (w, h, pad) = (320.0, 180.0, 24.0);
    let n = r.len().max(1);
    let max = r.iter().chain(&c).copied().fold(1e-9f64, f64::max);
    let bw = (w - 2.0 * pad) / n as f64;
    let mut svg = format!(
        "<figure><svg class=\"chart distribution\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">\
         <title>{name}: reference and latest window</title>",
        name = escape(feature)
    );
    for (i, (a, b)) in r.iter().zip(&c).enumerate() {
        let x0 = pad + bw * i as f64;
        let ha = (h - 2.0 * pad) * a / max;
        let hb = (h - 2.0 * pad) * b / max;
        let _ = write!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{ha:.1}\" fill=\"#1f77b4\" fill-opacity=\"0.6\"/>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hb:.1}\" fill=\"#d62728\" fill-opacity=\"0.6\"/>",
            h - pad - ha,
            bw / 2.0,
            x0 + bw / 2.0,
            h - pad - hb,
            bw / 2.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text></svg>\
         <figcaption>{}: reference (blue) and latest window (red)</figcaption></figure>",
        h - 6.0,
        escape(labels.first().map(String::as_str).unwrap_or("")),
        w - pad,
        h - 6.0,
        escape(labels.last().map(String::as_str).unwrap_or("")),
        escape(feature)
    );
    svg
}
