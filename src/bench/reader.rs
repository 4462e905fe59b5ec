//! One client of a session's event stream (`GET /api/v1/sessions/{id}/events` over SSE), as
//! `spool bench --mode turns` reads it: every `delta` carries provider tokens that are their own
//! send times, so each token's delay from the provider to this client is `now - token`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::Value;
use uuid::Uuid;

/// What one reader saw of its turn.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Provider chunk to SSE client, per token, in milliseconds.
    pub latencies_ms: Vec<f64>,
    /// The turn's terminal state and when it arrived (seconds since the bench's base instant).
    pub end: Option<(f64, String)>,
    pub error: Option<String>,
}

impl Outcome {
    /// A reader that ended without seeing its turn end.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::default()
        }
    }

    /// Whether the turn was seen to succeed.
    pub fn succeeded(&self) -> bool {
        self.end.as_ref().is_some_and(|(_, s)| s == "succeeded")
    }
}

/// Opens the stream of `session` after `cursor`; returns once the server answered.
pub async fn open(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    session: Uuid,
    cursor: i64,
) -> anyhow::Result<reqwest::Response> {
    let resp = client
        .get(format!("{api}/sessions/{session}/events"))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .header("last-event-id", cursor.to_string())
        .send()
        .await
        .with_context(|| format!("opening the event stream of session {session}"))?;
    if !resp.status().is_success() {
        bail!("event stream of session {session}: HTTP {}", resp.status());
    }
    Ok(resp)
}

/// Reads until the turn whose job id lands in `job` reaches a terminal state.
pub async fn read(resp: reqwest::Response, base: Instant, job: Arc<OnceLock<Uuid>>) -> Outcome {
    let mut out = Outcome::default();
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Outcome::failed(format!("event stream broke: {e}")),
        };
        let now_us = base.elapsed().as_micros() as f64;
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..i + 2).collect();
            if handle(&mut out, &frame, now_us, &job) {
                return out;
            }
        }
    }
    out.error = Some("event stream ended before the turn did".into());
    out
}

/// Takes one SSE frame in; `true` once the turn has ended.
fn handle(out: &mut Outcome, frame: &[u8], now_us: f64, job: &OnceLock<Uuid>) -> bool {
    let text = String::from_utf8_lossy(frame);
    let mut kind = "message";
    let mut data = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() {
        return false; // a keep-alive comment
    }
    let Ok(v) = serde_json::from_str::<Value>(&data) else {
        return false;
    };
    match kind {
        "delta" => {
            let text = v["data"]["text"].as_str().unwrap_or("");
            for sent in text.split('|').filter_map(|t| t.parse::<u64>().ok()) {
                out.latencies_ms.push((now_us - sent as f64) / 1000.0);
            }
            false
        }
        "state" => {
            let ours = v["job_id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .is_some_and(|id| job.get() == Some(&id));
            let state = v["data"]["state"].as_str().unwrap_or("");
            let terminal = matches!(state, "succeeded" | "failed" | "cancelled");
            if ours && terminal {
                out.end = Some((now_us / 1e6, state.to_owned()));
            }
            ours && terminal
        }
        _ => false,
    }
}
