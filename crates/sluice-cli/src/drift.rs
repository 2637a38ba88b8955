//! `sluice drift compare REFERENCE CURRENT`: per-feature drift between two
//! CSV files, by the statistics of `sluice-drift`.
//!
//! The CSV reader is a small one of our own: a header row, comma-separated
//! fields, optional double quotes (with `""` for a quote inside, and
//! newlines allowed inside quotes), LF or CRLF line ends, an optional UTF-8
//! byte-order mark. In numeric columns an empty field, `NA`, `NaN` or
//! `null` is a missing value (dropped); in categorical columns every value,
//! the empty one included, is a category.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use sluice_drift::{Feature, FeatureData, FeatureDrift, Method, Thresholds, drift_features};

#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Compare the columns of CURRENT with those of REFERENCE and say, per
    /// feature, whether its distribution drifted (most drifted first).
    /// Exits 0 whether or not drift was found.
    Compare(CompareArgs),
    /// A model version's reference dataset in the drift collector.
    #[command(subcommand)]
    Reference(ReferenceCommand),
}

#[derive(Debug, Subcommand)]
pub enum ReferenceCommand {
    /// Upload FILE (.csv, .json of OIP tensors, or .npy) as the reference
    /// of MODEL --version V, replacing any earlier one (the collector keeps
    /// it across restarts).
    Set(crate::collector::ReferenceSetArgs),
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// CSV file with the reference sample (header row first)
    pub reference: PathBuf,
    /// CSV file with the current window (same columns)
    pub current: PathBuf,
    /// Compare only these columns (comma-separated); default: every column,
    /// and then both files must have the same columns
    #[arg(long, value_delimiter = ',', value_name = "COLUMNS")]
    pub features: Vec<String>,
    /// Columns holding categories rather than numbers (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "COLUMNS")]
    pub categorical: Vec<String>,
    /// The method deciding drift: auto picks KS or normed Wasserstein for
    /// numeric columns and chi-square or Jensen-Shannon for categorical
    /// ones by reference size (Evidently's defaults); a method that does
    /// not apply to a column's kind leaves that column on auto
    #[arg(long, default_value = "auto", value_parser = parse_method)]
    pub method: MethodChoice,
    /// Print the JSON array of per-feature results (with every method's
    /// value and the bin counts) instead of the table
    #[arg(long)]
    pub json: bool,
}

/// `--method`: a method, or `auto`.
#[derive(Debug, Clone, Copy)]
pub struct MethodChoice(pub Option<Method>);

fn parse_method(s: &str) -> Result<MethodChoice, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(MethodChoice(None));
    }
    s.parse::<Method>()
        .map(|m| MethodChoice(Some(m)))
        .map_err(|e| format!("{e}, or auto"))
}

pub fn run(command: DriftCommand) -> anyhow::Result<()> {
    match command {
        DriftCommand::Compare(args) => compare(args),
        DriftCommand::Reference(ReferenceCommand::Set(args)) => {
            crate::collector::reference_set(args)
        }
    }
}

/// A parsed CSV file: the header and the rows, each as long as the header.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn read_table(path: &Path, what: &str) -> anyhow::Result<Table> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("the {what} file {} is not UTF-8 text", path.display()))?;
    let mut records = sluice_collector::csv::records(&text)
        .map_err(|e| anyhow::anyhow!("the {what} file {} is not valid CSV: {e}", path.display()))?;
    if records.is_empty() {
        bail!(
            "the {what} file {} is empty: expected a header row and data rows",
            path.display()
        );
    }
    let header: Vec<String> = records
        .remove(0)
        .into_iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut seen = BTreeSet::new();
    for h in &header {
        if h.is_empty() {
            bail!(
                "the {what} file {} has an empty column name in its header",
                path.display()
            );
        }
        if !seen.insert(h.as_str()) {
            bail!(
                "the {what} file {} names column {h:?} twice",
                path.display()
            );
        }
    }
    if records.is_empty() {
        bail!(
            "the {what} file {} has a header but no data rows",
            path.display()
        );
    }
    for (i, r) in records.iter().enumerate() {
        if r.len() != header.len() {
            bail!(
                "the {what} file {}: data row {} has {} fields, the header has {}",
                path.display(),
                i + 1,
                r.len(),
                header.len()
            );
        }
    }
    Ok(Table {
        header,
        rows: records,
    })
}

/// A missing numeric value.
fn is_missing(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "" | "na" | "nan" | "null" | "none"
    )
}

fn numeric_column(table: &Table, col: usize, name: &str, what: &str) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(table.rows.len());
    for (i, row) in table.rows.iter().enumerate() {
        let raw = row[col].trim();
        if is_missing(raw) {
            out.push(f64::NAN);
            continue;
        }
        match raw.parse::<f64>() {
            Ok(v) => out.push(v),
            Err(_) => bail!(
                "column {name:?} of the {what} file is not numeric (data row {}: {raw:?}); \
                 name it in --categorical if it holds categories",
                i + 1
            ),
        }
    }
    Ok(out)
}

fn text_column(table: &Table, col: usize) -> Vec<String> {
    table.rows.iter().map(|r| r[col].clone()).collect()
}

/// The columns to compare, in the reference file's order (or the
/// `--features` order).
fn select_columns(
    args: &CompareArgs,
    reference: &Table,
    current: &Table,
) -> anyhow::Result<Vec<String>> {
    let in_ref: BTreeSet<&str> = reference.header.iter().map(String::as_str).collect();
    let in_cur: BTreeSet<&str> = current.header.iter().map(String::as_str).collect();
    let columns: Vec<String> = if args.features.is_empty() {
        let only_ref: Vec<&str> = in_ref.difference(&in_cur).copied().collect();
        let only_cur: Vec<&str> = in_cur.difference(&in_ref).copied().collect();
        if !only_ref.is_empty() || !only_cur.is_empty() {
            let mut msg = String::from("column mismatch between the files:");
            if !only_ref.is_empty() {
                msg.push_str(&format!(" only in REFERENCE: {}.", only_ref.join(", ")));
            }
            if !only_cur.is_empty() {
                msg.push_str(&format!(" only in CURRENT: {}.", only_cur.join(", ")));
            }
            msg.push_str(" Pick common columns with --features.");
            bail!(msg);
        }
        reference.header.clone()
    } else {
        let mut cols = Vec::new();
        for f in &args.features {
            let f = f.trim();
            if f.is_empty() {
                continue;
            }
            let missing: Vec<&str> = [("REFERENCE", &in_ref), ("CURRENT", &in_cur)]
                .iter()
                .filter(|(_, set)| !set.contains(f))
                .map(|(name, _)| *name)
                .collect();
            if !missing.is_empty() {
                bail!(
                    "--features names column {f:?}, which {} lacks",
                    missing.join(" and ")
                );
            }
            if !cols.iter().any(|c| c == f) {
                cols.push(f.to_string());
            }
        }
        cols
    };
    for c in &args.categorical {
        let c = c.trim();
        if !c.is_empty() && !columns.iter().any(|x| x == c) {
            bail!("--categorical names column {c:?}, which is not among the compared columns");
        }
    }
    if columns.is_empty() {
        bail!("no columns to compare");
    }
    Ok(columns)
}

enum Column {
    Numeric(Vec<f64>, Vec<f64>),
    Categorical(Vec<String>, Vec<String>),
}

fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let reference = read_table(&args.reference, "REFERENCE")?;
    let current = read_table(&args.current, "CURRENT")?;
    let columns = select_columns(&args, &reference, &current)?;
    let categorical: BTreeSet<&str> = args.categorical.iter().map(|s| s.trim()).collect();
    let ref_index: HashMap<&str, usize> = reference
        .header
        .iter()
        .enumerate()
        .map(|(i, h)| (h.as_str(), i))
        .collect();
    let cur_index: HashMap<&str, usize> = current
        .header
        .iter()
        .enumerate()
        .map(|(i, h)| (h.as_str(), i))
        .collect();
    let mut data: Vec<(String, Column)> = Vec::with_capacity(columns.len());
    for name in &columns {
        let (ri, ci) = (ref_index[name.as_str()], cur_index[name.as_str()]);
        let column = if categorical.contains(name.as_str()) {
            Column::Categorical(text_column(&reference, ri), text_column(&current, ci))
        } else {
            Column::Numeric(
                numeric_column(&reference, ri, name, "REFERENCE")?,
                numeric_column(&current, ci, name, "CURRENT")?,
            )
        };
        data.push((name.clone(), column));
    }
    let usable = data.iter().any(|(_, column)| match column {
        Column::Numeric(r, c) => r.iter().any(|v| !v.is_nan()) && c.iter().any(|v| !v.is_nan()),
        Column::Categorical(..) => true,
    });
    if !usable {
        bail!(
            "no numeric column with values in both files (and no --categorical column) to compare"
        );
    }
    let features: Vec<Feature<'_>> = data
        .iter()
        .map(|(name, column)| Feature {
            name,
            data: match column {
                Column::Numeric(r, c) => FeatureData::Numeric {
                    reference: r,
                    current: c,
                },
                Column::Categorical(r, c) => FeatureData::Categories {
                    reference: r,
                    current: c,
                },
            },
        })
        .collect();
    let results = drift_features(&features, &Thresholds::default(), args.method.0);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", table(&results));
    }
    Ok(())
}

/// A number for the table: 4 significant digits, scientific notation when
/// small or large, "-" when absent or not computable.
fn num(v: Option<f64>) -> String {
    let Some(v) = v.filter(|v| !v.is_nan()) else {
        return "-".to_string();
    };
    if v == 0.0 {
        "0".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.to_string()
    } else if v.abs() < 1e-3 || v.abs() >= 1e5 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// The human-readable table, most drifted first, with a summary line.
fn table(results: &[FeatureDrift]) -> String {
    let header = [
        "feature",
        "kind",
        "method",
        "score",
        "p-value",
        "adjusted p",
        "threshold",
        "drifted",
    ];
    let rows: Vec<[String; 8]> = results
        .iter()
        .map(|r| {
            [
                r.feature.clone(),
                match r.kind {
                    sluice_drift::FeatureKind::Numeric => "numeric".to_string(),
                    sluice_drift::FeatureKind::Categorical => "categorical".to_string(),
                },
                r.method.to_string(),
                num(Some(r.score)),
                num(r.p_value),
                num(r.adjusted_p_value),
                num(Some(r.threshold)),
                if r.drifted { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(String::from), &mut out);
    for row in &rows {
        line(row, &mut out);
    }
    let drifted = results.iter().filter(|r| r.drifted).count();
    out.push_str(&format!(
        "\n{drifted} of {} features drifted (p-values adjusted with Benjamini-Hochberg)\n",
        results.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_the_table() {
        assert_eq!(num(None), "-");
        assert_eq!(num(Some(f64::NAN)), "-");
        assert_eq!(num(Some(0.05)), "0.0500");
        assert_eq!(num(Some(1.5e-20)), "1.500e-20");
        assert_eq!(num(Some(0.0)), "0");
    }

    #[test]
    fn method_choice() {
        assert!(parse_method("auto").unwrap().0.is_none());
        assert_eq!(parse_method("js").unwrap().0, Some(Method::JensenShannon));
        assert!(parse_method("t-test").is_err());
    }
}
