//! `http_fetch`: an unsigned GET behind the same SSRF rules as the `http` job kind.
//!
//! `crate::kinds::http` keeps its address classification private and its public `call`
//! always signs the request and treats non-2xx as failures, so the minimal classification is
//! duplicated here (kept in step with `kinds::http::classify`). Each fetch builds its own
//! client with DNS pinned to the addresses that were checked, no proxy and no redirects, so
//! `ctx.http` is not used to send.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde::Deserialize;
use serde_json::json;

use super::{ToolContext, ToolOutput, ToolSpec, lossy_text, ok};

const TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;

/// Arguments of `http_fetch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpFetchArgs {
    url: String,
    max_bytes: Option<u64>,
}

/// The `http_fetch` spec.
pub(super) fn spec() -> ToolSpec {
    super::spec(
        "http_fetch",
        "HTTP GET a public http(s) URL and return the status, content type and body text. \
         Private, loopback and link-local addresses are refused. Redirects are not followed: \
         the answer names the Location, which you may fetch next. Times out after 20 s; the \
         body is cut at max_bytes.",
        json!({
            "url": {"type": "string", "description": "Absolute http:// or https:// URL."},
            "max_bytes": {"type": "integer", "minimum": 1, "maximum": DEFAULT_MAX_BYTES, "description": "Read at most this many body bytes. Default and maximum 1048576."},
        }),
        &["url"],
    )
}

/// Fetches a URL; transport problems and refused destinations are tool errors.
pub(super) async fn http_fetch(args: HttpFetchArgs, ctx: &ToolContext) -> ToolOutput {
    tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => ToolOutput::error("http_fetch was cancelled"),
        r = fetch(&args, ctx) => r.unwrap_or_else(ToolOutput::error),
    }
}

async fn fetch(args: &HttpFetchArgs, ctx: &ToolContext) -> Result<ToolOutput, String> {
    let raw = &args.url;
    let url = url::Url::parse(raw).map_err(|e| format!("invalid url {raw:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url scheme must be http or https: {raw:?}"));
    }
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ => return Err(format!("url {raw:?} has no host")),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let max_bytes = args.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    let max_bytes = usize::try_from(max_bytes.clamp(1, DEFAULT_MAX_BYTES)).unwrap_or(1);

    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(TIMEOUT)
        .user_agent(concat!("spool/", env!("CARGO_PKG_VERSION")));
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), port)],
        _ => {
            let lookup = tokio::net::lookup_host((host.as_str(), port));
            let found = tokio::time::timeout(TIMEOUT, lookup)
                .await
                .map_err(|_| format!("DNS lookup of {host} timed out"))?
                .map_err(|e| format!("DNS lookup of {host} failed: {e}"))?;
            let addrs: Vec<SocketAddr> = found.collect();
            // Pin the connection to exactly what was checked (no DNS rebinding).
            builder = builder.resolve_to_addrs(&host, &addrs);
            addrs
        }
    };
    if addrs.is_empty() {
        return Err(format!("{host} resolved to no addresses"));
    }
    for a in &addrs {
        if let Err(why) = check(a.ip(), ctx.allow_loopback, ctx.allow_private) {
            return Err(format!("refusing to fetch {host}: {} is {why}", a.ip()));
        }
    }
    let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;

    let mut response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("fetching {raw} failed: {}", error_chain(&e)))?;
    let status = response.status();
    let headers = response.headers();
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let location = headers
        .get(LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let status_line = format!("HTTP {status}");
    let type_line = format!(
        "content-type: {}",
        content_type.as_deref().unwrap_or("(none)")
    );

    if status.is_redirection() {
        let to = location.as_deref().unwrap_or("(no Location header)");
        let content = format!(
            "{status_line}\nredirect to {to} was not followed; fetch that URL if you want it"
        );
        let data = json!({"url": raw, "status": status.as_u16(), "location": location});
        return Ok(ok(content, false, data));
    }

    let (mut body, mut truncated) = (Vec::new(), false);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the body of {raw} failed: {}", error_chain(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > max_bytes {
            body.truncate(max_bytes);
            truncated = true;
            break; // dropping the response abandons the rest of the body
        }
    }
    let binary = body.iter().take(8 * 1024).any(|&b| b == 0);
    let text = if binary {
        format!("[binary body, {} bytes, not shown]", body.len())
    } else {
        lossy_text(&body, truncated)
    };
    let mut content = format!("{status_line}\n{type_line}\n\n{text}");
    if truncated {
        content.push_str(&format!("\n[body cut at {max_bytes} bytes]"));
    }
    let data = json!({
        "url": raw,
        "status": status.as_u16(),
        "content_type": content_type,
        "bytes": body.len(),
        "binary": binary,
        "truncated": truncated,
    });
    Ok(ok(content, truncated, data))
}

/// An error and its sources, joined, because reqwest's top-level message alone is vague.
fn error_chain(e: &reqwest::Error) -> String {
    let chain: Vec<String> =
        std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
            .map(ToString::to_string)
            .collect();
    chain.join(": ")
}

/// The shared outbound policy, with this call's allowances.
fn check(ip: IpAddr, allow_loopback: bool, allow_private: bool) -> Result<(), &'static str> {
    crate::net::check_destination(
        ip,
        crate::net::NetPolicy {
            allow_loopback,
            allow_private,
        },
    )
}
