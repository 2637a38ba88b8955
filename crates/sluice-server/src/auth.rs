//! API keys: `Authorization: Bearer <key>` checked against a set of named
//! keys. The admin API always needs one; the inference API only when keys
//! are configured for it. Keys are compared in constant time (against every
//! key, with no early exit), and neither keys nor the header ever reach a log
//! line or an error message: only the key's name does, as the actor.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

/// Named secret keys.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a key must not end up in a log through Debug.
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("KeySet").field("names", &names).finish()
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No keys are configured for this API at all.
    NotConfigured,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A key that is not in the set.
    Wrong,
}

impl KeySet {
    /// Parses `name:key` entries separated by newlines or commas (a file, or
    /// an environment variable); blank entries and lines starting with `#`
    /// are skipped. Names are what logs and the audit log show; keys must be
    /// at least 16 bytes, so a guessable key is refused at start-up.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (i, entry) in text.split(['\n', ',']).enumerate() {
            let entry = entry.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let Some((name, key)) = entry.split_once(':') else {
                return Err(format!(
                    "key entry {} is not `name:key` (the key itself is not shown)",
                    i + 1
                ));
            };
            let (name, key) = (name.trim(), key.trim());
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                return Err(format!(
                    "key entry {}: the name must be letters, digits or -_.@",
                    i + 1
                ));
            }
            if key.len() < 16 {
                return Err(format!(
                    "key '{name}' is shorter than 16 characters; use a long random key"
                ));
            }
            if keys.iter().any(|(n, _)| n == name) {
                return Err(format!("key name '{name}' appears twice"));
            }
            keys.push((name.to_string(), key.as_bytes().to_vec()));
        }
        Ok(KeySet { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The name of the key the request carries, if it is one of ours.
    pub fn check(&self, headers: &HeaderMap) -> Result<&str, Denied> {
        if self.keys.is_empty() {
            return Err(Denied::NotConfigured);
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or(Denied::Missing)?;
        let mut found = None;
        for (name, key) in &self.keys {
            // Every key is compared, whichever matches, so the time taken
            // says nothing about which key (or how much of one) was right.
            if constant_time_eq(presented.as_bytes(), key) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found.ok_or(Denied::Wrong)
    }
}

/// Equality whose time depends only on the lengths, not on where the bytes
/// differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    // Keep the optimiser from short-circuiting the loop.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h
    }

    #[test]
    fn keys_are_checked_by_value_and_named() {
        let keys = KeySet::parse("# ops\nalice:0123456789abcdef0123\n\nbob : fedcba9876543210fedc")
            .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.check(&bearer("0123456789abcdef0123")), Ok("alice"));
        assert_eq!(keys.check(&bearer("fedcba9876543210fedc")), Ok("bob"));
        assert_eq!(
            keys.check(&bearer("0123456789abcdef0124")),
            Err(Denied::Wrong)
        );
        assert_eq!(keys.check(&bearer("0123")), Err(Denied::Wrong));
        assert_eq!(keys.check(&HeaderMap::new()), Err(Denied::Missing));
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(keys.check(&basic), Err(Denied::Missing));
        assert_eq!(
            KeySet::default().check(&bearer("x")),
            Err(Denied::NotConfigured)
        );
        assert!(!format!("{keys:?}").contains("0123456789"));
    }

    #[test]
    fn bad_key_lists_are_refused_without_showing_keys() {
        for text in [
            "alice",
            "alice:short",
            ":0123456789abcdef",
            "a b:0123456789abcdef",
            "a:0123456789abcdef,a:0123456789abcdeg",
        ] {
            let err = KeySet::parse(text).unwrap_err();
            assert!(!err.contains("0123456789"), "{err}");
        }
        assert_eq!(
            KeySet::parse("a:0123456789abcdef,b:0123456789abcdeg")
                .unwrap()
                .len(),
            2
        );
    }
}
