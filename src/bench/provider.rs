//! The model provider of `spool bench --mode turns`: an OpenAI-compatible streaming server on
//! 127.0.0.1 inside the bench process. A turn's reply is `tokens` chunks, `gap` apart, each chunk's
//! text being `"<µs since the bench's base instant>|"` taken when the chunk is sent, so a reader
//! in the same process can tell how long each chunk took to reach it through Spool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// The user message of a warm-up turn; answered at once with one short chunk.
pub const WARM_UP: &str = "warm up";

/// A running provider; stops when dropped.
pub struct Provider {
    /// `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

struct Shared {
    base: Instant,
    tokens: usize,
    gap: Duration,
    /// Timed (measured) streams open right now, and the most ever open at once.
    open: AtomicUsize,
    peak: AtomicUsize,
}

impl Provider {
    /// Starts the server on a free port; timestamps count from `base`.
    pub async fn start(base: Instant, tokens: usize, gap: Duration) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            base,
            tokens,
            gap,
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the bench provider")?;
        let addr = listener.local_addr()?;
        // Like a real provider's streaming endpoint: each token leaves at once.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "bench provider stopped");
            }
        });
        Ok(Self {
            base_url: format!("http://{addr}/v1"),
            shared,
            server,
        })
    }

    /// The most timed streams that were open at the same moment.
    pub fn peak_streams(&self) -> usize {
        self.shared.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Counts a timed stream as open for as long as it lives.
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: &Arc<Shared>) -> Self {
        let now = shared.open.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak.fetch_max(now, Ordering::Relaxed);
        Self(Arc::clone(shared))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where one response body is.
struct Reply {
    shared: Arc<Shared>,
    model: String,
    /// `None`: timed tokens; `Some`: this one text chunk at once (titles, warm-ups).
    fixed: Option<&'static str>,
    chunks: usize,
    step: usize,
    _open: Option<Open>,
}

async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = req["model"].as_str().unwrap_or("fake").to_owned();
    let last_user = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    // Title jobs are the only calls that set `max_tokens`.
    let fixed = if req.get("max_tokens").is_some() {
        Some("Bench session")
    } else if last_user == WARM_UP {
        Some("ok")
    } else {
        None
    };
    let reply = Reply {
        model,
        fixed,
        chunks: if fixed.is_some() { 1 } else { shared.tokens },
        step: 0,
        _open: fixed.is_none().then(|| Open::new(&shared)),
        shared,
    };
    let stream = futures::stream::unfold(reply, |mut r| async move {
        let bytes = r.next().await?;
        Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), r))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

impl Reply {
    /// The next SSE event of the body: the role chunk, the text chunks, the finish chunk, the
    /// usage chunk, `[DONE]`; then `None`.
    async fn next(&mut self) -> Option<String> {
        let step = self.step;
        self.step += 1;
        let n = self.chunks;
        let data = match step {
            0 => self.frame(
                json!({ "role": "assistant", "content": "", "refusal": null }),
                None,
            ),
            s if s <= n => {
                let text = match self.fixed {
                    Some(t) => t.to_owned(),
                    None => {
                        tokio::time::sleep(self.shared.gap).await;
                        format!("{}|", self.shared.base.elapsed().as_micros())
                    }
                };
                self.frame(json!({ "content": text }), None)
            }
            s if s == n + 1 => self.frame(json!({}), Some("stop")),
            s if s == n + 2 => json!({
                "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": self.model, "choices": [],
                "usage": { "prompt_tokens": 10, "completion_tokens": n, "total_tokens": n + 10 },
            }),
            s if s == n + 3 => return Some("data: [DONE]\n\n".to_owned()),
            _ => return None,
        };
        Some(format!("data: {data}\n\n"))
    }

    fn frame(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        })
    }
}
