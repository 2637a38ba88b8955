//! The traffic policy of one model: which version is stable, which one is the
//! canary and with what weight, which versions shadow the traffic and how
//! much of it, and which request header pins a caller to one side.
//!
//! The policy lives in the model repository as `<repo>/<model>/policy.toml`,
//! beside `model.toml`, so every gateway reading the same registry routes the
//! same way. [`load`] and [`store`] read and write it; [`store`] replaces the
//! file atomically so a watcher never sees half a policy.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// File name of a model's traffic policy, inside the model's directory
/// (`<repo>/<model>/policy.toml`, beside `model.toml`).
pub const POLICY_FILE: &str = "policy.toml";

/// Longest accepted sticky header name, in bytes. Real header names are far
/// shorter; the bound keeps a typo (or a pasted value) from being accepted.
pub const MAX_HEADER_NAME_LEN: usize = 64;

/// How the traffic of one model is split between its versions.
///
/// Every field is optional: the default policy sends everything to the
/// highest ready version, with no canary and no shadows. Unknown keys are
/// refused so a misspelt field is an error instead of a silently ignored
/// setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TrafficPolicy {
    /// The version requests go to by default. `None`: the highest ready version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<u64>,
    /// A version that receives a fraction of the traffic, to be tried before
    /// it becomes stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Versions that receive a copy of a sample of the requests; their
    /// answers are compared, never returned to the caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadows: Vec<Shadow>,
    /// Request header whose value pins a caller to one side (e.g.
    /// `"x-user-id"`). Header names are case-insensitive; [`TrafficPolicy::normalised`]
    /// lowercases it, and [`load`] and [`store`] apply that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
}

/// The canary of a policy: a version and the fraction of traffic it gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The canary version (at least 1).
    pub version: u64,
    /// Fraction of requests routed to the canary, in `[0, 1]`. Zero still
    /// lets callers reach it explicitly (see [`crate::routing::choose`]).
    pub weight: f64,
}

/// A shadow of a policy: a version that receives copies of some requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    /// The shadow version (at least 1).
    pub version: u64,
    /// Percentage of requests mirrored to this version, in `[0, 100]`.
    pub percent: f64,
    /// When its float outputs count as agreeing with the primary's:
    /// `argmax` (the default: class scores by their argmax) or `values`
    /// (every element within tolerance).
    #[serde(default, skip_serializing_if = "is_default_agreement")]
    pub agreement: crate::compare::Agreement,
}

fn is_default_agreement(a: &crate::compare::Agreement) -> bool {
    *a == crate::compare::Agreement::default()
}

/// Why a policy could not be read, written or accepted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Reading or writing the policy file (or its directory) failed.
    #[error("cannot access traffic policy {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The policy file is not valid TOML, or does not have the expected shape.
    #[error("cannot parse traffic policy {}: {message}", path.display())]
    Parse {
        /// The policy file.
        path: PathBuf,
        /// The TOML parser's message (line, column and what was expected).
        message: String,
    },

    /// The policy is well-formed but contradicts itself or is out of range;
    /// the message says which field and why.
    #[error("invalid traffic policy: {0}")]
    Invalid(String),
}

impl TrafficPolicy {
    /// Checks everything that can be checked without knowing which versions
    /// are loaded: ranges of weights and percentages, versions at least 1,
    /// no version playing two roles, no duplicate shadows, and a valid
    /// sticky header name.
    ///
    /// Whether the named versions exist is the caller's business: a policy
    /// may name a version that is still being published.
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.stable == Some(0) {
            return Err(invalid("stable version must be at least 1"));
        }
        if let Some(canary) = &self.canary {
            if canary.version == 0 {
                return Err(invalid("canary version must be at least 1"));
            }
            if !canary.weight.is_finite() || !(0.0..=1.0).contains(&canary.weight) {
                return Err(invalid(format!(
                    "canary weight {} is not between 0 and 1",
                    canary.weight
                )));
            }
            if self.stable == Some(canary.version) {
                return Err(invalid(format!(
                    "canary version {} is also the stable version",
                    canary.version
                )));
            }
        }
        let mut seen: Vec<u64> = Vec::with_capacity(self.shadows.len());
        for shadow in &self.shadows {
            if shadow.version == 0 {
                return Err(invalid("shadow version must be at least 1"));
            }
            if !shadow.percent.is_finite() || !(0.0..=100.0).contains(&shadow.percent) {
                return Err(invalid(format!(
                    "shadow version {}: percent {} is not between 0 and 100",
                    shadow.version, shadow.percent
                )));
            }
            if self.stable == Some(shadow.version) {
                return Err(invalid(format!(
                    "shadow version {} is also the stable version",
                    shadow.version
                )));
            }
            if self.canary.as_ref().map(|c| c.version) == Some(shadow.version) {
                return Err(invalid(format!(
                    "shadow version {} is also the canary version",
                    shadow.version
                )));
            }
            if seen.contains(&shadow.version) {
                return Err(invalid(format!(
                    "shadow version {} is listed more than once",
                    shadow.version
                )));
            }
            seen.push(shadow.version);
        }
        if let Some(header) = &self.sticky_header {
            check_header_name(header)?;
        }
        Ok(())
    }

    /// Returns the policy in its stored form: the sticky header name
    /// lowercased (HTTP header names are case-insensitive, and the server
    /// looks them up in lowercase). Does not check anything; see
    /// [`TrafficPolicy::check`].
    pub fn normalised(mut self) -> Self {
        if let Some(header) = &mut self.sticky_header {
            header.make_ascii_lowercase();
        }
        self
    }

    /// Every version the policy names (stable, canary, shadows), sorted and
    /// deduplicated: the versions that must stay loaded while it is in force.
    pub fn versions(&self) -> Vec<u64> {
        let mut versions: Vec<u64> = self
            .stable
            .into_iter()
            .chain(self.canary.as_ref().map(|c| c.version))
            .chain(self.shadows.iter().map(|s| s.version))
            .collect();
        versions.sort_unstable();
        versions.dedup();
        versions
    }

    /// The policy as the text of a `policy.toml` file. The default policy
    /// gives an empty string.
    pub fn to_toml(&self) -> String {
        // Serialising plain fields (integers, floats, strings, tables and
        // arrays of tables) to TOML cannot fail; an empty string is only a
        // fallback that is never expected.
        toml::to_string(self).unwrap_or_default()
    }

    /// Parses the text of a `policy.toml` file, then normalises and checks
    /// it. `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let policy: TrafficPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_owned() + &location(text, &e),
        })?;
        let policy = policy.normalised();
        policy.check()?;
        Ok(policy)
    }
}

/// Reads `model_dir/policy.toml`, normalises it (see
/// [`TrafficPolicy::normalised`]) and checks it.
///
/// Returns `Ok(None)` when the model has no policy file, which means the
/// default policy (everything to the highest ready version).
pub fn load(model_dir: &Path) -> Result<Option<TrafficPolicy>, PolicyError> {
    let path = model_dir.join(POLICY_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PolicyError::Io { path, source }),
    };
    TrafficPolicy::from_toml(&text, &path).map(Some)
}

/// Checks `policy` and writes it, normalised, to `model_dir/policy.toml`
/// atomically: the text goes to a temporary file in the same directory,
/// which is flushed to disk and renamed over the policy file, and then the
/// directory itself is flushed. A reader sees either the old or the new
/// policy, never a mixture, even after a crash.
///
/// The default policy still writes a (empty) file, so that "explicitly
/// default" is recorded.
pub fn store(model_dir: &Path, policy: &TrafficPolicy) -> Result<(), PolicyError> {
    let policy = policy.clone().normalised();
    policy.check()?;
    let text = policy.to_toml();

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let temp = model_dir.join(format!(
        ".{POLICY_FILE}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Io { path, source }
    };

    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_err(&temp)(e));
    }
    let target = model_dir.join(POLICY_FILE);
    if let Err(e) = fs::rename(&temp, &target) {
        let _ = fs::remove_file(&temp);
        return Err(io_err(&target)(e));
    }
    // Make the rename itself durable. Not every platform can open or sync a
    // directory; the file's contents are already on disk, so failing here
    // is not worth an error.
    if let Ok(dir) = File::open(model_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(message.into())
}

/// Accepts an HTTP header name: 1 to [`MAX_HEADER_NAME_LEN`] bytes, each an
/// RFC 9110 `tchar`.
fn check_header_name(name: &str) -> Result<(), PolicyError> {
    if name.is_empty() {
        return Err(invalid("sticky_header is empty"));
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(invalid(format!(
            "sticky_header is {} bytes long; at most {MAX_HEADER_NAME_LEN} are allowed",
            name.len()
        )));
    }
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if let Some(bad) = name.chars().find(|&c| !c.is_ascii() || !is_tchar(c as u8)) {
        return Err(invalid(format!(
            "sticky_header {name:?} is not a valid HTTP header name (character {bad:?} is not allowed)"
        )));
    }
    Ok(())
}

/// " at line L, column C" for a TOML error that has a position.
fn location(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return String::new();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(" (at line {line}, column {column})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> TrafficPolicy {
        TrafficPolicy {
            stable: Some(1),
            canary: Some(Canary {
                version: 2,
                weight: 0.1,
            }),
            shadows: vec![
                Shadow {
                    version: 3,
                    percent: 10.0,
                    agreement: Default::default(),
                },
                Shadow {
                    version: 4,
                    percent: 100.0,
                    agreement: crate::compare::Agreement::Values,
                },
            ],
            sticky_header: Some("x-user-id".into()),
        }
    }

    fn invalid_message(policy: &TrafficPolicy) -> String {
        match policy.check() {
            Err(PolicyError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn toml_round_trip() {
        let policy = full();
        let text = policy.to_toml();
        let back = TrafficPolicy::from_toml(&text, Path::new("p.toml")).unwrap();
        assert_eq!(back, policy);
        assert_eq!(TrafficPolicy::default().to_toml(), "");
        let empty = TrafficPolicy::from_toml("", Path::new("p.toml")).unwrap();
        assert_eq!(empty, TrafficPolicy::default());
    }

    #[test]
    fn toml_accepts_integer_percent_and_weight() {
        let text = "stable = 1\ncanary = { version = 2, weight = 1 }\n\
                    [[shadows]]\nversion = 3\npercent = 10\n";
        let policy = TrafficPolicy::from_toml(text, Path::new("p.toml")).unwrap();
        assert_eq!(policy.canary.unwrap().weight, 1.0);
        assert_eq!(policy.shadows[0].percent, 10.0);
    }

    #[test]
    fn json_round_trip_and_shape() {
        let policy = full();
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(
            json["canary"],
            serde_json::json!({"version": 2, "weight": 0.1})
        );
        assert_eq!(
            json["shadows"][0],
            serde_json::json!({"version": 3, "percent": 10.0})
        );
        assert_eq!(json["stable"], 1);
        assert_eq!(json["sticky_header"], "x-user-id");
        let back: TrafficPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, policy);
        assert_eq!(
            serde_json::to_string(&TrafficPolicy::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn valid_policies_pass() {
        full().check().unwrap();
        TrafficPolicy::default().check().unwrap();
        let edge = TrafficPolicy {
            canary: Some(Canary {
                version: 5,
                weight: 0.0,
            }),
            shadows: vec![Shadow {
                version: 6,
                percent: 0.0,
                agreement: Default::default(),
            }],
            ..Default::default()
        };
        edge.check().unwrap();
    }

    #[test]
    fn weight_out_of_range_or_nan() {
        for weight in [1.5, -0.1, f64::NAN, f64::INFINITY] {
            let mut policy = full();
            policy.canary.as_mut().unwrap().weight = weight;
            assert!(invalid_message(&policy).contains("weight"), "{weight}");
        }
    }

    #[test]
    fn percent_out_of_range_or_nan() {
        for percent in [101.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            let mut policy = full();
            policy.shadows[0].percent = percent;
            assert!(invalid_message(&policy).contains("percent"), "{percent}");
        }
    }

    #[test]
    fn version_roles_must_differ() {
        let mut policy = full();
        policy.canary.as_mut().unwrap().version = 1;
        assert!(invalid_message(&policy).contains("stable"));

        let mut policy = full();
        policy.shadows[0].version = 1;
        assert!(invalid_message(&policy).contains("stable"));

        let mut policy = full();
        policy.shadows[0].version = 2;
        assert!(invalid_message(&policy).contains("canary"));

        let mut policy = full();
        policy.shadows[1].version = 3;
        assert!(invalid_message(&policy).contains("more than once"));
    }

    #[test]
    fn versions_must_be_positive() {
        let mut policy = full();
        policy.stable = Some(0);
        invalid_message(&policy);
        let mut policy = full();
        policy.canary.as_mut().unwrap().version = 0;
        invalid_message(&policy);
        let mut policy = full();
        policy.shadows[0].version = 0;
        invalid_message(&policy);
    }

    #[test]
    fn header_names() {
        for bad in [
            "",
            "x user",
            "x-user:",
            "x-üser",
            "x\nuser",
            "(x)",
            &"x".repeat(65),
        ] {
            let mut policy = full();
            policy.sticky_header = Some(bad.to_owned());
            assert!(
                invalid_message(&policy).contains("sticky_header"),
                "{bad:?}"
            );
        }
        for good in [
            "x-user-id",
            "X-User-Id",
            "a",
            "x_tenant.id~1",
            &"x".repeat(64),
        ] {
            let mut policy = full();
            policy.sticky_header = Some(good.to_owned());
            policy.check().unwrap();
        }
        let normalised = TrafficPolicy {
            sticky_header: Some("X-User-Id".into()),
            ..Default::default()
        }
        .normalised();
        assert_eq!(normalised.sticky_header.as_deref(), Some("x-user-id"));
    }

    #[test]
    fn versions_sorted_and_deduplicated() {
        assert_eq!(full().versions(), vec![1, 2, 3, 4]);
        assert!(TrafficPolicy::default().versions().is_empty());
        let policy = TrafficPolicy {
            stable: Some(9),
            canary: Some(Canary {
                version: 2,
                weight: 0.5,
            }),
            ..Default::default()
        };
        assert_eq!(policy.versions(), vec![2, 9]);
    }

    #[test]
    fn load_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn store_then_load() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &full()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(full()));

        // Overwriting works, and the default policy writes an empty file.
        store(dir.path(), &TrafficPolicy::default()).unwrap();
        let text = fs::read_to_string(dir.path().join(POLICY_FILE)).unwrap();
        assert_eq!(text, "");
        assert_eq!(load(dir.path()).unwrap(), Some(TrafficPolicy::default()));

        // Only policy.toml is left: no temporary files.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![POLICY_FILE.to_owned()]);
    }

    #[test]
    fn store_normalises_and_refuses_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let mut policy = full();
        policy.sticky_header = Some("X-User-ID".into());
        store(dir.path(), &policy).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.sticky_header.as_deref(), Some("x-user-id"));

        policy.canary.as_mut().unwrap().weight = 2.0;
        assert!(matches!(
            store(dir.path(), &policy),
            Err(PolicyError::Invalid(_))
        ));
        // The previous policy is untouched.
        assert_eq!(load(dir.path()).unwrap(), Some(loaded));
    }

    #[test]
    fn store_into_missing_directory_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            store(&missing, &full()),
            Err(PolicyError::Io { .. })
        ));
    }

    #[test]
    fn unknown_keys_refused() {
        for text in [
            "stabel = 1\n",
            "canary = { version = 2, weight = 0.1, extra = 1 }\n",
            "[[shadows]]\nversion = 3\npercent = 1.0\nratio = 2\n",
        ] {
            match TrafficPolicy::from_toml(text, Path::new("m/policy.toml")) {
                Err(PolicyError::Parse { path, message }) => {
                    assert_eq!(path, Path::new("m/policy.toml"));
                    assert!(message.contains("unknown field"), "{message}");
                }
                other => panic!("expected Parse for {text:?}, got {other:?}"),
            }
        }
        let json = r#"{"stable":1,"canray":{"version":2,"weight":0.1}}"#;
        assert!(serde_json::from_str::<TrafficPolicy>(json).is_err());
    }

    #[test]
    fn load_reports_parse_and_check_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(POLICY_FILE);
        fs::write(&path, "stable = \"one\"\n").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(&err, PolicyError::Parse { path: p, .. } if *p == path));
        assert!(err.to_string().contains("policy.toml"), "{err}");

        fs::write(
            &path,
            "stable = 1\ncanary = { version = 1, weight = 0.5 }\n",
        )
        .unwrap();
        assert!(matches!(load(dir.path()), Err(PolicyError::Invalid(_))));
    }
}
