//! `sluice models check FILE`: the safety check the gateway runs before
//! ONNX Runtime sees a model file, by hand.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sluice_modelcheck::{Report, Safety, check_file};

/// Checks `file` with the `[safety]` limits of `config` (a `model.toml`),
/// or the defaults. Prints each finding and fails if there is any; prints a
/// summary otherwise.
pub fn run(file: &Path, config: Option<&PathBuf>) -> anyhow::Result<()> {
    let safety = match config {
        Some(path) => {
            sluice_registry::ModelConfig::load(path)
                .with_context(|| format!("reading {}", path.display()))?
                .safety
        }
        None => Safety::default(),
    };
    let report = check_file(file, &safety);
    if !report.passed() {
        for finding in &report.findings {
            println!("{}: {finding}", file.display());
        }
        if report.more > 0 {
            println!("{}: ... and {} more findings", file.display(), report.more);
        }
        bail!(
            "{} fails the safety check ({} finding(s)); the gateway would refuse it",
            file.display(),
            report.findings.len() + report.more
        );
    }
    println!("{}", summary(file, &report, config.is_some()));
    Ok(())
}

fn summary(file: &Path, report: &Report, configured: bool) -> String {
    let s = &report.summary;
    let show = |d: &str| {
        if d.is_empty() {
            "ai.onnx".to_string()
        } else {
            d.to_string()
        }
    };
    let opsets = s
        .opsets
        .iter()
        .map(|(d, v)| format!("{} {v}", show(d)))
        .collect::<Vec<_>>()
        .join(", ");
    let domains = s
        .domains
        .iter()
        .map(|d| show(d))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "ok: {} passes the safety check ({} limits): {} bytes, IR version {}, opsets [{opsets}], \
         domains used [{domains}], {} nodes, {} initializers ({} bytes declared, {} in external data)",
        file.display(),
        if configured { "configured" } else { "default" },
        s.file_bytes,
        s.ir_version,
        s.nodes,
        s.initializers,
        s.initializer_bytes,
        s.external_tensors,
    )
}
