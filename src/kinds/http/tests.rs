//! Unit tests of the `http` kind's pure parts: signing, validation, address rules.

use super::*;
use crate::net::{AddrClass, classify};

#[test]
fn signature_known_vectors() {
    // python3: hmac.new(b"whsec_test", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert_eq!(
        signature(b"whsec_test", 1_700_000_000, br#"{"a":1}"#),
        "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
    );
    // Key longer than the block size (hashed first), empty body, negative timestamp.
    assert_eq!(
        signature(&[b'k'; 100], -5, b""),
        "t=-5,v1=08da09817b82bc258cdac8551780f02feef65956afc87ef0932646fac7ad0dc6"
    );
}

#[test]
fn validate_accepts_and_normalises() {
    let a = json!({"url": "https://example.com/f", "method": "post", "body": {"x": 1},
        "headers": {"X-Api": "k", "Content-Type": "text/csv"}, "timeout_s": 300});
    assert_eq!(validate(&a).unwrap().method.as_deref(), Some("POST"));
    assert!(validate(&json!({"url": "http://[::1]:8080", "timeout_s": 1})).is_ok());
}

#[test]
fn validate_rejects() {
    let u = "https://example.com";
    for bad in [
        json!({"url": "ftp://example.com"}),
        json!({"url": "not a url"}),
        json!({"url": "file:///etc/passwd"}),
        json!({"url": u, "method": "TRACE"}),
        json!({"url": u, "method": "GET", "body": "x"}),
        json!({"url": u, "method": "head", "body": {}}),
        json!({"url": u, "timeout_s": 0}),
        json!({"url": u, "timeout_s": 301}),
        json!({"url": u, "headers": {"Spool-Signature": "x"}}),
        json!({"url": u, "headers": {"HOST": "evil"}}),
        json!({"url": u, "headers": {"content-length": "1"}}),
        json!({"url": u, "headers": {"bad name": "x"}}),
        json!({"url": u, "headers": {"x": "a\nb"}}),
        json!({"url": u, "extra": 1}),
        json!({"method": "GET"}),
    ] {
        assert!(validate(&bad).is_err(), "accepted {bad}");
    }
}

#[test]
fn classification() {
    let groups = [
        (
            AddrClass::Public,
            "8.8.8.8 172.32.0.1 100.128.0.1 ::ffff:8.8.8.8 2606:4700::1111",
        ),
        (
            AddrClass::Loopback,
            "127.0.0.1 127.9.9.9 ::1 ::ffff:127.0.0.1",
        ),
        (
            AddrClass::Private,
            "10.1.2.3 172.16.0.1 172.31.255.255 192.168.1.1 100.64.0.1",
        ),
        (
            AddrClass::Private,
            "fd00::1 fc00::1 64:ff9b::10.0.0.1 ::ffff:192.168.0.1",
        ),
        (
            AddrClass::LinkLocal,
            "169.254.169.254 fe80::1 ::ffff:169.254.169.254",
        ),
        (
            AddrClass::Forbidden,
            "0.0.0.0 :: 224.0.0.1 255.255.255.255 ff02::1 ::10.0.0.1",
        ),
    ];
    for (want, ips) in groups {
        for ip in ips.split_whitespace() {
            assert_eq!(classify(ip.parse().unwrap()), want, "{ip}");
        }
    }
    let ok = |ip: &str, allow_loopback, allow_private| {
        let policy = NetPolicy {
            allow_loopback,
            allow_private,
        };
        check_destination(ip.parse().unwrap(), policy).is_ok()
    };
    assert!(!ok("127.0.0.1", false, false) && ok("127.0.0.1", true, false));
    assert!(!ok("127.0.0.1", false, true) && !ok("169.254.169.254", true, false));
    assert!(ok("169.254.169.254", false, true) && ok("10.0.0.1", false, true));
    assert!(!ok("0.0.0.0", true, true) && ok("1.1.1.1", false, false));
}

#[test]
fn retry_after_parsing() {
    let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap();
    let ra = |v| parse_retry_after(v, now.to_utc()).map(|d| d.as_secs());
    assert_eq!(
        (ra("120"), ra(" 999999 "), ra("soon")),
        (Some(120), Some(3600), None)
    );
    assert_eq!(ra("Wed, 21 Oct 2015 07:30:00 GMT"), Some(120));
    assert_eq!(ra("Wed, 21 Oct 2015 07:00:00 GMT"), Some(0));
}

#[test]
fn truncated_text_drops_partial_utf8() {
    assert_eq!(body_text(&"hé".as_bytes()[..2], true), "h");
    assert_eq!(body_text(b"ok", false), "ok");
}
