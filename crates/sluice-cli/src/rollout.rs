//! `sluice rollout ...` and `sluice audit ...`: clients of a running
//! gateway's admin API (`/admin/...`), plus `audit verify`, which checks the
//! registry's audit log file itself.
//!
//! The admin key comes from `SLUICE_ADMIN_KEY` or `--admin-key-file`, never
//! from a flag (flags show up in process lists and shell histories).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sluice_rollout::gates::{Gates, Plan, parse_duration, parse_steps};
use sluice_rollout::policy::{Canary, Shadow, TrafficPolicy};

/// Where the gateway is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Base URL of the gateway
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// File holding the admin key (else SLUICE_ADMIN_KEY)
    #[arg(long, env = "SLUICE_ADMIN_KEY_FILE", value_name = "FILE")]
    pub admin_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show a model's traffic policy and its rollout, if one runs.
    Status {
        model: String,
        #[command(flatten)]
        target: Target,
    },
    /// Change a model's traffic policy; flags not given keep their value.
    Set {
        model: String,
        /// The version requests go to by default
        #[arg(long)]
        stable: Option<u64>,
        /// The canary version (with --weight)
        #[arg(long)]
        canary: Option<u64>,
        /// The canary's share of traffic, 0 to 1
        #[arg(long)]
        weight: Option<f64>,
        /// Remove the canary
        #[arg(long, conflicts_with_all = ["canary", "weight"])]
        no_canary: bool,
        /// A shadow version and the percentage of requests it gets a copy
        /// of, as VERSION:PERCENT, or VERSION:PERCENT:values to judge
        /// agreement by every value instead of the argmax of class scores
        /// (repeatable; replaces the shadows)
        #[arg(long = "shadow", value_name = "VERSION:PERCENT[:values]")]
        shadows: Vec<String>,
        /// Remove every shadow
        #[arg(long, conflicts_with = "shadows")]
        no_shadows: bool,
        /// Request header that pins a caller to one side (e.g. x-user-id)
        #[arg(long)]
        sticky_header: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Make the canary the stable version.
    Promote {
        model: String,
        #[command(flatten)]
        target: Target,
    },
    /// Send all traffic back to the stable version (canary weight 0), and
    /// stop a running rollout. Takes effect on the next request.
    Rollback {
        model: String,
        #[command(flatten)]
        target: Target,
    },
    /// Start a progressive rollout: the canary steps through the weights,
    /// one step per interval while the gates pass; it is promoted after the
    /// last step and rolled back when a gate fails.
    Start {
        model: String,
        /// The version to roll out
        #[arg(long)]
        canary: u64,
        /// Canary weights in percent, ascending, ending at 100
        #[arg(long, default_value = "5,25,50,100")]
        steps: String,
        /// Length of each step's window (e.g. 60s, 5m)
        #[arg(long, default_value = "60s")]
        interval: String,
        /// Fewest canary requests in a window for a step to count
        #[arg(long, default_value_t = Gates::default().min_requests)]
        min_requests: u64,
        /// Largest allowed canary error rate minus stable's (0.01 = 1 point)
        #[arg(long, default_value_t = Gates::default().max_error_rate_increase)]
        max_error_increase: f64,
        /// Largest allowed canary p99 / stable p99
        #[arg(long, default_value_t = Gates::default().max_p99_ratio)]
        max_p99_ratio: f64,
        /// Smallest allowed shadow agreement of the canary (0 to 1), when it
        /// was shadowed
        #[arg(long)]
        min_shadow_agreement: Option<f64>,
        #[command(flatten)]
        target: Target,
    },
    /// Stop a running rollout where it stands (the weight stays).
    Stop {
        model: String,
        #[command(flatten)]
        target: Target,
    },
    /// The most different answers of a shadow version, and its agreement.
    Diffs {
        model: String,
        version: u64,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the registry's audit log; fails on any
    /// changed, removed or reordered entry.
    Verify {
        /// The model repository (a directory or s3://BUCKET/PREFIX)
        #[arg(long, env = "SLUICE_MODELS", default_value = "models")]
        models: PathBuf,
    },
    /// Show the latest audit records through a gateway's admin API.
    Show {
        /// Only this model's records
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
}

fn admin_key(target: &Target) -> anyhow::Result<String> {
    let key = match &target.admin_key_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the admin key file {}", path.display()))?,
        None => std::env::var("SLUICE_ADMIN_KEY").map_err(|_| {
            anyhow::anyhow!("no admin key: set SLUICE_ADMIN_KEY or pass --admin-key-file")
        })?,
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        bail!("the admin key is empty");
    }
    Ok(key)
}

/// One admin API call; the JSON answer, or the server's error message.
pub(crate) fn call(
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let key = admin_key(target)?;
    let url = format!("{}{path}", target.url.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut request = client.request(method, &url).bearer_auth(&key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            bail!("{status}: {message}");
        }
        Ok(value)
    })
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

fn policy_path(model: &str) -> String {
    format!("/admin/models/{model}/policy")
}

pub fn run_rollout(command: RolloutCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        RolloutCommand::Status { model, target } => {
            let mut status = call(&target, Method::GET, &policy_path(&model), None)?;
            if let Ok(rollout) = call(
                &target,
                Method::GET,
                &format!("/admin/models/{model}/rollout"),
                None,
            ) {
                status["rollout"] = rollout;
            }
            print(&status);
        }
        RolloutCommand::Set {
            model,
            stable,
            canary,
            weight,
            no_canary,
            shadows,
            no_shadows,
            sticky_header,
            target,
        } => {
            let current = call(&target, Method::GET, &policy_path(&model), None)?;
            let mut policy: TrafficPolicy = match current.get("policy") {
                Some(Value::Null) | None => TrafficPolicy::default(),
                Some(p) => serde_json::from_value(p.clone())
                    .context("the gateway's policy is not in the expected form")?,
            };
            if let Some(v) = stable {
                policy.stable = Some(v);
            }
            if no_canary {
                policy.canary = None;
            }
            match (canary, weight) {
                (Some(version), w) => {
                    let weight = w
                        .or(policy.canary.as_ref().map(|c| c.weight))
                        .unwrap_or(0.0);
                    policy.canary = Some(Canary { version, weight });
                }
                (None, Some(w)) => match policy.canary.as_mut() {
                    Some(c) => c.weight = w,
                    None => bail!("--weight needs a canary: give --canary VERSION"),
                },
                (None, None) => {}
            }
            if no_shadows {
                policy.shadows.clear();
            }
            if !shadows.is_empty() {
                policy.shadows = shadows
                    .iter()
                    .map(|s| {
                        let mut parts = s.split(':');
                        let (Some(v), Some(p)) = (parts.next(), parts.next()) else {
                            bail!("--shadow {s:?} is not VERSION:PERCENT");
                        };
                        let agreement = match parts.next() {
                            None | Some("argmax") => Default::default(),
                            Some("values") => sluice_rollout::compare::Agreement::Values,
                            Some(other) => bail!(
                                "--shadow {s:?}: agreement {other:?} is not 'argmax' or 'values'"
                            ),
                        };
                        Ok(Shadow {
                            version: v
                                .parse()
                                .with_context(|| format!("--shadow {s:?}: bad version"))?,
                            percent: p
                                .trim_end_matches('%')
                                .parse()
                                .with_context(|| format!("--shadow {s:?}: bad percent"))?,
                            agreement,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            if let Some(h) = sticky_header {
                policy.sticky_header = (!h.is_empty()).then_some(h);
            }
            let answer = call(
                &target,
                Method::PUT,
                &policy_path(&model),
                Some(serde_json::to_value(&policy)?),
            )?;
            print(&answer);
        }
        RolloutCommand::Promote { model, target } => print(&call(
            &target,
            Method::POST,
            &format!("/admin/models/{model}/promote"),
            None,
        )?),
        RolloutCommand::Rollback { model, target } => print(&call(
            &target,
            Method::POST,
            &format!("/admin/models/{model}/rollback"),
            None,
        )?),
        RolloutCommand::Start {
            model,
            canary,
            steps,
            interval,
            min_requests,
            max_error_increase,
            max_p99_ratio,
            min_shadow_agreement,
            target,
        } => {
            let plan = Plan {
                canary,
                steps: parse_steps(&steps).map_err(|e| anyhow::anyhow!("--steps: {e}"))?,
                interval_s: parse_duration(&interval)
                    .map_err(|e| anyhow::anyhow!("--interval: {e}"))?,
                gates: Gates {
                    min_requests,
                    max_error_rate_increase: max_error_increase,
                    max_p99_ratio,
                    min_shadow_agreement,
                },
            };
            plan.check().map_err(|e| anyhow::anyhow!("{e}"))?;
            print(&call(
                &target,
                Method::POST,
                &format!("/admin/models/{model}/rollout"),
                Some(serde_json::to_value(&plan)?),
            )?);
        }
        RolloutCommand::Stop { model, target } => print(&call(
            &target,
            Method::DELETE,
            &format!("/admin/models/{model}/rollout"),
            None,
        )?),
        RolloutCommand::Diffs {
            model,
            version,
            target,
        } => print(&call(
            &target,
            Method::GET,
            &format!("/admin/models/{model}/shadow/{version}/diffs"),
            None,
        )?),
    }
    Ok(())
}

pub fn run_audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { models } => {
            let remote = models.to_str().filter(|m| sluice_registry::is_remote(m));
            let (path, verified) = match remote {
                Some(url) => {
                    let registry = crate::open_remote(url)?;
                    let bytes = crate::block_on(registry.read(sluice_registry::AUDIT_FILE))??;
                    (
                        PathBuf::from(format!(
                            "{}/{}",
                            url.trim_end_matches('/'),
                            sluice_registry::AUDIT_FILE
                        )),
                        sluice_rollout::audit::verify_bytes(bytes.as_deref().unwrap_or_default()),
                    )
                }
                None => {
                    let path = sluice_rollout::audit::log_path(&models);
                    let verified = sluice_rollout::audit::verify(&path);
                    (path, verified)
                }
            };
            match verified {
                Ok(report) => {
                    println!(
                        "{}: {} records, chain intact{}",
                        path.display(),
                        report.records,
                        report
                            .last_hash
                            .map(|h| format!(", last hash {h}"))
                            .unwrap_or_default()
                    );
                    Ok(())
                }
                Err(e) => bail!("{}: {e}", path.display()),
            }
        }
        AuditCommand::Show {
            model,
            limit,
            target,
        } => {
            let mut path = format!("/admin/audit?limit={limit}");
            if let Some(m) = model {
                path.push_str(&format!("&model={m}"));
            }
            let answer = call(&target, reqwest::Method::GET, &path, None)?;
            print(&answer.get("records").cloned().unwrap_or(json!([])));
            Ok(())
        }
    }
}
