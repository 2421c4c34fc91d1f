//! API tokens and attach tokens: how they look, how they are made and how
//! a presented token is checked. Only hashes are stored.
//!
//! An API token reads `mfy_` + 8 identifying characters + `_` + 40 secret
//! characters. The first 12 characters are its visible prefix, shown in lists
//! and audit records; the rest never leaves the response that created it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Principal, Store, StoreError, TokenRecord};

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const API_TOKEN_MARK: &str = "mfy_";
pub const ATTACH_TOKEN_MARK: &str = "mfa_";
const PREFIX_CHARS: usize = 8;
const SECRET_CHARS: usize = 40;
/// The longest token accepted; longer input is rejected before hashing.
const MAX_TOKEN_LEN: usize = 128;

/// Random characters from the alphabet, without modulo bias.
pub fn random_text(count: usize) -> String {
    let mut out = String::with_capacity(count);
    let mut buffer = [0u8; 64];
    while out.len() < count {
        getrandom::fill(&mut buffer).expect("the kernel's random source is available");
        for &byte in &buffer {
            // 62 * 4 = 248: bytes at or above it would favour some characters.
            if byte < 248 && out.len() < count {
                out.push(ALPHABET[(byte % 62) as usize] as char);
            }
        }
    }
    out
}

/// Returns the SHA-256 of a token in hexadecimal, the form the store keeps.
pub fn hash(token: &str) -> String {
    mayfly_audit::hex(&Sha256::digest(token.as_bytes()))
}

/// A new API token and the record that describes it.
pub struct NewToken {
    pub secret: String,
    pub record: TokenRecord,
}

/// Makes a new API token for `principal`.
pub fn new_api_token(principal: &str, name: &str, now_ms: i64, expires_unix_ms: Option<i64>) -> NewToken {
    let prefix = format!("{API_TOKEN_MARK}{}", random_text(PREFIX_CHARS));
    let secret = format!("{prefix}_{}", random_text(SECRET_CHARS));
    NewToken {
        record: TokenRecord {
            id: format!("tok-{}", &prefix[API_TOKEN_MARK.len()..]),
            prefix,
            hash: hash(&secret),
            principal: principal.into(),
            name: name.into(),
            created_unix_ms: now_ms,
            expires_unix_ms,
            revoked_unix_ms: None,
        },
        secret,
    }
}

/// Makes a token supplied by an operator (the bootstrap token) into a
/// record. The token must look like one Mayfly makes.
pub fn supplied_api_token(secret: &str, principal: &str, name: &str, now_ms: i64) -> Result<TokenRecord, String> {
    let prefix = split_api_token(secret).ok_or_else(|| {
        format!("the supplied token is not a Mayfly token: it must read {API_TOKEN_MARK} + {PREFIX_CHARS} letters or digits + _ + at least 32 letters or digits; generate one with `mayfly token generate`")
    })?;
    Ok(TokenRecord {
        id: format!("tok-{}", &prefix[API_TOKEN_MARK.len()..]),
        prefix: prefix.to_string(),
        hash: hash(secret),
        principal: principal.into(),
        name: name.into(),
        created_unix_ms: now_ms,
        expires_unix_ms: None,
        revoked_unix_ms: None,
    })
}

/// Generates a token text without storing it, for `MAYFLY_BOOTSTRAP_TOKEN`.
pub fn generate_text() -> String {
    format!("{API_TOKEN_MARK}{}_{}", random_text(PREFIX_CHARS), random_text(SECRET_CHARS))
}

/// Returns the prefix of a well-formed API token.
fn split_api_token(token: &str) -> Option<&str> {
    if token.len() > MAX_TOKEN_LEN || !token.starts_with(API_TOKEN_MARK) {
        return None;
    }
    let prefix_end = API_TOKEN_MARK.len() + PREFIX_CHARS;
    let (prefix, rest) = (token.get(..prefix_end)?, token.get(prefix_end..)?);
    let secret = rest.strip_prefix('_')?;
    let alphanumeric = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (alphanumeric(&prefix[API_TOKEN_MARK.len()..]) && secret.len() >= 32 && alphanumeric(secret)).then_some(prefix)
}

/// The reason a presented token was rejected. Callers respond to every one
/// the same way, and the reason goes only to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Malformed,
    Unknown,
    Expired,
    Revoked,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::Malformed => "malformed",
            Refused::Unknown => "unknown",
            Refused::Expired => "expired",
            Refused::Revoked => "revoked",
        }
    }
}

/// The principal and API token that a request authenticated as.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Principal,
    pub token_id: String,
    pub token_prefix: String,
}

/// Checks a presented API token against the store.
pub async fn authenticate(store: &Store, token: &str, now_ms: i64) -> Result<Result<Authenticated, Refused>, StoreError> {
    let Some(prefix) = split_api_token(token) else { return Ok(Err(Refused::Malformed)) };
    let Some(record) = store.token_by_prefix(prefix).await? else { return Ok(Err(Refused::Unknown)) };
    let presented = hash(token);
    if !bool::from(presented.as_bytes().ct_eq(record.hash.as_bytes())) {
        return Ok(Err(Refused::Unknown));
    }
    check_record(store, record, now_ms).await
}

/// Checks that a stored API token is neither revoked nor expired and that
/// its principal exists.
async fn check_record(store: &Store, record: TokenRecord, now_ms: i64) -> Result<Result<Authenticated, Refused>, StoreError> {
    if record.revoked_unix_ms.is_some() {
        return Ok(Err(Refused::Revoked));
    }
    if record.expires_unix_ms.is_some_and(|expires| expires <= now_ms) {
        return Ok(Err(Refused::Expired));
    }
    let Some(principal) = store.principal(&record.principal).await? else { return Ok(Err(Refused::Unknown)) };
    Ok(Ok(Authenticated { principal, token_id: record.id, token_prefix: record.prefix }))
}

/// Makes a random secret that starts with `mark`, and returns it with its hash.
fn new_marked_secret(mark: &str) -> (String, String) {
    let text = format!("{mark}{}", random_text(SECRET_CHARS));
    let hashed = hash(&text);
    (text, hashed)
}

/// Checks that `text` has the shape of a secret made by [`new_marked_secret`]
/// with `mark`, so that anything else is rejected without a database lookup.
fn has_mark(text: &str, mark: &str) -> bool {
    text.len() == mark.len() + SECRET_CHARS && text.starts_with(mark) && text[mark.len()..].bytes().all(|b| b.is_ascii_alphanumeric())
}

pub const WEB_SESSION_MARK: &str = "mfw_";

/// Makes a new browser session cookie value and returns it with its hash.
pub fn new_web_session() -> (String, String) {
    new_marked_secret(WEB_SESSION_MARK)
}

/// Checks whether a text could be a browser session cookie value.
pub fn looks_like_web_session(text: &str) -> bool {
    has_mark(text, WEB_SESSION_MARK)
}

/// Checks that the API token behind a browser session is still valid.
pub async fn authenticate_by_id(store: &Store, token_id: &str, now_ms: i64) -> Result<Result<Authenticated, Refused>, StoreError> {
    let Some(record) = store.token(token_id).await? else { return Ok(Err(Refused::Unknown)) };
    check_record(store, record, now_ms).await
}

/// Makes a new attach token and returns it with its hash.
pub fn new_attach_token() -> (String, String) {
    new_marked_secret(ATTACH_TOKEN_MARK)
}

/// Checks whether a text could be an attach token.
pub fn looks_like_attach_token(text: &str) -> bool {
    has_mark(text, ATTACH_TOKEN_MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_tokens_are_well_formed_and_distinct() {
        let a = new_api_token("alice", "laptop", 1, None);
        let b = new_api_token("alice", "laptop", 1, None);
        assert_ne!(a.secret, b.secret);
        assert_eq!(split_api_token(&a.secret), Some(a.record.prefix.as_str()));
        assert_eq!(a.record.prefix.len(), 12);
        assert_eq!(a.record.hash, hash(&a.secret));
        assert!(!a.record.hash.contains(&a.secret[13..]), "the secret is not stored");
    }

    #[test]
    fn malformed_tokens_are_recognised() {
        for bad in ["", "mfy_", "mfy_abcdefgh", "mfy_abcdefgh_short", "xyz_abcdefgh_0123456789012345678901234567890123456789", "mfy_abc-efgh_0123456789012345678901234567890123456789", "mfy_abcdefgh-0123456789012345678901234567890123456789"] {
            assert_eq!(split_api_token(bad), None, "{bad:?}");
        }
        assert_eq!(split_api_token(&format!("mfy_abcdefgh_{}", "a".repeat(200))), None, "overlong");
        assert!(supplied_api_token("hunter2", "admin", "bootstrap", 0).unwrap_err().contains("mfy_"));
    }

    #[test]
    fn random_text_uses_only_the_alphabet() {
        let text = random_text(1000);
        assert_eq!(text.len(), 1000);
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn attach_tokens_have_their_own_mark() {
        let (text, hashed) = new_attach_token();
        assert!(looks_like_attach_token(&text));
        assert_eq!(hash(&text), hashed);
        assert!(!looks_like_attach_token(&generate_text()));
    }
}
