//! `sluice models inventory`: the gateway's `GET /admin/inventory` as a
//! table (or its JSON with `--json`).

use anyhow::Context;
use serde_json::Value;

use crate::rollout::{Target, call};

pub fn run(target: &Target, json: bool) -> anyhow::Result<()> {
    let answer = call(target, reqwest::Method::GET, "/admin/inventory", None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let models = answer
        .get("models")
        .and_then(Value::as_array)
        .context("the gateway's inventory has no models list")?;
    for model in models {
        println!("{}", text(model, "model"));
        for v in model["versions"].as_array().into_iter().flatten() {
            let roles: Vec<String> = v["roles"]
                .as_array()
                .into_iter()
                .flatten()
                .map(role_line)
                .collect();
            let sha = text(v, "sha256");
            println!(
                "  {:<4} {:<11} sha256 {}  signer {}  validation {}  {}",
                v["version"],
                text(v, "state"),
                sha.get(..16).unwrap_or(&sha),
                v["signer"]["key_id"].as_str().unwrap_or("-"),
                match v["validation"]["passed"].as_bool() {
                    Some(true) => "passed",
                    Some(false) => "FAILED",
                    None => "-",
                },
                if roles.is_empty() {
                    "no traffic".to_string()
                } else {
                    roles.join("; ")
                },
            );
            if let Some(lineage) = v["lineage"].as_object().filter(|l| !l.is_empty()) {
                let pairs: Vec<String> = lineage
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(&v.to_string())))
                    .collect();
                println!("       lineage {}", pairs.join(" "));
            }
        }
    }
    Ok(())
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `canary 25% since 2026-11-26T12:00:00.000Z by alice (policy.set)`.
fn role_line(role: &Value) -> String {
    let what = match role["role"].as_str().unwrap_or("?") {
        "stable" => format!(
            "stable {:.0}%{}",
            role["share"].as_f64().unwrap_or(1.0) * 100.0,
            if role["implicit"].as_bool() == Some(true) {
                " (highest version, no policy)"
            } else {
                ""
            }
        ),
        "canary" => format!(
            "canary {:.0}%",
            role["weight"].as_f64().unwrap_or(0.0) * 100.0
        ),
        "shadow" => format!("shadow {}% copied", role["percent"]),
        other => other.to_string(),
    };
    match role["since"].as_object() {
        Some(since) => format!(
            "{what} since {} by {} ({})",
            since["time"].as_str().unwrap_or("?"),
            since["actor"].as_str().unwrap_or("?"),
            since["action"].as_str().unwrap_or("?"),
        ),
        None => what,
    }
}
