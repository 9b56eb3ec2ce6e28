//! Bearer API keys: several, from `--api-keys` and `--api-keys-file`, compared in constant time.
//! A session belongs to the key that created it (by the key's name); with no keys configured the
//! API is open and every caller is `anonymous`.

use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::{ApiError, RequestError};
use super::AppState;

/// One configured key.
#[derive(Clone)]
struct Key {
    name: String,
    secret: Vec<u8>,
}

/// The configured keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("ApiKeys").field("names", &names).finish()
    }
}

/// A bad key list.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the API key file {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("API key `{0}` is empty")]
    Empty(String),
}

impl ApiKeys {
    /// Keys from `NAME:KEY` or `KEY` entries (a bare key is named after its fingerprint).
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            let (name, secret) = match entry.split_once(':') {
                Some((name, secret)) => (name.to_string(), secret),
                None => (format!("key-{:08x}", fnv1a(entry.as_bytes()) as u32), entry),
            };
            if secret.is_empty() {
                return Err(KeyError::Empty(name));
            }
            keys.push(Key {
                name,
                secret: secret.as_bytes().to_vec(),
            });
        }
        Ok(Self { keys })
    }

    /// Keys from the flag's entries and the file's lines (`#` starts a comment).
    pub fn load(entries: &[String], file: Option<&Path>) -> Result<Self, KeyError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|error| KeyError::File {
                path: path.display().to_string(),
                error,
            })?,
            None => String::new(),
        };
        let lines = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default());
        Self::new(entries.iter().map(String::as_str).chain(lines))
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The name of the key equal to `presented`; every key is compared in full, in constant time.
    pub fn owner_of(&self, presented: &[u8]) -> Option<String> {
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(&key.secret, presented) {
                found = Some(key.name.clone());
            }
        }
        found
    }
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The authenticated caller (the key's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let keys = &state.keys;
        if keys.is_open() {
            return Ok(Caller("anonymous".into()));
        }
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::from(RequestError::MissingKey))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::from(RequestError::NotBearer))?;
        keys.owner_of(token.trim().as_bytes())
            .map(Caller)
            .ok_or_else(|| RequestError::InvalidKey.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly_and_by_name() {
        let keys = ApiKeys::new(["alice:secret-a", "secret-b", " "]).unwrap();
        assert_eq!(keys.owner_of(b"secret-a").as_deref(), Some("alice"));
        assert!(keys.owner_of(b"secret-b").unwrap().starts_with("key-"));
        assert_eq!(keys.owner_of(b"secret-"), None);
        assert_eq!(keys.owner_of(b"secret-aa"), None);
        assert_eq!(keys.owner_of(b""), None);
        assert!(ApiKeys::new(["bob:"]).is_err());
        assert!(ApiKeys::new([]).unwrap().is_open());
    }

    #[test]
    fn keys_load_from_flag_and_file() {
        let path = std::env::temp_dir().join(format!("infini-keys-{}", std::process::id()));
        std::fs::write(
            &path,
            "# operators\ncarol:secret-c  # on call\n\nsecret-d\n",
        )
        .unwrap();
        let keys = ApiKeys::load(&["alice:secret-a".into()], Some(&path)).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(keys.owner_of(b"secret-a").as_deref(), Some("alice"));
        assert_eq!(keys.owner_of(b"secret-c").as_deref(), Some("carol"));
        assert!(keys.owner_of(b"secret-d").is_some());
        assert!(
            ApiKeys::load(&[], Some(&path)).is_err(),
            "a missing file is an error"
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"\0"));
        assert!(constant_time_eq(b"", b""));
    }
}
