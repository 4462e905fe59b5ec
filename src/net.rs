//! Outbound network policy: which addresses a server-side request (the `http` job kind, the
//! `http_fetch` tool) may reach. Loopback, private, link-local and never-routable addresses are
//! refused unless the operator allows them, and every resolved address is checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which destinations are allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetPolicy {
    /// Allow 127.0.0.0/8 and ::1 (dev mode turns this on).
    pub allow_loopback: bool,
    /// Allow private (RFC 1918, CGNAT 100.64/10, ULA fc00::/7) and link-local ranges.
    pub allow_private: bool,
}

/// What kind of destination an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddrClass {
    Public,
    Loopback,
    Private,
    LinkLocal,
    /// Never allowed: unspecified, multicast, broadcast, reserved.
    Forbidden,
}

/// Classifies an address (IPv4-mapped and NAT64 IPv6 forms as their IPv4 address).
pub(crate) fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    match ip.octets() {
        [127, ..] => AddrClass::Loopback,
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] | [100, 64..=127, ..] => AddrClass::Private,
        [169, 254, ..] => AddrClass::LinkLocal,
        // 0/8 "this network", 224/4 multicast, 240/4 reserved incl. broadcast
        [0, ..] | [224..=255, ..] => AddrClass::Forbidden,
        _ => AddrClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let seg = ip.segments();
    let [.., a, b, c, d] = ip.octets();
    match seg {
        _ if ip.is_loopback() => AddrClass::Loopback,
        _ if ip.is_unspecified() => AddrClass::Forbidden,
        // ::ffff:a.b.c.d (IPv4-mapped) and 64:ff9b::a.b.c.d (NAT64) reach the IPv4 address
        [0, 0, 0, 0, 0, 0xffff, ..] | [0x64, 0xff9b, 0, 0, 0, 0, ..] => {
            classify_v4(Ipv4Addr::new(a, b, c, d))
        }
        [0, 0, 0, 0, 0, 0, ..] => AddrClass::Forbidden, // deprecated IPv4-compatible
        [0xfc00..=0xfdff, ..] | [0xfec0..=0xfeff, ..] => AddrClass::Private, // ULA, site-local
        [0xfe80..=0xfebf, ..] => AddrClass::LinkLocal,
        [0xff00..=0xffff, ..] => AddrClass::Forbidden, // multicast
        _ => AddrClass::Public,
    }
}

/// Ok if `ip` may be called under `policy`, else why not.
pub fn check_destination(ip: IpAddr, policy: NetPolicy) -> Result<(), &'static str> {
    match classify(ip) {
        AddrClass::Public => Ok(()),
        AddrClass::Loopback if policy.allow_loopback => Ok(()),
        AddrClass::Private | AddrClass::LinkLocal if policy.allow_private => Ok(()),
        AddrClass::Loopback => Err("a loopback address, which the network policy refuses"),
        AddrClass::Private => Err("a private address, which the network policy refuses"),
        AddrClass::LinkLocal => Err("a link-local address, which the network policy refuses"),
        AddrClass::Forbidden => Err("an unspecified, multicast, broadcast or reserved address"),
    }
}

/// A `Retry-After` value (delta-seconds or an HTTP-date) as a wait, capped at `cap`.
pub fn parse_retry_after(
    v: &str,
    now: chrono::DateTime<chrono::Utc>,
    cap: std::time::Duration,
) -> Option<std::time::Duration> {
    let v = v.trim();
    let d = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        std::time::Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?.to_utc();
        (at - now).to_std().unwrap_or(std::time::Duration::ZERO)
    };
    Some(d.min(cap))
}
