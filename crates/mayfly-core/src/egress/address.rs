//! Classification of IP addresses into the ranges an egress policy treats
//! differently: public addresses, and the ranges that lead into the host,
//! its network or a cloud provider's metadata service.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The range an address belongs to, for egress decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Routable on the internet.
    Public,
    /// 127.0.0.0/8 and ::1: the host itself.
    Loopback,
    /// RFC 1918 and IPv6 unique local addresses (fc00::/7).
    Private,
    /// 100.64.0.0/10, carrier-grade NAT, which cloud networks also use inside.
    SharedNat,
    /// 169.254.0.0/16 and fe80::/10.
    LinkLocal,
    /// A cloud provider's instance metadata service.
    Metadata,
    /// 0.0.0.0/8 and ::, which some systems route to the host.
    Unspecified,
    /// Multicast and the IPv4 limited broadcast address.
    Multicast,
    /// Ranges reserved for documentation, benchmarks, protocol assignments
    /// or future use, and IPv6 transition prefixes that are not followed.
    Reserved,
}

impl AddressClass {
    /// Returns whether the range is public. Every other range is refused
    /// unless an allow rule names its address or network.
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }

    /// Returns the class's name, as audit records and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::SharedNat => "shared-nat",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Metadata => "metadata",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Multicast => "multicast",
            AddressClass::Reserved => "reserved",
        }
    }
}

/// Metadata service addresses: AWS's IPv6 endpoint here, and below the
/// IPv4 endpoints of most clouds, AWS ECS and Alibaba Cloud.
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)];
const METADATA_V4: [Ipv4Addr; 3] = [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(169, 254, 170, 2), Ipv4Addr::new(100, 100, 100, 200)];

/// Classifies an address. IPv6 addresses that embed an IPv4 address
/// (IPv4-mapped, IPv4-compatible, NAT64 and 6to4) get the class of the
/// embedded address, so a rule cannot be bypassed by spelling the same
/// host in IPv6.
pub fn classify(address: IpAddr) -> AddressClass {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(address: Ipv4Addr, network: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    u32::from(address) & mask == u32::from(Ipv4Addr::from(network)) & mask
}

fn classify_v4(address: Ipv4Addr) -> AddressClass {
    if METADATA_V4.contains(&address) {
        return AddressClass::Metadata;
    }
    let table: [([u8; 4], u32, AddressClass); 17] = [
        ([0, 0, 0, 0], 8, AddressClass::Unspecified),
        ([10, 0, 0, 0], 8, AddressClass::Private),
        ([100, 64, 0, 0], 10, AddressClass::SharedNat),
        ([127, 0, 0, 0], 8, AddressClass::Loopback),
        ([169, 254, 0, 0], 16, AddressClass::LinkLocal),
        ([172, 16, 0, 0], 12, AddressClass::Private),
        ([192, 0, 0, 0], 24, AddressClass::Reserved),
        ([192, 0, 2, 0], 24, AddressClass::Reserved),
        ([192, 88, 99, 0], 24, AddressClass::Reserved),
        ([192, 168, 0, 0], 16, AddressClass::Private),
        ([198, 18, 0, 0], 15, AddressClass::Reserved),
        ([198, 51, 100, 0], 24, AddressClass::Reserved),
        ([203, 0, 113, 0], 24, AddressClass::Reserved),
        ([224, 0, 0, 0], 4, AddressClass::Multicast),
        ([255, 255, 255, 255], 32, AddressClass::Multicast),
        ([240, 0, 0, 0], 4, AddressClass::Reserved),
        ([192, 31, 196, 0], 24, AddressClass::Reserved),
    ];
    table.iter().find(|(network, prefix, _)| in_v4(address, *network, *prefix)).map_or(AddressClass::Public, |(_, _, class)| *class)
}

fn in_v6(address: Ipv6Addr, network: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    u128::from(address) & mask == u128::from(network) & mask
}

/// Returns the IPv4 address an IPv6 address carries, for the embeddings a
/// resolver or a client may use to reach an IPv4 host.
fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(address);
    let low = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if let Some(mapped) = address.to_ipv4_mapped() {
        return Some(mapped);
    }
    // IPv4-compatible (::a.b.c.d, deprecated), except :: and ::1.
    if bits >> 32 == 0 && bits > 1 {
        return Some(low);
    }
    // NAT64, the well-known prefix 64:ff9b::/96.
    if in_v6(address, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(low);
    }
    // 6to4, 2002:AABB:CCDD::/48.
    if in_v6(address, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

fn classify_v6(address: Ipv6Addr) -> AddressClass {
    if METADATA_V6.contains(&address) {
        return AddressClass::Metadata;
    }
    if address.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if address.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some(v4) = embedded_v4(address) {
        return classify_v4(v4);
    }
    let table: [(Ipv6Addr, u32, AddressClass); 7] = [
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, AddressClass::LinkLocal),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, AddressClass::Private),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, AddressClass::Multicast),
        // Documentation, Teredo and the site-local range that RFC 3879 retired.
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, AddressClass::Reserved),
        (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, AddressClass::Reserved),
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, AddressClass::Reserved),
        (Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0, 0), 64, AddressClass::Reserved),
    ];
    if let Some((_, _, class)) = table.iter().find(|(network, prefix, _)| in_v6(address, *network, *prefix)) {
        return *class;
    }
    // Only the global unicast range 2000::/3 is routed on the internet.
    if in_v6(address, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        AddressClass::Public
    } else {
        AddressClass::Reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> AddressClass {
        classify(text.parse().unwrap())
    }

    #[test]
    fn classify_ipv4_ranges() {
        let cases = [
            ("93.184.216.34", AddressClass::Public),
            ("8.8.8.8", AddressClass::Public),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("172.32.0.1", AddressClass::Public),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::SharedNat),
            ("100.127.255.255", AddressClass::SharedNat),
            ("100.128.0.1", AddressClass::Public),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("169.254.169.254", AddressClass::Metadata),
            ("169.254.170.2", AddressClass::Metadata),
            ("100.100.100.200", AddressClass::Metadata),
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("224.0.0.1", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Multicast),
            ("240.0.0.1", AddressClass::Reserved),
            ("192.0.2.10", AddressClass::Reserved),
            ("198.18.0.1", AddressClass::Reserved),
            ("203.0.113.5", AddressClass::Reserved),
        ];
        for (text, expected) in cases {
            assert_eq!(class(text), expected, "{text}");
        }
    }

    #[test]
    fn classify_ipv6_ranges() {
        let cases = [
            ("2606:2800:220:1:248:1893:25c8:1946", AddressClass::Public),
            ("::1", AddressClass::Loopback),
            ("::", AddressClass::Unspecified),
            ("fe80::1", AddressClass::LinkLocal),
            ("fd12:3456::1", AddressClass::Private),
            ("fc00::1", AddressClass::Private),
            ("fd00:ec2::254", AddressClass::Metadata),
            ("ff02::1", AddressClass::Multicast),
            ("2001:db8::1", AddressClass::Reserved),
            ("2001:0:4136:e378::1", AddressClass::Reserved),
            ("fec0::1", AddressClass::Reserved),
            ("100::1", AddressClass::Reserved),
            ("4000::1", AddressClass::Reserved),
        ];
        for (text, expected) in cases {
            assert_eq!(class(text), expected, "{text}");
        }
    }

    #[test]
    fn classify_embedded_ipv4() {
        let cases = [
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:169.254.169.254", AddressClass::Metadata),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("::ffff:93.184.216.34", AddressClass::Public),
            ("::127.0.0.1", AddressClass::Loopback),
            ("64:ff9b::a9fe:a9fe", AddressClass::Metadata),
            ("64:ff9b::7f00:1", AddressClass::Loopback),
            ("2002:c0a8:0101::1", AddressClass::Private),
            ("2002:7f00:0001::1", AddressClass::Loopback),
        ];
        for (text, expected) in cases {
            assert_eq!(class(text), expected, "{text}");
        }
    }

    #[test]
    fn only_public_is_public() {
        assert!(AddressClass::Public.is_public());
        assert!(!AddressClass::Metadata.is_public());
        assert!(!AddressClass::Loopback.is_public());
    }
}
