//! The built-in `http` job kind: a signed, serverless-style function call.
//!
//! Owns the kind's request/response rules: argument validation (also run at enqueue time),
//! the `Spool-Signature` HMAC, the SSRF guard on destinations, response shaping and
//! truncation, and the mapping of outcomes to retry / fail / cancel. It must not touch the
//! database or queue state: it gets args, a secret, a policy and a token, and returns a
//! result or a [`JobError`]; what that means for the job is the runtime's business.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::worker::JobError;

/// Responses are read up to this many bytes; the rest is dropped and `"truncated": true` set.
pub const MAX_RESPONSE_BODY: usize = 256 * 1024;
/// The signature header sent with every call (see [`signature`]).
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("spool-signature");
const DEFAULT_TIMEOUT_S: u64 = 30;
const MAX_TIMEOUT_S: u64 = 300;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
const SNIPPET_CHARS: usize = 500;
/// Error answers only need a snippet; 4 bytes per char covers any UTF-8.
const SNIPPET_BYTES: usize = 4 * SNIPPET_CHARS;
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
/// Headers the caller may not set: spool owns the signature, framing and routing.
const RESERVED: &[&str] = &[
    "spool-signature",
    "host",
    "content-length",
    "transfer-encoding",
];

/// Arguments of an `http` job.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpArgs {
    pub url: String,
    pub method: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub body: Option<Value>,
    pub timeout_s: Option<u64>,
}

pub use crate::net::NetPolicy;
use crate::net::check_destination;

/// Validates args up front (used at enqueue time too, so bad args get a 400 before anything
/// is stored): URL parses, scheme http/https, method is one of GET/POST/PUT/PATCH/DELETE/HEAD
/// (case-insensitive; returned upper-cased), no body with GET/HEAD, `timeout_s` in 1..=300,
/// headers are valid names/values and do not set Spool-Signature/Host/Content-Length/
/// Transfer-Encoding.
pub fn validate(args: &Value) -> Result<HttpArgs, String> {
    let mut args: HttpArgs =
        serde_json::from_value(args.clone()).map_err(|e| format!("invalid http args: {e}"))?;
    if let Some(m) = &args.method {
        let upper = m.to_ascii_uppercase();
        if !METHODS.contains(&upper.as_str()) {
            return Err(format!("method {m:?} is not one of {}", METHODS.join(", ")));
        }
        args.method = Some(upper);
    }
    if args.body.is_some() && matches!(args.method.as_deref(), Some("GET" | "HEAD")) {
        return Err("a body is not allowed with GET or HEAD".into());
    }
    if let Some(t) = args.timeout_s.filter(|t| !(1..=MAX_TIMEOUT_S).contains(t)) {
        return Err(format!("timeout_s must be in 1..={MAX_TIMEOUT_S}, got {t}"));
    }
    parse_url(&args.url)?;
    header_map(&args)?;
    Ok(args)
}

fn parse_url(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("invalid url {raw:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url scheme must be http or https: {raw:?}"));
    }
    match url.host_str() {
        Some(h) if !h.is_empty() => Ok(url),
        _ => Err(format!("url {raw:?} has no host")),
    }
}

fn header_map(args: &HttpArgs) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in args.headers.iter().flatten() {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        if RESERVED.contains(&n.as_str()) {
            return Err(format!("header {name:?} is reserved for spool"));
        }
        let v = HeaderValue::from_str(value).map_err(|_| format!("invalid value for {name:?}"))?;
        map.insert(n, v);
    }
    Ok(map)
}

/// Builds the `Spool-Signature` header value:
///
/// ```text
/// t=<unix seconds>,v1=<lowercase hex of HMAC-SHA256(secret, "<t>.<raw body bytes>")>
/// ```
///
/// Receivers verify it like a Stripe webhook: split on `,`, take `t` and `v1`, recompute the
/// HMAC over the decimal timestamp, a `.`, and the exact request body bytes (empty when there
/// is no body), compare in constant time, and reject a `t` too far from their clock (e.g.
/// more than 5 minutes) to stop replays.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let hex = hex::encode(mac.finalize().into_bytes());
    format!("t={timestamp},v1={hex}")
}

/// Performs the call. `secret` is the project's signing secret. Honours `cancel` at once
/// (returns [`JobError::Cancelled`]). `args` should come from [`validate`].
///
/// Every address the host resolves to is checked against `policy` and the connection is
/// pinned to exactly those addresses (no DNS rebinding), so each call builds a small client
/// of its own: pinned DNS, no proxy, no redirects (a 3xx fails, naming its `Location`).
/// `client` is therefore not used to send; it stays in the signature so the pinning strategy
/// can change without touching callers.
pub async fn call(
    client: &reqwest::Client,
    args: &HttpArgs,
    secret: &[u8],
    policy: NetPolicy,
    traceparent: Option<&str>,
    cancel: &CancellationToken,
) -> Result<Value, JobError> {
    let _ = client;
    if cancel.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    let url = parse_url(&args.url).map_err(JobError::fail)?;
    let mut headers = header_map(args).map_err(JobError::fail)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let timeout_s = args.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S);
    let timeout = Duration::from_secs(timeout_s.clamp(1, MAX_TIMEOUT_S));
    let port = url.port_or_known_default().unwrap_or(80);

    // Resolve, check every address, and pin what was checked.
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .user_agent(concat!("spool/", env!("CARGO_PKG_VERSION")));
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), port)],
        _ => {
            let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((&*host, port)));
            let found = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(JobError::Cancelled),
                r = lookup => r.map_err(|_| format!("DNS lookup of {host} timed out"))
                    .and_then(|r| r.map_err(|e| format!("DNS lookup of {host} failed: {e}")))
                    .map_err(JobError::retry)?,
            };
            let addrs: Vec<_> = found.collect();
            builder = builder.resolve_to_addrs(&host, &addrs);
            addrs
        }
    };
    if addrs.is_empty() {
        return Err(JobError::retry(format!("{host} resolved to no addresses")));
    }
    for a in &addrs {
        let ip = a.ip();
        let refuse = |why| JobError::fail(format!("refusing to call {host}: {ip} is {why}"));
        check_destination(ip, policy).map_err(refuse)?;
    }
    let pinned = builder.build();
    let pinned = pinned.map_err(|e| JobError::retry(format!("HTTP client: {e}")))?;

    // Method, body, headers, signature.
    let default_method = if args.body.is_some() { "POST" } else { "GET" };
    let method = args.method.as_deref().unwrap_or(default_method);
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| JobError::fail(format!("invalid method {method:?}")))?;
    let bodyless = method == Method::GET || method == Method::HEAD;
    let (body, content_type) = match &args.body {
        _ if bodyless => (Vec::new(), None),
        None => (Vec::new(), None),
        Some(Value::String(s)) => (s.as_bytes().to_vec(), Some("text/plain; charset=utf-8")),
        Some(v) => (
            serde_json::to_vec(v).map_err(|e| JobError::fail(format!("body: {e}")))?,
            Some("application/json"),
        ),
    };
    if let Some(ct) = content_type {
        let ct = HeaderValue::from_static(ct);
        headers.entry(CONTENT_TYPE).or_insert(ct);
    }
    let sig = signature(secret, chrono::Utc::now().timestamp(), &body);
    let sig = HeaderValue::from_str(&sig).map_err(|e| JobError::fail(format!("signature: {e}")))?;
    headers.insert(SIGNATURE_HEADER, sig);
    // The callee joins this attempt's trace (a caller-set `traceparent` is replaced: the job's
    // span is the honest parent of this call).
    if let Some(tp) = traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(HeaderName::from_static("traceparent"), tp);
    }
    let mut request = pinned.request(method, url.clone()).headers(headers);
    if !bodyless {
        request = request.body(body); // also gives an empty POST a `content-length: 0`
    }

    let mut response = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(JobError::Cancelled),
        r = request.send() => r.map_err(|e| transport_error(&e, timeout))?,
    };
    let status = response.status();
    let ok = status.is_success();
    let limit = if ok { MAX_RESPONSE_BODY } else { SNIPPET_BYTES };
    let (mut buf, mut truncated) = (Vec::new(), false);
    loop {
        let chunk = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(JobError::Cancelled),
            c = response.chunk() => c.map_err(|e| transport_error(&e, timeout))?,
        };
        let Some(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        if buf.len() > limit {
            buf.truncate(limit);
            truncated = true;
            break; // dropping the response abandons the rest of the body
        }
    }
    let text = body_text(&buf, truncated);
    let hdrs = response.headers();

    if ok {
        let mut out = serde_json::Map::new();
        for name in hdrs.keys() {
            let all = hdrs
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()));
            out.insert(
                name.as_str().to_owned(),
                all.collect::<Vec<_>>().join(", ").into(),
            );
        }
        let parsed = (!truncated).then(|| serde_json::from_slice::<Value>(&buf).ok());
        let body = parsed.flatten().unwrap_or(Value::String(text));
        let status = status.as_u16();
        return Ok(json!({"status": status, "headers": out, "body": body, "truncated": truncated}));
    }
    let snippet: String = text.chars().take(SNIPPET_CHARS).collect();
    let message = format!("{host} answered HTTP {status}: {snippet}");
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        let retry_after = hdrs.get(RETRY_AFTER).and_then(|v| v.to_str().ok());
        let retry_after = retry_after.and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        return Err(JobError::Retry {
            message,
            retry_after,
        });
    }
    if status.is_redirection() {
        let to = hdrs
            .get(LOCATION)
            .map(HeaderValue::as_bytes)
            .unwrap_or(b"(no Location)");
        let to = String::from_utf8_lossy(to);
        return Err(JobError::fail(format!(
            "{host} answered HTTP {status} redirecting to {to}; redirects are not followed"
        )));
    }
    Err(JobError::fail(message))
}

/// Builder problems are permanent; everything else (timeouts, connection errors, broken
/// bodies) is transient.
fn transport_error(e: &reqwest::Error, timeout: Duration) -> JobError {
    let chain: Vec<String> =
        std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
            .map(ToString::to_string)
            .collect();
    let chain = chain.join(": ");
    match () {
        _ if e.is_builder() => JobError::fail(format!("invalid request: {chain}")),
        _ if e.is_timeout() => JobError::retry(format!("timed out after {timeout:?}: {chain}")),
        _ if e.is_connect() => JobError::retry(format!("connection failed: {chain}")),
        _ => JobError::retry(format!("request failed: {chain}")),
    }
}

/// Body bytes as text; when truncated, a UTF-8 sequence cut at the end is dropped.
fn body_text(buf: &[u8], truncated: bool) -> String {
    let end = match std::str::from_utf8(buf) {
        Err(e) if truncated && e.error_len().is_none() => e.valid_up_to(),
        _ => buf.len(),
    };
    String::from_utf8_lossy(buf.get(..end).unwrap_or(buf)).into_owned()
}

/// `Retry-After` as a wait, capped at [`MAX_RETRY_AFTER`].
fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    crate::net::parse_retry_after(v, now, MAX_RETRY_AFTER)
}

#[cfg(test)]
mod tests;
