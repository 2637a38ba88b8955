//! How far a shadow's outputs are from the primary's, for the same request.
//!
//! Outputs are matched by name. Floating-point outputs are compared element
//! by element with a tolerance (numpy's `allclose` rule) and, for class
//! scores, by the argmax of each row; every other datatype must be equal.
//! The result says whether the two versions agree and how different they
//! are, so the server can count agreement and keep the most different pairs.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use sluice_tensor::{DataType, Tensor, TensorData};

/// How close two floating-point elements must be to count as equal:
/// `|a - b| <= atol + rtol * |a|`, with `a` the primary's element.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub atol: f64,
    /// Tolerance relative to the primary's element.
    pub rtol: f64,
}

impl Default for Tolerance {
    /// `atol` 1e-6, `rtol` 1e-5: close to numpy's defaults, tight enough to
    /// notice a changed model, loose enough for reordered float sums.
    fn default() -> Tolerance {
        Tolerance {
            atol: 1e-6,
            rtol: 1e-5,
        }
    }
}

/// When floating-point outputs count as agreeing. Integer, BOOL and BYTES
/// outputs must always be equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agreement {
    /// Class-score outputs (rank >= 2, last dimension > 1) agree when every
    /// row's argmax does (the decision is the same, whatever the scores);
    /// other float outputs agree within the tolerance. For classifiers.
    #[default]
    Argmax,
    /// Every float element within the tolerance, whatever the shape. For
    /// regressions and embeddings whose rows are not class scores.
    Values,
}

/// The comparison of one named output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputDiff {
    /// Floating-point outputs.
    Float {
        /// The output's name.
        name: String,
        /// Largest `|a - b|` over the elements (`+inf` for NaN against a number).
        max_abs: f64,
        /// Largest `|a - b| / max(|a|, |b|)` over the elements.
        max_rel: f64,
        /// Whether every element is within the tolerance.
        within_tolerance: bool,
        /// For class scores (rank >= 2, last dimension > 1): whether every
        /// row has the same argmax on both sides; `None` for other shapes.
        argmax_agree: Option<bool>,
    },
    /// Integer, BOOL and BYTES outputs: exact equality.
    Exact {
        /// The output's name.
        name: String,
        /// Whether every element is equal.
        equal: bool,
        /// How many elements differ.
        differing: usize,
    },
    /// Not comparable: missing on one side, other datatype or shape.
    Mismatch {
        /// The output's name.
        name: String,
        /// Why the output could not be compared.
        reason: String,
    },
}

impl OutputDiff {
    /// The output's name.
    pub fn name(&self) -> &str {
        match self {
            OutputDiff::Float { name, .. }
            | OutputDiff::Exact { name, .. }
            | OutputDiff::Mismatch { name, .. } => name,
        }
    }

    /// Whether the two sides agree on this output by the default rule
    /// ([`Agreement::Argmax`]).
    pub fn agrees(&self) -> bool {
        self.agrees_by(Agreement::Argmax)
    }

    /// Whether the two sides agree on this output by `rule`: for floats,
    /// the argmax when it applies and the rule is `Argmax`, else the
    /// tolerance; equality otherwise; never for a mismatch.
    pub fn agrees_by(&self, rule: Agreement) -> bool {
        match self {
            OutputDiff::Float {
                within_tolerance,
                argmax_agree,
                ..
            } => match rule {
                Agreement::Argmax => argmax_agree.unwrap_or(*within_tolerance),
                Agreement::Values => *within_tolerance,
            },
            OutputDiff::Exact { equal, .. } => *equal,
            OutputDiff::Mismatch { .. } => false,
        }
    }
}

/// The comparison of every output of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// One entry per output: the primary's outputs in order, then any
    /// output only the shadow returned.
    pub outputs: Vec<OutputDiff>,
    /// Whether every output agrees.
    pub agree: bool,
}

/// Score of a disagreeing comparison before its relative difference is
/// added; far above any agreeing score so disagreements rank first.
const DISAGREE_SCORE: f64 = 1e300;

/// What an infinite relative difference counts as in [`Comparison::score`]:
/// above every finite one (a finite relative difference is at most 2).
const INFINITE_REL_SCORE: f64 = 10.0;

impl Comparison {
    /// The largest absolute difference over float outputs: 0 when there are
    /// none, `+inf` when any output is a mismatch.
    pub fn max_abs(&self) -> f64 {
        self.fold_float(|d| match d {
            OutputDiff::Float { max_abs, .. } => *max_abs,
            _ => 0.0,
        })
    }

    /// The largest relative difference over float outputs: 0 when there are
    /// none, `+inf` when any output is a mismatch.
    pub fn max_rel(&self) -> f64 {
        self.fold_float(|d| match d {
            OutputDiff::Float { max_rel, .. } => *max_rel,
            _ => 0.0,
        })
    }

    /// How different the pair is, to rank pairs (higher is more different).
    ///
    /// An agreeing pair scores its `max_rel` (in `[0, 2]`, or 10 when
    /// infinite); a disagreeing pair scores `1e300 * (1 + that)`, so every
    /// disagreement ranks above every agreement and disagreements still rank
    /// among themselves. Always finite, so it survives JSON.
    pub fn score(&self) -> f64 {
        let rel = self.max_rel();
        let rel = if rel.is_finite() {
            rel
        } else {
            INFINITE_REL_SCORE
        };
        if self.agree {
            rel
        } else {
            DISAGREE_SCORE * (1.0 + rel)
        }
    }

    fn fold_float(&self, value: impl Fn(&OutputDiff) -> f64) -> f64 {
        let mut max = 0.0f64;
        for d in &self.outputs {
            if matches!(d, OutputDiff::Mismatch { .. }) {
                return f64::INFINITY;
            }
            max = max.max(value(d));
        }
        max
    }
}

/// Compares a shadow's outputs with the primary's for the same request.
///
/// Outputs are matched by name, in the primary's order; a name on only one
/// side (the shadow's extras come last), another datatype or another shape
/// is a [`OutputDiff::Mismatch`]. With duplicate names the first wins.
pub fn compare(
    primary: &[(String, Tensor)],
    shadow: &[(String, Tensor)],
    tol: Tolerance,
) -> Comparison {
    compare_by(primary, shadow, tol, Agreement::Argmax)
}

/// [`compare`], with agreement decided by `rule`.
pub fn compare_by(
    primary: &[(String, Tensor)],
    shadow: &[(String, Tensor)],
    tol: Tolerance,
    rule: Agreement,
) -> Comparison {
    let mut outputs = Vec::with_capacity(primary.len());
    for (name, p) in primary {
        let diff = match shadow.iter().find(|(n, _)| n == name) {
            Some((_, s)) => compare_output(name, p, s, tol),
            None => OutputDiff::Mismatch {
                name: name.clone(),
                reason: "missing in the shadow's outputs".to_string(),
            },
        };
        outputs.push(diff);
    }
    for (i, (name, _)) in shadow.iter().enumerate() {
        let in_primary = primary.iter().any(|(n, _)| n == name);
        let first_of_name = !shadow[..i].iter().any(|(n, _)| n == name);
        if !in_primary && first_of_name {
            outputs.push(OutputDiff::Mismatch {
                name: name.clone(),
                reason: "missing in the primary's outputs".to_string(),
            });
        }
    }
    let agree = outputs.iter().all(|o| o.agrees_by(rule));
    Comparison { outputs, agree }
}

/// Compares one output present on both sides.
fn compare_output(name: &str, p: &Tensor, s: &Tensor, tol: Tolerance) -> OutputDiff {
    let mismatch = |reason: String| OutputDiff::Mismatch {
        name: name.to_string(),
        reason,
    };
    if p.dtype() != s.dtype() {
        return mismatch(format!("datatype {} vs {}", p.dtype(), s.dtype()));
    }
    if p.shape() != s.shape() {
        return mismatch(format!("shape {:?} vs {:?}", p.shape(), s.shape()));
    }
    match (p.data(), s.data()) {
        (TensorData::Raw(pr), TensorData::Raw(sr)) => {
            if pr.len() != sr.len() {
                return mismatch(format!("{} bytes vs {} bytes", pr.len(), sr.len()));
            }
            let row = class_row_len(p.shape());
            let stats = match p.dtype() {
                DataType::Fp16 => {
                    float_stats(pr, sr, row, tol, |b| f64::from(f16::from_le_bytes(b)))
                }
                DataType::Bf16 => {
                    float_stats(pr, sr, row, tol, |b| f64::from(bf16::from_le_bytes(b)))
                }
                DataType::Fp32 => {
                    float_stats(pr, sr, row, tol, |b| f64::from(f32::from_le_bytes(b)))
                }
                DataType::Fp64 => float_stats(pr, sr, row, tol, f64::from_le_bytes),
                other => {
                    let size = other.element_size().unwrap_or(1).max(1);
                    let differing = if pr == sr {
                        0
                    } else {
                        pr.chunks(size)
                            .zip(sr.chunks(size))
                            .filter(|(a, b)| a != b)
                            .count()
                    };
                    return OutputDiff::Exact {
                        name: name.to_string(),
                        equal: differing == 0,
                        differing,
                    };
                }
            };
            OutputDiff::Float {
                name: name.to_string(),
                max_abs: stats.max_abs,
                max_rel: stats.max_rel,
                within_tolerance: stats.within,
                argmax_agree: stats.argmax_agree,
            }
        }
        (TensorData::Bytes(pe), TensorData::Bytes(se)) => {
            if pe.len() != se.len() {
                return mismatch(format!("{} elements vs {}", pe.len(), se.len()));
            }
            let differing = pe.iter().zip(se).filter(|(a, b)| a != b).count();
            OutputDiff::Exact {
                name: name.to_string(),
                equal: differing == 0,
                differing,
            }
        }
        _ => mismatch("element storage differs".to_string()),
    }
}

/// The row length when a shape holds class scores (rank >= 2, last
/// dimension > 1), else `None`.
fn class_row_len(shape: &[i64]) -> Option<usize> {
    if shape.len() < 2 {
        return None;
    }
    let last = usize::try_from(*shape.last()?).ok()?;
    (last > 1).then_some(last)
}

/// What [`float_stats`] found.
struct FloatStats {
    max_abs: f64,
    max_rel: f64,
    within: bool,
    argmax_agree: Option<bool>,
}

/// The argmax of the current row on one side: index and value.
#[derive(Clone, Copy)]
struct Best {
    index: usize,
    value: f64,
}

impl Best {
    /// Takes `v` at `index` if it beats the current best: strictly greater
    /// (the first maximum wins), NaN below everything.
    fn offer(&mut self, index: usize, v: f64) {
        if !v.is_nan() && (self.value.is_nan() || v > self.value) {
            *self = Best { index, value: v };
        }
    }
}

/// Element-wise differences of two same-length float buffers, decoded by
/// `decode` from `N`-byte little-endian elements, and the per-row argmax
/// agreement when `row` is the class-score row length.
fn float_stats<const N: usize>(
    p: &[u8],
    s: &[u8],
    row: Option<usize>,
    tol: Tolerance,
    decode: impl Fn([u8; N]) -> f64,
) -> FloatStats {
    let (p, _) = p.as_chunks::<N>();
    let (s, _) = s.as_chunks::<N>();
    let mut max_abs = 0.0f64;
    let mut max_rel = 0.0f64;
    let mut within = true;
    let mut argmax_agree = row.map(|_| true);
    let row_len = row.unwrap_or(usize::MAX);
    let mut pos = 0usize;
    let mut best_p = Best {
        index: 0,
        value: f64::NAN,
    };
    let mut best_s = best_p;
    for (&pa, &sa) in p.iter().zip(s) {
        let a = decode(pa);
        let b = decode(sa);
        let (abs, rel) = element_diff(a, b);
        max_abs = max_abs.max(abs);
        max_rel = max_rel.max(rel);
        // NaN tolerances make every differing element fail, never pass.
        if abs != 0.0 && !(abs.is_finite() && abs <= tol.atol + tol.rtol * a.abs()) {
            within = false;
        }
        if row.is_some() {
            if pos == 0 {
                best_p = Best { index: 0, value: a };
                best_s = Best { index: 0, value: b };
            } else {
                best_p.offer(pos, a);
                best_s.offer(pos, b);
            }
            pos += 1;
            if pos == row_len {
                if best_p.index != best_s.index {
                    argmax_agree = Some(false);
                }
                pos = 0;
            }
        }
    }
    FloatStats {
        max_abs,
        max_rel,
        within,
        argmax_agree,
    }
}

/// Absolute and relative difference of two elements: 0 when equal (equal
/// infinities included) or both NaN, `+inf` for NaN against a number.
fn element_diff(a: f64, b: f64) -> (f64, f64) {
    let a_nan = a.is_nan();
    let b_nan = b.is_nan();
    if a == b || (a_nan && b_nan) {
        return (0.0, 0.0);
    }
    if a_nan || b_nan {
        return (f64::INFINITY, f64::INFINITY);
    }
    let abs = (a - b).abs();
    let largest = a.abs().max(b.abs());
    let rel = if abs.is_finite() {
        abs / largest
    } else if a.is_finite() && b.is_finite() {
        // The difference overflowed; scale first.
        (a / largest - b / largest).abs()
    } else {
        f64::INFINITY
    };
    (abs, rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn raw(dtype: DataType, shape: &[i64], bytes: Vec<u8>) -> Tensor {
        Tensor::from_raw(dtype, shape.to_vec(), Bytes::from(bytes)).unwrap()
    }

    fn f32s(shape: &[i64], v: &[f32]) -> Tensor {
        raw(
            DataType::Fp32,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    fn f64s(shape: &[i64], v: &[f64]) -> Tensor {
        raw(
            DataType::Fp64,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    fn i64s(shape: &[i64], v: &[i64]) -> Tensor {
        raw(
            DataType::Int64,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    fn strs(v: &[&str]) -> Tensor {
        Tensor::from_bytes_elements(
            vec![v.len() as i64],
            v.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        )
        .unwrap()
    }

    fn one(name: &str, t: Tensor) -> Vec<(String, Tensor)> {
        vec![(name.to_string(), t)]
    }

    fn single(p: Tensor, s: Tensor, tol: Tolerance) -> (OutputDiff, Comparison) {
        let c = compare(&one("y", p), &one("y", s), tol);
        assert_eq!(c.outputs.len(), 1);
        (c.outputs[0].clone(), c)
    }

    #[test]
    fn identical_tensors_of_every_dtype_agree() {
        for dtype in DataType::ALL {
            let t = match dtype.element_size() {
                Some(size) => {
                    let n = 6;
                    let bytes: Vec<u8> = if dtype == DataType::Bool {
                        (0..n).map(|i| (i % 2) as u8).collect()
                    } else {
                        (0..n * size).map(|i| (i % 7) as u8 + 1).collect()
                    };
                    raw(dtype, &[2, 3], bytes)
                }
                None => strs(&["a", "bc", ""]),
            };
            let (d, c) = single(t.clone(), t, Tolerance::default());
            assert!(c.agree, "{dtype}: {d:?}");
            assert_eq!(c.max_abs(), 0.0, "{dtype}");
            assert_eq!(c.max_rel(), 0.0, "{dtype}");
            assert_eq!(c.score(), 0.0, "{dtype}");
            match d {
                OutputDiff::Float {
                    max_abs,
                    max_rel,
                    within_tolerance,
                    argmax_agree,
                    ..
                } => {
                    assert!(matches!(
                        dtype,
                        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
                    ));
                    assert_eq!((max_abs, max_rel), (0.0, 0.0));
                    assert!(within_tolerance);
                    assert_eq!(argmax_agree, Some(true));
                }
                OutputDiff::Exact {
                    equal, differing, ..
                } => {
                    assert!(equal && differing == 0, "{dtype}");
                }
                OutputDiff::Mismatch { .. } => panic!("{dtype}: mismatch"),
            }
        }
    }

    #[test]
    fn fp32_known_perturbation() {
        let p = [1.0f32, -2.0, 0.5, 0.0];
        let s = [1.0f32, -2.5, 0.5, 0.25];
        let (d, c) = single(f32s(&[4], &p), f32s(&[4], &s), Tolerance::default());
        // Element 1: |-2 - -2.5| = 0.5, rel 0.5 / 2.5 = 0.2.
        // Element 3: |0 - 0.25| = 0.25, rel 0.25 / 0.25 = 1.
        assert_eq!(
            d,
            OutputDiff::Float {
                name: "y".into(),
                max_abs: 0.5,
                max_rel: 1.0,
                within_tolerance: false,
                argmax_agree: None,
            }
        );
        assert!(!c.agree);
        assert_eq!(c.max_abs(), 0.5);
        assert_eq!(c.max_rel(), 1.0);
        assert_eq!(c.score(), 1e300 * 2.0);

        // A value not exactly representable: the f32 values, widened.
        let a = 0.1f32;
        let b = 0.1001f32;
        let (d, _) = single(f32s(&[1], &[a]), f32s(&[1], &[b]), Tolerance::default());
        let abs = (f64::from(a) - f64::from(b)).abs();
        let OutputDiff::Float {
            max_abs,
            max_rel,
            within_tolerance,
            ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(max_abs, abs);
        assert_eq!(max_rel, abs / f64::from(b));
        assert!(!within_tolerance);
        // |a - b| is about 1.00002e-4, just over 1e-3 * |a|.
        let loose = Tolerance {
            atol: 0.0,
            rtol: 1.01e-3,
        };
        let (d, c) = single(f32s(&[1], &[a]), f32s(&[1], &[b]), loose);
        assert!(c.agree, "{d:?}");
        assert!(c.score() < 1e-3);
    }

    #[test]
    fn tolerance_is_relative_to_the_primary() {
        let tol = Tolerance {
            atol: 0.0,
            rtol: 0.1,
        };
        // |10 - 11| = 1 <= 0.1 * 10.
        assert!(
            single(f64s(&[1], &[10.0]), f64s(&[1], &[11.0]), tol)
                .1
                .agree
        );
        // |10 - 11| = 1 > 0.1 * 9.9.
        assert!(!single(f64s(&[1], &[9.9]), f64s(&[1], &[11.0]), tol).1.agree);
    }

    #[test]
    fn class_scores_flipped_argmax_disagree_despite_tolerance() {
        let p = [0.1f32, 0.5, 0.4, 0.7, 0.2, 0.1];
        let s = [0.1f32, 0.44, 0.46, 0.7, 0.2, 0.1];
        let loose = Tolerance {
            atol: 0.1,
            rtol: 0.0,
        };
        let (d, c) = single(f32s(&[2, 3], &p), f32s(&[2, 3], &s), loose);
        let OutputDiff::Float {
            within_tolerance,
            argmax_agree,
            ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(within_tolerance);
        assert_eq!(argmax_agree, Some(false));
        assert!(!c.agree);
        assert!(c.score() >= 1e300);
    }

    #[test]
    fn class_scores_slightly_different_same_argmax_agree() {
        let p = [0.1f32, 0.5, 0.4, 0.7, 0.2, 0.1];
        let s = [0.12f32, 0.48, 0.4, 0.69, 0.2, 0.11];
        let (d, c) = single(f32s(&[2, 3], &p), f32s(&[2, 3], &s), Tolerance::default());
        let OutputDiff::Float {
            within_tolerance,
            argmax_agree,
            ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(!within_tolerance);
        assert_eq!(argmax_agree, Some(true));
        assert!(c.agree);
        assert!(c.score() < 1.0);
    }

    #[test]
    fn argmax_only_for_class_score_shapes() {
        let argmax = |shape: &[i64], n: usize| {
            let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
            match single(f32s(shape, &v), f32s(shape, &v), Tolerance::default()).0 {
                OutputDiff::Float { argmax_agree, .. } => argmax_agree,
                d => panic!("{d:?}"),
            }
        };
        assert_eq!(argmax(&[4], 4), None);
        assert_eq!(argmax(&[4, 1], 4), None);
        assert_eq!(argmax(&[], 1), None);
        assert_eq!(argmax(&[2, 2], 4), Some(true));
        assert_eq!(argmax(&[2, 2, 3], 12), Some(true));
        assert_eq!(argmax(&[0, 3], 0), Some(true));
    }

    #[test]
    fn argmax_first_max_wins_and_nan_is_smallest() {
        let get = |p: &[f32], s: &[f32]| match single(
            f32s(&[1, p.len() as i64], p),
            f32s(&[1, s.len() as i64], s),
            Tolerance {
                atol: 10.0,
                rtol: 0.0,
            },
        )
        .0
        {
            OutputDiff::Float { argmax_agree, .. } => argmax_agree,
            d => panic!("{d:?}"),
        };
        // Ties: the first maximum (index 1) on both sides.
        assert_eq!(get(&[0.0, 1.0, 1.0], &[0.0, 1.0, 0.5]), Some(true));
        assert_eq!(get(&[0.0, 1.0, 1.0], &[0.0, 0.5, 1.0]), Some(false));
        // NaN loses to any number, including a leading NaN.
        assert_eq!(get(&[f32::NAN, 0.5, 0.1], &[0.0, 0.5, 0.1]), Some(true));
        assert_eq!(get(&[0.1, f32::NAN, 0.2], &[0.1, 0.0, 0.2]), Some(true));
        // All NaN: index 0 on both sides.
        assert_eq!(
            get(&[f32::NAN, f32::NAN], &[f32::NAN, f32::NAN]),
            Some(true)
        );
    }

    #[test]
    fn nan_handling() {
        let p = [f32::NAN, 1.0];
        let (d, c) = single(f32s(&[2], &p), f32s(&[2], &p), Tolerance::default());
        assert!(c.agree, "{d:?}");
        assert_eq!(c.max_abs(), 0.0);

        let (d, c) = single(
            f32s(&[2], &[f32::NAN, 1.0]),
            f32s(&[2], &[0.0, 1.0]),
            Tolerance {
                atol: 1e30,
                rtol: 1.0,
            },
        );
        let OutputDiff::Float {
            max_abs,
            max_rel,
            within_tolerance,
            ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!((max_abs, max_rel), (f64::INFINITY, f64::INFINITY));
        assert!(!within_tolerance);
        assert!(!c.agree);
        assert!(c.score().is_finite());

        // Infinities: equal ones agree, others do not even with huge atol.
        let tol = Tolerance {
            atol: f64::MAX,
            rtol: 1.0,
        };
        assert!(
            single(
                f64s(&[1], &[f64::INFINITY]),
                f64s(&[1], &[f64::INFINITY]),
                tol
            )
            .1
            .agree
        );
        let (d, c) = single(f64s(&[1], &[f64::INFINITY]), f64s(&[1], &[1.0]), tol);
        assert!(!c.agree, "{d:?}");
        assert_eq!(c.max_rel(), f64::INFINITY);
        // A difference that overflows still has a finite relative value.
        let (_, c) = single(f64s(&[1], &[f64::MAX]), f64s(&[1], &[-f64::MAX]), tol);
        assert_eq!(c.max_abs(), f64::INFINITY);
        assert_eq!(c.max_rel(), 2.0);

        // NaN tolerances never pass a differing element.
        let nan_tol = Tolerance {
            atol: f64::NAN,
            rtol: f64::NAN,
        };
        assert!(
            !single(f64s(&[1], &[1.0]), f64s(&[1], &[2.0]), nan_tol)
                .1
                .agree
        );
        assert!(
            single(f64s(&[1], &[1.0]), f64s(&[1], &[1.0]), nan_tol)
                .1
                .agree
        );
    }

    #[test]
    fn int64_one_element_differs() {
        let (d, c) = single(
            i64s(&[2, 2], &[1, 2, 3, 4]),
            i64s(&[2, 2], &[1, 2, 3, -4]),
            Tolerance::default(),
        );
        assert_eq!(
            d,
            OutputDiff::Exact {
                name: "y".into(),
                equal: false,
                differing: 1
            }
        );
        assert!(!c.agree);
        assert_eq!(c.max_abs(), 0.0);
        assert_eq!(c.score(), 1e300);
    }

    #[test]
    fn bool_differing_counts() {
        let (d, _) = single(
            raw(DataType::Bool, &[3], vec![0, 1, 1]),
            raw(DataType::Bool, &[3], vec![1, 1, 0]),
            Tolerance::default(),
        );
        assert!(matches!(d, OutputDiff::Exact { differing: 2, .. }), "{d:?}");
    }

    #[test]
    fn bytes_equal_and_unequal() {
        let (d, c) = single(strs(&["a", "b"]), strs(&["a", "b"]), Tolerance::default());
        assert!(c.agree, "{d:?}");
        let (d, c) = single(strs(&["a", "b"]), strs(&["a", "c"]), Tolerance::default());
        assert_eq!(
            d,
            OutputDiff::Exact {
                name: "y".into(),
                equal: false,
                differing: 1
            }
        );
        assert!(!c.agree);
    }

    #[test]
    fn mismatches() {
        let tol = Tolerance::default();
        // Missing in the shadow, and an extra output in the shadow.
        let c = compare(
            &[
                ("a".into(), f32s(&[1], &[1.0])),
                ("b".into(), f32s(&[1], &[1.0])),
            ],
            &[
                ("a".into(), f32s(&[1], &[1.0])),
                ("c".into(), f32s(&[1], &[1.0])),
            ],
            tol,
        );
        assert!(!c.agree);
        let names: Vec<&str> = c.outputs.iter().map(OutputDiff::name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(c.outputs[0].agrees());
        assert!(
            matches!(&c.outputs[1], OutputDiff::Mismatch { reason, .. } if reason.contains("shadow"))
        );
        assert!(
            matches!(&c.outputs[2], OutputDiff::Mismatch { reason, .. } if reason.contains("primary"))
        );
        assert_eq!(c.max_abs(), f64::INFINITY);
        assert_eq!(c.max_rel(), f64::INFINITY);
        assert_eq!(c.score(), 1e300 * 11.0);

        // Shape.
        let (d, c) = single(f32s(&[2], &[1.0, 2.0]), f32s(&[1, 2], &[1.0, 2.0]), tol);
        assert!(
            matches!(&d, OutputDiff::Mismatch { reason, .. } if reason.contains("shape")),
            "{d:?}"
        );
        assert!(!c.agree);
        // Datatype.
        let (d, c) = single(f32s(&[1], &[1.0]), f64s(&[1], &[1.0]), tol);
        assert!(
            matches!(&d, OutputDiff::Mismatch { reason, .. } if reason.contains("FP32 vs FP64")),
            "{d:?}"
        );
        assert!(!c.agree);
    }

    #[test]
    fn empty_inputs_and_tensors() {
        let c = compare(&[], &[], Tolerance::default());
        assert!(c.agree);
        assert_eq!((c.max_abs(), c.max_rel(), c.score()), (0.0, 0.0, 0.0));
        let (d, c) = single(f32s(&[0], &[]), f32s(&[0], &[]), Tolerance::default());
        assert!(c.agree, "{d:?}");
        let (d, c) = single(i64s(&[2, 0], &[]), i64s(&[2, 0], &[]), Tolerance::default());
        assert!(c.agree, "{d:?}");
        let (d, c) = single(strs(&[]), strs(&[]), Tolerance::default());
        assert!(c.agree, "{d:?}");
    }

    #[test]
    fn fp16_and_bf16() {
        let h = |v: &[f32]| {
            raw(
                DataType::Fp16,
                &[v.len() as i64],
                v.iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect(),
            )
        };
        let b = |v: &[f32]| {
            raw(
                DataType::Bf16,
                &[v.len() as i64],
                v.iter()
                    .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            )
        };
        // 1.5 and 2.0 are exact in both formats.
        let (_, c) = single(h(&[1.0, 1.5]), h(&[1.0, 2.0]), Tolerance::default());
        assert_eq!((c.max_abs(), c.max_rel()), (0.5, 0.25));
        let (_, c) = single(b(&[1.0, 1.5]), b(&[1.0, 2.0]), Tolerance::default());
        assert_eq!((c.max_abs(), c.max_rel()), (0.5, 0.25));
        let (_, c) = single(h(&[f32::NAN]), h(&[f32::NAN]), Tolerance::default());
        assert!(c.agree);
        let (_, c) = single(b(&[f32::NAN]), b(&[3.0]), Tolerance::default());
        assert!(!c.agree);
    }

    #[test]
    fn by_values_class_shaped_outputs_must_be_close_too() {
        let p = vec![("y".to_string(), f32s(&[1, 4], &[1.0, 2.0, 3.0, 4.0]))];
        let s = vec![("y".to_string(), f32s(&[1, 4], &[2.0, 4.0, 6.0, 8.0]))];
        let by_argmax = compare_by(&p, &s, Tolerance::default(), Agreement::Argmax);
        assert!(by_argmax.agree, "same argmax in the one row");
        let by_values = compare_by(&p, &s, Tolerance::default(), Agreement::Values);
        assert!(!by_values.agree);
        assert_eq!(by_values.max_abs(), 4.0);
        assert_eq!(by_values.max_rel(), 0.5);
        let same = compare_by(&p, &p, Tolerance::default(), Agreement::Values);
        assert!(same.agree);
        assert_eq!(same.max_abs(), 0.0);
    }
}
