//! A minimal Server-Sent Events reader for tests.

use futures::StreamExt;
use serde_json::Value;

/// One SSE frame: (id, event, data as JSON).
pub type Frame = (i64, String, Value);

/// Reads frames until `max` frames, `stop` returns true for a frame (which is kept), or the stream ends.
pub async fn read(
    resp: reqwest::Response,
    max: usize,
    stop: impl Fn(&Frame) -> bool,
) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while out.len() < max {
        let Some(chunk) = stream.next().await else {
            break;
        };
        let Ok(chunk) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let raw: String = buf.drain(..end + 2).collect();
            let (mut id, mut ev, mut data) = (None, String::new(), String::new());
            for line in raw.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                let frame = (id, ev, serde_json::from_str(&data).unwrap_or(Value::Null));
                let done = stop(&frame);
                out.push(frame);
                if done || out.len() == max {
                    return out;
                }
            }
        }
    }
    out
}
