//! Progressive rollout decisions.
//!
//! A [`Plan`] raises a canary's traffic weight step by step. After each
//! interval the server measures both versions over the window
//! ([`WindowStats`]) and asks [`decide`] whether to hold, advance, promote
//! or roll back. Every decision comes with its evidence as JSON (each gate's
//! value, threshold and outcome, including the gates that were skipped) so
//! the audit log shows why a rollout moved.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What one version did over a window (the server computes these from its
/// metric counters and latency histogram by subtracting the counters at the
/// window's start from those at its end).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WindowStats {
    /// Requests answered in the window.
    pub requests: u64,
    /// Of those, requests that failed.
    pub errors: u64,
    /// 99th-percentile latency in the window, seconds; `None` without data.
    pub p99_seconds: Option<f64>,
}

impl WindowStats {
    /// Errors per request, 0 when there were no requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "p99_seconds": self.p99_seconds,
        })
    }
}

/// A quantile `q` in `[0, 1]` (p99 is 0.99) of the observations made between
/// two snapshots of a histogram, as Prometheus's `histogram_quantile` would
/// compute it over their difference.
///
/// `bounds` are the finite upper bounds, strictly ascending; `before` and
/// `after` the per-bucket (not cumulative) counts, with one extra final
/// element for the `+Inf` bucket. A bucket whose count went down (the series
/// was reset) counts as empty. Inside a bucket the value is interpolated
/// linearly (from 0 for the first bucket when its bound is positive); a
/// quantile in the `+Inf` bucket is the highest finite bound. `None` when
/// nothing was observed, `q` is outside `[0, 1]`, there is no finite bound,
/// the bounds are not finite and ascending, or the lengths do not fit.
pub fn window_quantile(q: f64, bounds: &[f64], before: &[u64], after: &[u64]) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let highest = *bounds.last()?;
    if before.len() != bounds.len() + 1 || after.len() != bounds.len() + 1 {
        return None;
    }
    if bounds.iter().any(|b| !b.is_finite()) || bounds.windows(2).any(|w| w[0] >= w[1]) {
        return None;
    }
    let counts: Vec<u64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let total: u128 = counts.iter().map(|&c| u128::from(c)).sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below: u128 = 0;
    for (i, &count) in counts.iter().enumerate() {
        let start_count = below;
        below += u128::from(count);
        // An empty bucket never holds the quantile (this matters for q = 0).
        if count == 0 || (below as f64) < rank {
            continue;
        }
        let Some(&end) = bounds.get(i) else {
            return Some(highest);
        };
        let start = match i.checked_sub(1).and_then(|j| bounds.get(j)) {
            Some(&b) => b,
            None if end > 0.0 => 0.0,
            None => return Some(end),
        };
        let within = ((rank - start_count as f64) / count as f64).clamp(0.0, 1.0);
        return Some(start + (end - start) * within);
    }
    Some(highest)
}

/// The thresholds a canary must meet in each window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Fewer canary requests in a window than this → hold (too little
    /// evidence to advance). Default 20.
    pub min_requests: u64,
    /// Canary error rate minus stable's above this → roll back. Default 0.01.
    pub max_error_rate_increase: f64,
    /// Canary p99 / stable p99 above this → roll back (skipped when either
    /// p99 is unknown). Default 1.5.
    pub max_p99_ratio: f64,
    /// When set and the canary has shadow comparisons in the window, an
    /// agreement rate below this → roll back. Default unset.
    pub min_shadow_agreement: Option<f64>,
}

impl Default for Gates {
    /// The defaults documented on each field.
    fn default() -> Gates {
        Gates {
            min_requests: 20,
            max_error_rate_increase: 0.01,
            max_p99_ratio: 1.5,
            min_shadow_agreement: None,
        }
    }
}

/// A progressive rollout: which version is the canary, the weights it goes
/// through, how long each lasts, and the gates between them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The canary version.
    pub canary: u64,
    /// Canary weights in percent, strictly ascending, each in `(0, 100]`,
    /// the last 100.
    pub steps: Vec<f64>,
    /// Seconds each step lasts before it is judged; > 0.
    pub interval_s: f64,
    /// The thresholds checked at the end of each step.
    #[serde(default)]
    pub gates: Gates,
}

impl Plan {
    /// Checks the steps, interval and gates, saying what is wrong.
    pub fn check(&self) -> Result<(), String> {
        check_steps(&self.steps)?;
        if !(self.interval_s.is_finite() && self.interval_s > 0.0) {
            return Err(format!(
                "interval must be a positive number of seconds, not {}",
                self.interval_s
            ));
        }
        let g = &self.gates;
        if !(g.max_error_rate_increase.is_finite() && g.max_error_rate_increase >= 0.0) {
            return Err(format!(
                "max_error_rate_increase must be a number >= 0, not {}",
                g.max_error_rate_increase
            ));
        }
        if !(g.max_p99_ratio.is_finite() && g.max_p99_ratio > 0.0) {
            return Err(format!(
                "max_p99_ratio must be a number > 0, not {}",
                g.max_p99_ratio
            ));
        }
        if let Some(a) = g.min_shadow_agreement
            && !(0.0..=1.0).contains(&a)
        {
            return Err(format!("min_shadow_agreement must be in [0, 1], not {a}"));
        }
        Ok(())
    }
}

/// Checks rollout steps: non-empty, each in `(0, 100]`, strictly
/// ascending, the last 100.
fn check_steps(steps: &[f64]) -> Result<(), String> {
    let Some(&last) = steps.last() else {
        return Err("steps must not be empty".to_string());
    };
    if let Some(s) = steps.iter().find(|s| !(**s > 0.0 && **s <= 100.0)) {
        return Err(format!("step {s} is not a percentage in (0, 100]"));
    }
    if let Some(w) = steps.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!(
            "steps must be strictly ascending, but {} is followed by {}",
            w[0], w[1]
        ));
    }
    if last != 100.0 {
        return Err(format!("the last step must be 100, not {last}"));
    }
    Ok(())
}

/// What to do with a rollout at the end of a window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Keep the current weight for another window.
    Hold {
        /// Why (e.g. too few requests).
        reason: String,
    },
    /// Raise the canary's weight.
    Advance {
        /// The next step's weight, percent.
        to_percent: f64,
    },
    /// The last step passed: the canary becomes the stable version.
    Promote,
    /// A gate failed: send all traffic back to the stable version.
    Rollback {
        /// Which gate failed, with its value and threshold.
        reason: String,
    },
}

/// The gates, in the order they are checked.
const GATE_ERROR: &str = "error_rate_increase";
const GATE_MIN_REQUESTS: &str = "min_requests";
const GATE_P99: &str = "p99_ratio";
const GATE_AGREEMENT: &str = "shadow_agreement";

/// One gate's entry in the evidence.
fn gate_json(
    gate: &str,
    value: Option<f64>,
    threshold: Option<f64>,
    passed: Option<bool>,
    note: Option<&str>,
) -> Value {
    json!({
        "gate": gate,
        "value": value,
        "threshold": threshold,
        "passed": passed,
        "note": note,
    })
}

/// Decides what to do with a rollout at the end of a window, and returns
/// the evidence: both sides' window stats, the shadow agreement, and every
/// gate's value, threshold and outcome (`null` value and outcome, with a
/// note, for a gate that was not evaluated), the step and its weight.
///
/// `step` indexes `plan.steps`: the weight in force during the window.
/// `shadow_agreement` is (agreed, compared) for the canary's shadow
/// comparisons in the window, if any were made.
///
/// The gates, in order: (1) the canary's error rate exceeds stable's by more
/// than allowed → roll back, even below `min_requests` (errors are evidence;
/// at least one error is needed); (2) too few canary requests → hold; (3)
/// canary p99 / stable p99 too high → roll back; (4) shadow agreement too
/// low → roll back; otherwise advance to the next step, or promote after
/// the last. An invalid plan or a `step` out of range holds.
pub fn decide(
    plan: &Plan,
    step: usize,
    stable: &WindowStats,
    canary: &WindowStats,
    shadow_agreement: Option<(u64, u64)>,
) -> (Decision, Value) {
    let g = &plan.gates;
    let mut gates = Vec::with_capacity(4);
    let mut decision: Option<Decision> = None;
    const DECIDED: &str = "not evaluated: an earlier check decided";

    if let Err(e) = plan.check() {
        decision = Some(Decision::Hold {
            reason: format!("invalid plan: {e}"),
        });
    } else if step >= plan.steps.len() {
        decision = Some(Decision::Hold {
            reason: format!(
                "step {step} is out of range: the plan has {} steps",
                plan.steps.len()
            ),
        });
    }

    // (1) Error rate increase.
    let threshold = Some(g.max_error_rate_increase);
    if decision.is_some() {
        gates.push(gate_json(GATE_ERROR, None, threshold, None, Some(DECIDED)));
    } else if canary.requests == 0 {
        gates.push(gate_json(
            GATE_ERROR,
            None,
            threshold,
            None,
            Some("not evaluated: no canary requests"),
        ));
    } else {
        let increase = canary.error_rate() - stable.error_rate();
        let failed = canary.errors > 0 && increase > g.max_error_rate_increase;
        gates.push(gate_json(
            GATE_ERROR,
            Some(increase),
            threshold,
            Some(!failed),
            None,
        ));
        if failed {
            decision = Some(Decision::Rollback {
                reason: format!(
                    "canary error rate {:.4} ({} of {}) exceeds stable's {:.4} by {:.4}, more than {}",
                    canary.error_rate(),
                    canary.errors,
                    canary.requests,
                    stable.error_rate(),
                    increase,
                    g.max_error_rate_increase
                ),
            });
        }
    }

    // (2) Minimum requests.
    let threshold = Some(g.min_requests as f64);
    if decision.is_some() {
        gates.push(gate_json(
            GATE_MIN_REQUESTS,
            None,
            threshold,
            None,
            Some(DECIDED),
        ));
    } else {
        let passed = canary.requests >= g.min_requests;
        gates.push(gate_json(
            GATE_MIN_REQUESTS,
            Some(canary.requests as f64),
            threshold,
            Some(passed),
            None,
        ));
        if !passed {
            decision = Some(Decision::Hold {
                reason: format!("{} of {} requests", canary.requests, g.min_requests),
            });
        }
    }

    // (3) Latency ratio.
    let threshold = Some(g.max_p99_ratio);
    let p99s = match (stable.p99_seconds, canary.p99_seconds) {
        (Some(s), Some(c)) if s.is_finite() && c.is_finite() && c >= 0.0 => Some((s, c)),
        _ => None,
    };
    if decision.is_some() {
        gates.push(gate_json(GATE_P99, None, threshold, None, Some(DECIDED)));
    } else {
        match p99s {
            None => gates.push(gate_json(
                GATE_P99,
                None,
                threshold,
                None,
                Some("not evaluated: a side has no p99"),
            )),
            Some((s, _)) if s <= 0.0 => gates.push(gate_json(
                GATE_P99,
                None,
                threshold,
                None,
                Some("not evaluated: stable p99 is 0"),
            )),
            Some((s, c)) => {
                let ratio = c / s;
                let passed = ratio <= g.max_p99_ratio;
                gates.push(gate_json(
                    GATE_P99,
                    Some(ratio),
                    threshold,
                    Some(passed),
                    None,
                ));
                if !passed {
                    decision = Some(Decision::Rollback {
                        reason: format!(
                            "canary p99 {c:.4} s is {ratio:.2} times stable's {s:.4} s, more than {}",
                            g.max_p99_ratio
                        ),
                    });
                }
            }
        }
    }

    // (4) Shadow agreement.
    let threshold = g.min_shadow_agreement;
    if decision.is_some() {
        gates.push(gate_json(
            GATE_AGREEMENT,
            None,
            threshold,
            None,
            Some(DECIDED),
        ));
    } else {
        match (g.min_shadow_agreement, shadow_agreement) {
            (None, _) => gates.push(gate_json(
                GATE_AGREEMENT,
                None,
                None,
                None,
                Some("not evaluated: gate off"),
            )),
            (Some(_), None | Some((_, 0))) => gates.push(gate_json(
                GATE_AGREEMENT,
                None,
                threshold,
                None,
                Some("not evaluated: no shadow comparisons"),
            )),
            (Some(min), Some((agreed, compared))) => {
                let rate = agreed as f64 / compared as f64;
                let passed = rate >= min;
                gates.push(gate_json(
                    GATE_AGREEMENT,
                    Some(rate),
                    threshold,
                    Some(passed),
                    None,
                ));
                if !passed {
                    decision = Some(Decision::Rollback {
                        reason: format!(
                            "shadow agreement {rate:.4} ({agreed} of {compared}) is below {min}"
                        ),
                    });
                }
            }
        }
    }

    let decision = decision.unwrap_or_else(|| match plan.steps.get(step + 1) {
        Some(&to_percent) => Decision::Advance { to_percent },
        None => Decision::Promote,
    });
    let shadow = shadow_agreement.map(|(agreed, compared)| {
        json!({
            "agreed": agreed,
            "compared": compared,
            "agreement": (compared > 0).then(|| agreed as f64 / compared as f64),
        })
    });
    let evidence = json!({
        "window": {"stable": stable.to_json(), "canary": canary.to_json()},
        "shadow": shadow,
        "gates": gates,
        "step": step,
        "weight_percent": plan.steps.get(step),
    });
    (decision, evidence)
}

/// Parses rollout steps such as `"5,25,50,100"` (a `%` after a number is
/// allowed), checking them as [`Plan::check`] does.
pub fn parse_steps(s: &str) -> Result<Vec<f64>, String> {
    let steps = s
        .split(',')
        .map(|part| {
            let p = part.trim();
            let p = p.strip_suffix('%').unwrap_or(p).trim_end();
            p.parse::<f64>()
                .map_err(|_| format!("step {:?} is not a number", part.trim()))
        })
        .collect::<Result<Vec<f64>, String>>()?;
    check_steps(&steps)?;
    Ok(steps)
}

/// Parses a duration in seconds: `"60s"`, `"500ms"`, `"2m"`, `"1h"`,
/// `"250us"`, `"1.5s"`; a bare number is seconds. Must be finite and >= 0.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    // (suffix, multiplier, divisor): dividing keeps "500ms" exactly 0.5.
    let units = [
        ("ms", 1.0, 1e3),
        ("us", 1.0, 1e6),
        ("s", 1.0, 1.0),
        ("m", 60.0, 1.0),
        ("h", 3600.0, 1.0),
    ];
    let (number, mul, div) = units
        .into_iter()
        .find_map(|(suffix, mul, div)| t.strip_suffix(suffix).map(|n| (n, mul, div)))
        .unwrap_or((t, 1.0, 1.0));
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 60s, 500ms, 2m)"))?;
    let seconds = value * mul / div;
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(format!("{s:?} is not a finite duration >= 0"));
    }
    Ok(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            canary: 2,
            steps: vec![5.0, 25.0, 50.0, 100.0],
            interval_s: 60.0,
            gates: Gates::default(),
        }
    }

    fn stats(requests: u64, errors: u64, p99: Option<f64>) -> WindowStats {
        WindowStats {
            requests,
            errors,
            p99_seconds: p99,
        }
    }

    /// The gate entry named `name` in the evidence.
    fn gate<'a>(evidence: &'a Value, name: &str) -> &'a Value {
        evidence["gates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["gate"] == name)
            .unwrap()
    }

    fn assert_skipped(evidence: &Value, name: &str) {
        let g = gate(evidence, name);
        assert_eq!(g["value"], Value::Null, "{g}");
        assert_eq!(g["passed"], Value::Null, "{g}");
        assert!(
            g["note"].as_str().unwrap().starts_with("not evaluated"),
            "{g}"
        );
    }

    fn assert_passed(evidence: &Value, name: &str, value: f64) {
        let g = gate(evidence, name);
        assert_eq!(g["passed"], json!(true), "{g}");
        assert_eq!(g["value"], json!(value), "{g}");
        assert_eq!(g["note"], Value::Null, "{g}");
    }

    #[test]
    fn error_rate_rolls_back_even_below_min_requests() {
        let (d, e) = decide(
            &plan(),
            1,
            &stats(100, 0, Some(0.1)),
            &stats(5, 1, None),
            None,
        );
        let Decision::Rollback { reason } = &d else {
            panic!("{d:?}")
        };
        assert!(reason.contains("error rate"), "{reason}");
        let g = gate(&e, "error_rate_increase");
        assert_eq!(g["value"], json!(0.2));
        assert_eq!(g["threshold"], json!(0.01));
        assert_eq!(g["passed"], json!(false));
        assert_skipped(&e, "min_requests");
        assert_skipped(&e, "p99_ratio");
        assert_skipped(&e, "shadow_agreement");
        assert_eq!(e["step"], json!(1));
        assert_eq!(e["weight_percent"], json!(25.0));
        assert_eq!(e["window"]["canary"]["errors"], json!(1));
        assert_eq!(e["window"]["canary"]["error_rate"], json!(0.2));
        assert_eq!(e["window"]["stable"]["requests"], json!(100));
        assert_eq!(e["gates"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn error_increase_within_threshold_passes() {
        // 1% vs 0.5%: +0.005 <= 0.01.
        let (d, e) = decide(&plan(), 0, &stats(200, 1, None), &stats(100, 1, None), None);
        assert_eq!(d, Decision::Advance { to_percent: 25.0 });
        assert_passed(&e, "error_rate_increase", 0.01 - 0.005);
    }

    #[test]
    fn too_few_requests_hold() {
        let (d, e) = decide(&plan(), 0, &stats(100, 0, None), &stats(12, 0, None), None);
        assert_eq!(
            d,
            Decision::Hold {
                reason: "12 of 20 requests".into()
            }
        );
        assert_passed(&e, "error_rate_increase", 0.0);
        let g = gate(&e, "min_requests");
        assert_eq!(g["value"], json!(12.0));
        assert_eq!(g["threshold"], json!(20.0));
        assert_eq!(g["passed"], json!(false));
        assert_skipped(&e, "p99_ratio");
        assert_skipped(&e, "shadow_agreement");

        // No canary requests at all: the error gate is not evaluated.
        let (d, e) = decide(&plan(), 0, &stats(100, 5, None), &stats(0, 0, None), None);
        assert!(matches!(d, Decision::Hold { .. }), "{d:?}");
        assert_skipped(&e, "error_rate_increase");
    }

    #[test]
    fn latency_ratio_rolls_back() {
        let (d, e) = decide(
            &plan(),
            2,
            &stats(100, 0, Some(0.1)),
            &stats(100, 0, Some(0.2)),
            Some((100, 100)),
        );
        assert!(
            matches!(&d, Decision::Rollback { reason } if reason.contains("p99")),
            "{d:?}"
        );
        let g = gate(&e, "p99_ratio");
        assert_eq!(g["value"], json!(2.0));
        assert_eq!(g["threshold"], json!(1.5));
        assert_eq!(g["passed"], json!(false));
        assert_skipped(&e, "shadow_agreement");
        assert_eq!(e["shadow"]["agreement"], json!(1.0));
    }

    #[test]
    fn latency_gate_skipped_without_p99_or_zero_stable() {
        for (s, c) in [
            (None, Some(1.0)),
            (Some(0.1), None),
            (Some(0.0), Some(1.0)),
            (Some(f64::NAN), Some(1.0)),
        ] {
            let (d, e) = decide(&plan(), 0, &stats(100, 0, s), &stats(100, 0, c), None);
            assert_eq!(d, Decision::Advance { to_percent: 25.0 }, "{s:?} {c:?}");
            assert_skipped(&e, "p99_ratio");
        }
    }

    #[test]
    fn agreement_rolls_back() {
        let mut p = plan();
        p.gates.min_shadow_agreement = Some(0.95);
        let (d, e) = decide(
            &p,
            0,
            &stats(100, 0, Some(0.1)),
            &stats(100, 0, Some(0.12)),
            Some((90, 100)),
        );
        assert!(
            matches!(&d, Decision::Rollback { reason } if reason.contains("90 of 100")),
            "{d:?}"
        );
        assert_passed(&e, "p99_ratio", 0.12 / 0.1);
        let g = gate(&e, "shadow_agreement");
        assert_eq!(g["value"], json!(0.9));
        assert_eq!(g["threshold"], json!(0.95));
        assert_eq!(g["passed"], json!(false));

        // Enough agreement advances; no comparisons skip the gate.
        let (d, e) = decide(
            &p,
            0,
            &stats(100, 0, None),
            &stats(100, 0, None),
            Some((96, 100)),
        );
        assert_eq!(d, Decision::Advance { to_percent: 25.0 });
        assert_passed(&e, "shadow_agreement", 0.96);
        for sa in [None, Some((0, 0))] {
            let (d, e) = decide(&p, 0, &stats(100, 0, None), &stats(100, 0, None), sa);
            assert_eq!(d, Decision::Advance { to_percent: 25.0 });
            assert_skipped(&e, "shadow_agreement");
        }
    }

    #[test]
    fn advance_and_promote() {
        let stable = stats(1000, 2, Some(0.1));
        let canary = stats(50, 0, Some(0.11));
        let (d, e) = decide(&plan(), 0, &stable, &canary, None);
        assert_eq!(d, Decision::Advance { to_percent: 25.0 });
        assert_passed(&e, "error_rate_increase", -0.002);
        assert_passed(&e, "min_requests", 50.0);
        assert_passed(&e, "p99_ratio", 0.11 / 0.1);
        assert_skipped(&e, "shadow_agreement");
        assert_eq!(gate(&e, "shadow_agreement")["threshold"], Value::Null);
        assert_eq!(e["shadow"], Value::Null);
        let (d, e) = decide(&plan(), 3, &stable, &canary, None);
        assert_eq!(d, Decision::Promote);
        assert_eq!(e["weight_percent"], json!(100.0));
    }

    #[test]
    fn invalid_plan_or_step_holds() {
        let s = stats(100, 50, None);
        let (d, e) = decide(&plan(), 4, &s, &s, None);
        assert!(
            matches!(&d, Decision::Hold { reason } if reason.contains("out of range")),
            "{d:?}"
        );
        assert_eq!(e["weight_percent"], Value::Null);
        for name in [
            "error_rate_increase",
            "min_requests",
            "p99_ratio",
            "shadow_agreement",
        ] {
            assert_skipped(&e, name);
        }
        let mut p = plan();
        p.steps = vec![];
        let (d, _) = decide(&p, 0, &s, &s, None);
        assert!(
            matches!(&d, Decision::Hold { reason } if reason.contains("invalid plan")),
            "{d:?}"
        );
    }

    #[test]
    fn decision_serialises_tagged() {
        assert_eq!(
            serde_json::to_value(Decision::Advance { to_percent: 50.0 }).unwrap(),
            json!({"decision": "advance", "to_percent": 50.0})
        );
        assert_eq!(
            serde_json::to_value(Decision::Promote).unwrap(),
            json!({"decision": "promote"})
        );
        let d: Decision =
            serde_json::from_value(json!({"decision": "rollback", "reason": "x"})).unwrap();
        assert_eq!(d, Decision::Rollback { reason: "x".into() });
    }

    #[test]
    fn quantile_interpolates() {
        let bounds = [0.1, 0.5, 1.0];
        let zero = [0, 0, 0, 0];
        let after = [10, 80, 10, 0];
        // p99: rank 99 falls in (0.5, 1.0], 9 of its 10: 0.5 + 0.5 * 0.9.
        let q = window_quantile(0.99, &bounds, &zero, &after).unwrap();
        assert!((q - 0.95).abs() < 1e-12, "{q}");
        // p50: rank 50 in (0.1, 0.5], 40 of 80: 0.1 + 0.4 * 0.5.
        let q = window_quantile(0.5, &bounds, &zero, &after).unwrap();
        assert!((q - 0.3).abs() < 1e-12, "{q}");
        // The first bucket starts at 0: rank 5 of 10 → 0.05.
        let q = window_quantile(0.05, &bounds, &zero, &after).unwrap();
        assert!((q - 0.05).abs() < 1e-12, "{q}");
        // The same window as the difference of two snapshots.
        let q = window_quantile(0.99, &bounds, &[5, 5, 0, 3], &[15, 85, 10, 3]).unwrap();
        assert!((q - 0.95).abs() < 1e-12, "{q}");
        // q = 0: the start of the first non-empty bucket.
        assert_eq!(
            window_quantile(0.0, &bounds, &zero, &[0, 4, 0, 0]),
            Some(0.1)
        );
        // q = 1: the end of the last non-empty bucket.
        assert_eq!(
            window_quantile(1.0, &bounds, &zero, &[0, 4, 0, 0]),
            Some(0.5)
        );
    }

    #[test]
    fn quantile_edges() {
        let bounds = [0.1, 0.5, 1.0];
        let zero = [0, 0, 0, 0];
        // All observations above the highest bound.
        assert_eq!(
            window_quantile(0.99, &bounds, &zero, &[0, 0, 0, 7]),
            Some(1.0)
        );
        // p99 in the +Inf bucket.
        assert_eq!(
            window_quantile(0.99, &bounds, &zero, &[90, 0, 0, 10]),
            Some(1.0)
        );
        // Nothing observed in the window.
        assert_eq!(
            window_quantile(0.99, &bounds, &[3, 1, 0, 0], &[3, 1, 0, 0]),
            None
        );
        // A reset counter counts as empty, not as a huge count.
        assert_eq!(
            window_quantile(0.99, &bounds, &[9, 0, 0, 0], &[1, 0, 0, 0]),
            None
        );
        // Hostile inputs.
        assert_eq!(window_quantile(0.99, &[], &[0], &[5]), None);
        assert_eq!(window_quantile(0.99, &bounds, &zero, &[1, 2]), None);
        assert_eq!(
            window_quantile(f64::NAN, &bounds, &zero, &[1, 0, 0, 0]),
            None
        );
        assert_eq!(window_quantile(1.5, &bounds, &zero, &[1, 0, 0, 0]), None);
        assert_eq!(window_quantile(0.5, &[1.0, 0.5], &[0; 3], &[1, 1, 0]), None);
        assert_eq!(window_quantile(0.5, &[f64::NAN], &[0; 2], &[1, 1]), None);
        let big = [u64::MAX, u64::MAX, 0, 0];
        assert!(window_quantile(0.5, &bounds, &zero, &big).is_some());
        // A non-positive first bound is returned as is.
        assert_eq!(
            window_quantile(0.5, &[-1.0, 1.0], &[0; 3], &[4, 0, 0]),
            Some(-1.0)
        );
    }

    #[test]
    fn plan_checks() {
        assert_eq!(plan().check(), Ok(()));
        let with = |f: &dyn Fn(&mut Plan)| {
            let mut p = plan();
            f(&mut p);
            p.check()
        };
        assert!(with(&|p| p.steps = vec![]).unwrap_err().contains("empty"));
        assert!(
            with(&|p| p.steps = vec![50.0, 25.0, 100.0])
                .unwrap_err()
                .contains("ascending")
        );
        assert!(
            with(&|p| p.steps = vec![50.0, 50.0, 100.0])
                .unwrap_err()
                .contains("ascending")
        );
        assert!(
            with(&|p| p.steps = vec![50.0, 150.0])
                .unwrap_err()
                .contains("(0, 100]")
        );
        assert!(
            with(&|p| p.steps = vec![0.0, 100.0])
                .unwrap_err()
                .contains("(0, 100]")
        );
        assert!(with(&|p| p.steps = vec![f64::NAN, 100.0]).is_err());
        assert!(
            with(&|p| p.steps = vec![5.0, 50.0])
                .unwrap_err()
                .contains("last")
        );
        assert!(
            with(&|p| p.interval_s = 0.0)
                .unwrap_err()
                .contains("interval")
        );
        assert!(with(&|p| p.interval_s = f64::INFINITY).is_err());
        assert!(with(&|p| p.gates.max_error_rate_increase = f64::NAN).is_err());
        assert!(with(&|p| p.gates.max_p99_ratio = 0.0).is_err());
        assert!(with(&|p| p.gates.min_shadow_agreement = Some(1.5)).is_err());
        assert_eq!(with(&|p| p.steps = vec![100.0]), Ok(()));
    }

    #[test]
    fn plan_and_gates_deserialise_with_defaults() {
        let p: Plan =
            toml::from_str("canary = 3\nsteps = [10.0, 100.0]\ninterval_s = 30.0\n").unwrap();
        assert_eq!(p.gates, Gates::default());
        let p: Plan = toml::from_str(
            "canary = 3\nsteps = [10.0, 100.0]\ninterval_s = 30.0\n[gates]\nmin_requests = 5\n",
        )
        .unwrap();
        assert_eq!(p.gates.min_requests, 5);
        assert_eq!(p.gates.max_p99_ratio, 1.5);
        let err = toml::from_str::<Plan>(
            "canary = 3\nsteps = [100.0]\ninterval_s = 30.0\n[gates]\nmin_request = 5\n",
        );
        assert!(err.is_err());
    }

    #[test]
    fn parse_helpers() {
        assert_eq!(parse_steps("5,25,50,100"), Ok(vec![5.0, 25.0, 50.0, 100.0]));
        assert_eq!(parse_steps(" 1.5 , 10%, 100 "), Ok(vec![1.5, 10.0, 100.0]));
        assert!(parse_steps("").is_err());
        assert!(parse_steps("5,,100").is_err());
        assert!(parse_steps("5,x,100").unwrap_err().contains("\"x\""));
        assert!(parse_steps("50,25,100").is_err());
        assert!(parse_steps("5,50").is_err());
        assert!(parse_steps("nan,100").is_err());

        assert_eq!(parse_duration("60s"), Ok(60.0));
        assert_eq!(parse_duration("500ms"), Ok(0.5));
        assert_eq!(parse_duration("2m"), Ok(120.0));
        assert_eq!(parse_duration("1.5s"), Ok(1.5));
        assert_eq!(parse_duration("1h"), Ok(3600.0));
        assert_eq!(parse_duration("250us"), Ok(250e-6));
        assert_eq!(parse_duration(" 45 "), Ok(45.0));
        assert_eq!(parse_duration("0"), Ok(0.0));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("infs").is_err());
        assert!(parse_duration("NaN").is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("5 days").is_err());
    }
}
