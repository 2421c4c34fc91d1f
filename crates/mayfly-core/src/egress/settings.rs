//! A profile's `[network]` section.

use serde::{Deserialize, Serialize};

use super::{EgressPolicy, PROXY_PORT};

/// The way a session reaches the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// Only the session's own loopback; nothing leaves the sandbox.
    #[default]
    None,
    /// Through the egress proxy, by the allow and deny rules.
    Proxy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    #[serde(default)]
    egress: EgressMode,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// The maximum number of rules in each list of a profile.
const MAX_RULES: usize = 256;

/// A profile's network settings, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkSettings {
    pub egress: EgressMode,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    #[serde(skip)]
    pub policy: EgressPolicy,
}

impl NetworkSettings {
    /// Checks a `[network]` section. The error is the key and what is wrong.
    pub(crate) fn from_raw(raw: RawNetwork) -> Result<NetworkSettings, (String, String)> {
        for (key, list) in [("network.allow", &raw.allow), ("network.deny", &raw.deny)] {
            if raw.egress == EgressMode::None && !list.is_empty() {
                return Err((key.into(), "has rules, but network.egress is \"none\"; set egress = \"proxy\" for them to apply".into()));
            }
            if list.len() > MAX_RULES {
                return Err((key.into(), format!("has {} rules; at most {MAX_RULES} are allowed", list.len())));
            }
        }
        let policy = EgressPolicy::parse(&raw.allow, &raw.deny).map_err(|error| {
            let key = if raw.allow.contains(&error.rule) { "network.allow" } else { "network.deny" };
            (key.to_string(), error.to_string())
        })?;
        Ok(NetworkSettings { egress: raw.egress, allow: raw.allow, deny: raw.deny, policy })
    }

    /// Returns the proxy variables a session with egress gets, before the
    /// profile's own environment, which may override them. Names on the
    /// session's own loopback bypass the proxy.
    pub fn proxy_environment(&self) -> Vec<(String, String)> {
        if self.egress != EgressMode::Proxy {
            return Vec::new();
        }
        let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
        let mut variables = Vec::new();
        for name in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            variables.push((name.to_string(), proxy.clone()));
        }
        for name in ["no_proxy", "NO_PROXY"] {
            variables.push((name.to_string(), "localhost,127.0.0.1,::1".to_string()));
        }
        variables
    }
}

#[cfg(test)]
mod tests {
    use crate::egress::{EgressMode, PROXY_PORT};
    use crate::{Profile, ProfileError};

    const JOB: &str = include_str!("../../profiles/default.toml");

    fn parse(network: &str) -> Result<Profile, ProfileError> {
        Profile::parse("net", &format!("{JOB}\n[network]\n{network}\n"))
    }

    #[test]
    fn network_defaults_to_no_egress() {
        let profile = Profile::parse("plain", JOB).unwrap();
        assert_eq!(profile.network.egress, EgressMode::None);
        assert!(profile.network.proxy_environment().is_empty());
    }

    #[test]
    fn network_proxy_parses_rules() {
        let profile = parse("egress = \"proxy\"\nallow = [\"example.com:443\", \"127.0.0.1:8080\"]\ndeny = [\"10.0.0.0/8\"]").unwrap();
        assert_eq!(profile.network.egress, EgressMode::Proxy);
        assert_eq!(profile.network.policy.allow.len(), 2);
        assert_eq!(profile.network.policy.deny.len(), 1);
        let environment = profile.network.proxy_environment();
        let expected = format!("http://127.0.0.1:{PROXY_PORT}");
        assert!(environment.contains(&("HTTPS_PROXY".to_string(), expected)), "{environment:?}");
    }

    #[test]
    fn network_errors_name_the_key() {
        let cases = [
            ("allow = [\"example.com\"]", "network.allow", "set egress = \"proxy\""),
            ("egress = \"proxy\"\nallow = [\"example.com:99999\"]", "network.allow", "1 to 65535"),
            ("egress = \"proxy\"\ndeny = [\"2001:db8::1\"]", "network.deny", "brackets"),
            ("egress = \"open\"", "egress", "expected `none` or `proxy`"),
        ];
        for (text, key, detail) in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(key), "{text}: {error}");
            assert!(error.contains(detail), "{text}: {error}");
        }
    }
}
