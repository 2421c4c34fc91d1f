//! Egress rules: which hosts and ports a session may connect to through the
//! egress proxy, and the decision for one connection.
//!
//! A rule is `HOST` or `HOST:PORTS`. HOST is a DNS name (`example.com`), a
//! wildcard for every name below a domain (`*.example.com`, which does not
//! match `example.com` itself), an address (`127.0.0.1`, `[::1]`) or a
//! network (`10.0.0.0/8`, `[fd00::]/8`). PORTS is a port, a range
//! (`8000-8999`) or `*`; a rule without PORTS matches every port.
//!
//! Deny rules win over allow rules. An address outside the public ranges
//! (loopback, private, link-local, metadata and the rest of
//! [`AddressClass`]) is refused unless an allow rule names the address or a
//! network that contains it. A name rule is not enough, so a DNS answer that
//! points an allowed name into the host's network is refused.

mod address;
mod settings;

use std::fmt;
use std::net::IpAddr;

pub use address::{classify, AddressClass};
pub use settings::{EgressMode, NetworkSettings};
pub(crate) use settings::RawNetwork;

/// The port the egress proxy listens on, on the loopback of every session
/// whose profile allows egress.
pub const PROXY_PORT: u16 = 3128;

/// The host part of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// One DNS name, lowercase, without a trailing dot.
    Name(String),
    /// Every name below this domain.
    Below(String),
    /// Every address of a network.
    Network { base: IpAddr, prefix: u8 },
}

/// One allow or deny rule, as written in a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    text: String,
    host: HostPattern,
    ports: (u16, u16),
}

/// A rule that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress rule {rule:?}: {problem}")]
pub struct RuleError {
    pub rule: String,
    pub problem: String,
}

impl Rule {
    /// Parses a rule; the error names the rule and what is wrong with it.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let fail = |problem: String| RuleError { rule: text.to_string(), problem };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(fail("the rule is empty; write a host such as example.com or example.com:443".into()));
        }
        let (host, ports) = split_ports(trimmed).map_err(fail)?;
        let ports = match ports {
            None | Some("*") => (1, u16::MAX),
            Some(ports) => parse_ports(ports).map_err(fail)?,
        };
        let host = parse_host(host).map_err(fail)?;
        Ok(Rule { text: trimmed.to_string(), host, ports })
    }

    /// Returns the rule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches_port(&self, port: u16) -> bool {
        (self.ports.0..=self.ports.1).contains(&port)
    }

    fn matches_name(&self, name: &str) -> bool {
        match &self.host {
            HostPattern::Name(exact) => exact == name,
            HostPattern::Below(domain) => name.len() > domain.len() + 1 && name.ends_with(domain.as_str()) && name.as_bytes()[name.len() - domain.len() - 1] == b'.',
            HostPattern::Network { .. } => false,
        }
    }

    fn contains_address(&self, address: IpAddr) -> bool {
        let HostPattern::Network { base, prefix } = self.host else { return false };
        match (base, canonical(address)) {
            (IpAddr::V4(base), IpAddr::V4(address)) => {
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
                u32::from(base) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(address)) => {
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
                u128::from(base) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// Returns an IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// Splits `host:ports`, where an IPv6 host is in brackets.
fn split_ports(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("an IPv6 address in brackets needs the closing ]".into());
        };
        // Keep a network's prefix length, written after the bracket.
        let (prefix, after) = match after.strip_prefix('/') {
            Some(tail) => {
                let end = tail.find(':').unwrap_or(tail.len());
                (Some(&tail[..end]), &tail[end..])
            }
            None => (None, after),
        };
        let ports = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| format!("unexpected {after:?} after the IPv6 address; write [ADDRESS]:PORT"))?),
        };
        let host_end = 1 + inside.len() + 1 + prefix.map_or(0, |p| p.len() + 1);
        return Ok((&text[..host_end], ports));
    }
    if text.matches(':').count() > 1 {
        return Err("an IPv6 address goes in brackets, such as [2001:db8::1]:443".into());
    }
    Ok(match text.split_once(':') {
        Some((host, ports)) => (host, Some(ports)),
        None => (text, None),
    })
}

fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {p:?} is not a port number from 1 to 65535")),
        Ok(n) => Ok(n),
    };
    match text.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (port(low)?, port(high)?);
            if low > high {
                return Err(format!("the port range {text} runs backwards; write the lower port first"));
            }
            Ok((low, high))
        }
        None => port(text).map(|p| (p, p)),
    }
}

fn parse_host(text: &str) -> Result<HostPattern, String> {
    let unbracketed = |t: &str| t.strip_prefix('[').and_then(|t| t.strip_suffix(']')).map(str::to_string).unwrap_or_else(|| t.to_string());
    if let Some((base, prefix)) = text.split_once('/') {
        let base_text = unbracketed(base);
        let base: IpAddr = base_text.parse().map_err(|_| format!("{base_text:?} before the / is not an IP address"))?;
        let base = canonical(base);
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("prefix length {prefix:?} is not a number from 0 to {max}"))?;
        return Ok(HostPattern::Network { base, prefix });
    }
    let literal = unbracketed(text);
    if let Ok(address) = literal.parse::<IpAddr>() {
        let address = canonical(address);
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        return Ok(HostPattern::Network { base: address, prefix });
    }
    if text.starts_with('[') {
        return Err(format!("{literal:?} is not an IPv6 address"));
    }
    let (below, name) = match text.strip_prefix("*.") {
        Some(domain) => (true, domain),
        None => (false, text),
    };
    let name = normalize_name(name)?;
    Ok(if below { HostPattern::Below(name) } else { HostPattern::Name(name) })
}

/// Returns a DNS name in lowercase without its trailing dot, or why it is
/// not a valid name.
pub fn normalize_name(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.is_empty() {
        return Err("the host name is empty".into());
    }
    if !name.is_ascii() {
        return Err(format!("{text:?} is not ASCII; write an internationalized name in its xn-- form"));
    }
    if name.len() > 253 {
        return Err(format!("the host name is {} characters long; DNS allows at most 253", name.len()));
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(format!("{text:?} is not a valid host name: each dot-separated part needs 1 to 63 letters, digits, - or _, and no - at either end. A wildcard is allowed only as a leading *."));
        }
    }
    Ok(name)
}

/// The outcome of an egress check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the named allow rule.
    Allowed { rule: String },
    /// Refused by the named deny rule.
    DeniedByRule { rule: String },
    /// Refused because the address is in a non-public range that no allow
    /// rule names.
    DeniedRange { class: AddressClass },
    /// Refused because no allow rule matches.
    NotAllowed,
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allowed { rule } => write!(f, "allowed by rule {rule:?}"),
            Verdict::DeniedByRule { rule } => write!(f, "denied by rule {rule:?}"),
            Verdict::DeniedRange { class } => write!(f, "denied: the address is in a {} range, which only an allow rule naming the address or its network opens", class.as_str()),
            Verdict::NotAllowed => f.write_str("denied: no allow rule matches"),
        }
    }
}

/// A profile's egress rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

impl EgressPolicy {
    /// Parses allow and deny lists; the first bad rule is the error.
    pub fn parse(allow: &[String], deny: &[String]) -> Result<EgressPolicy, RuleError> {
        let parse = |list: &[String]| list.iter().map(|r| Rule::parse(r)).collect::<Result<Vec<_>, _>>();
        Ok(EgressPolicy { allow: parse(allow)?, deny: parse(deny)? })
    }

    /// Decides one connection to `address:port`, which the proxy resolved
    /// from `name` when the client asked for a name rather than an address.
    pub fn decide(&self, name: Option<&str>, address: IpAddr, port: u16) -> Verdict {
        let name = name.and_then(|n| normalize_name(n).ok());
        let matches = |rule: &Rule, by_name: bool| {
            rule.matches_port(port) && (rule.contains_address(address) || (by_name && name.as_deref().is_some_and(|n| rule.matches_name(n))))
        };
        if let Some(rule) = self.deny.iter().find(|rule| matches(rule, true)) {
            return Verdict::DeniedByRule { rule: rule.text.clone() };
        }
        let class = classify(canonical(address));
        if !class.is_public() {
            return match self.allow.iter().find(|rule| matches(rule, false)) {
                Some(rule) => Verdict::Allowed { rule: rule.text.clone() },
                None => Verdict::DeniedRange { class },
            };
        }
        match self.allow.iter().find(|rule| matches(rule, true)) {
            Some(rule) => Verdict::Allowed { rule: rule.text.clone() },
            None => Verdict::NotAllowed,
        }
    }
}

#[cfg(test)]
mod tests;
