use super::*;

fn policy(allow: &[&str], deny: &[&str]) -> EgressPolicy {
    let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    EgressPolicy::parse(&owned(allow), &owned(deny)).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn parse_accepts_every_host_form() {
    for text in ["example.com", "Example.COM.", "*.example.com:443", "api.example.com:8000-8999", "127.0.0.1:8080", "10.0.0.0/8", "[::1]:443", "[fd00::]/8:22", "[2001:db8::1]", "host_name.internal:*"] {
        assert!(Rule::parse(text).is_ok(), "{text}: {:?}", Rule::parse(text));
    }
}

#[test]
fn parse_names_the_problem() {
    let cases = [
        ("", "empty"),
        ("example.com:0", "1 to 65535"),
        ("example.com:70000", "1 to 65535"),
        ("example.com:9-1", "backwards"),
        ("2001:db8::1", "brackets"),
        ("[2001:db8::1", "closing ]"),
        ("[nope]:80", "not an IPv6 address"),
        ("10.0.0.0/33", "0 to 32"),
        ("nothing/8", "not an IP address"),
        ("exa mple.com", "not a valid host name"),
        ("-bad.com", "not a valid host name"),
        ("a.*.com", "not a valid host name"),
        ("bücher.de", "xn--"),
    ];
    for (text, expected) in cases {
        let error = Rule::parse(text).expect_err(text).to_string();
        assert!(error.contains(expected), "{text}: {error}");
        assert!(error.contains(&format!("{text:?}")), "the error names the rule: {error}");
    }
}

#[test]
fn decide_allows_named_hosts_and_ports() {
    let rules = policy(&["example.com:443", "*.example.org", "93.184.216.0/24:80"], &[]);
    assert!(rules.decide(Some("example.com"), ip("93.184.215.14"), 443).is_allowed());
    assert!(rules.decide(Some("EXAMPLE.com."), ip("93.184.215.14"), 443).is_allowed());
    assert_eq!(rules.decide(Some("example.com"), ip("93.184.215.14"), 80), Verdict::NotAllowed);
    assert!(rules.decide(Some("a.b.example.org"), ip("93.184.215.14"), 8443).is_allowed());
    assert_eq!(rules.decide(Some("example.org"), ip("93.184.215.14"), 443), Verdict::NotAllowed, "a wildcard does not match the domain itself");
    assert_eq!(rules.decide(Some("badexample.org"), ip("93.184.215.14"), 443), Verdict::NotAllowed);
    assert!(rules.decide(None, ip("93.184.216.34"), 80).is_allowed());
    assert_eq!(rules.decide(None, ip("93.184.216.34"), 443), Verdict::NotAllowed);
}

#[test]
fn decide_lets_deny_rules_win() {
    let rules = policy(&["*.example.com"], &["secret.example.com", "93.184.216.34"]);
    let denied = rules.decide(Some("secret.example.com"), ip("93.184.215.14"), 443);
    assert_eq!(denied, Verdict::DeniedByRule { rule: "secret.example.com".into() });
    let by_address = rules.decide(Some("www.example.com"), ip("93.184.216.34"), 443);
    assert_eq!(by_address, Verdict::DeniedByRule { rule: "93.184.216.34".into() });
    assert!(rules.decide(Some("www.example.com"), ip("93.184.215.14"), 443).is_allowed());
}

#[test]
fn decide_refuses_internal_ranges_by_name() {
    // A name rule does not open an internal address: the DNS answer could
    // point an allowed name anywhere.
    let rules = policy(&["*.example.com", "example.com"], &[]);
    let cases = [
        ("127.0.0.1", AddressClass::Loopback),
        ("::1", AddressClass::Loopback),
        ("10.0.0.5", AddressClass::Private),
        ("169.254.169.254", AddressClass::Metadata),
        ("::ffff:169.254.169.254", AddressClass::Metadata),
        ("fe80::1", AddressClass::LinkLocal),
        ("0.0.0.0", AddressClass::Unspecified),
    ];
    for (address, class) in cases {
        assert_eq!(rules.decide(Some("rebind.example.com"), ip(address), 443), Verdict::DeniedRange { class }, "{address}");
    }
}

#[test]
fn decide_opens_internal_ranges_named_by_address() {
    let rules = policy(&["127.0.0.1:8080", "[::1]:8080", "10.1.0.0/16"], &["127.0.0.2"]);
    assert!(rules.decide(None, ip("127.0.0.1"), 8080).is_allowed());
    assert!(rules.decide(None, ip("::ffff:127.0.0.1"), 8080).is_allowed(), "a mapped address is the IPv4 address");
    assert!(rules.decide(None, ip("::1"), 8080).is_allowed());
    assert_eq!(rules.decide(None, ip("127.0.0.1"), 8081), Verdict::DeniedRange { class: AddressClass::Loopback });
    assert!(rules.decide(Some("intranet.local"), ip("10.1.2.3"), 22).is_allowed());
    assert_eq!(rules.decide(None, ip("10.2.0.1"), 22), Verdict::DeniedRange { class: AddressClass::Private });
    assert_eq!(rules.decide(None, ip("127.0.0.2"), 8080), Verdict::DeniedByRule { rule: "127.0.0.2".into() });
}

#[test]
fn empty_policy_denies_everything() {
    let rules = EgressPolicy::default();
    assert_eq!(rules.decide(Some("example.com"), ip("93.184.215.14"), 443), Verdict::NotAllowed);
    assert_eq!(rules.decide(None, ip("127.0.0.1"), 80), Verdict::DeniedRange { class: AddressClass::Loopback });
}

#[test]
fn verdicts_read_as_sentences() {
    assert_eq!(Verdict::Allowed { rule: "example.com".into() }.to_string(), "allowed by rule \"example.com\"");
    let range = Verdict::DeniedRange { class: AddressClass::Metadata }.to_string();
    assert!(range.contains("metadata range"), "{range}");
    assert_eq!(Verdict::NotAllowed.to_string(), "denied: no allow rule matches");
}
