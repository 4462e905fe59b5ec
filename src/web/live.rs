//! Live pages: one endpoint per page sends server-rendered fragments, as SSE for htmx's SSE
//! extension or as one poll answer when SSE is unavailable.
//!
//! Every fragment is a run of `hx-swap-oob` elements, so a page needs one SSE connection and one
//! sink (`<div sse-swap="message" hx-swap="none">`) however many parts of it change. The SSE `id`
//! is the page's cursor: the browser resumes with `Last-Event-ID`, and `static/app.js` keeps it in
//! the `sse-connect` URL so a re-created stream resumes too. A poll (`X-Spool-Poll: 1`) answers
//! the fragments after `?after=` with the new cursor in `Spool-Cursor`.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};

use super::WebError;

/// Part of a page, already rendered, and the cursor it brings the page to.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub cursor: i64,
    pub html: String,
}

/// Where a page's changes come from.
pub trait Feed: Send + 'static {
    /// The fragments after `after`; empty when nothing changed.
    fn read(&mut self, after: i64) -> impl Future<Output = Result<Vec<Fragment>, WebError>> + Send;
    /// Resolves when something may have changed (a NOTIFY, a pumped batch, or a timer).
    fn wait(&mut self) -> impl Future<Output = ()> + Send;
    /// Whether nothing more can change (a finished job); the stream then says `close` and ends.
    fn done(&self) -> bool {
        false
    }
}

/// The resume cursor: `Last-Event-ID` when the browser reconnects, else `?after=`, else 0.
pub fn cursor(headers: &HeaderMap, after: Option<&str>) -> Result<i64, WebError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(after);
    match raw {
        None => Ok(0),
        Some(r) => r
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| WebError::BadRequest("the cursor must be a non-negative number".into())),
    }
}

fn is_poll(headers: &HeaderMap) -> bool {
    headers.get("x-spool-poll").is_some()
}

/// Answers a live endpoint: the SSE stream, or one poll page.
pub async fn respond<F: Feed>(headers: &HeaderMap, after: i64, mut feed: F) -> Response {
    if is_poll(headers) {
        return match feed.read(after).await {
            Ok(frags) => {
                let cursor = frags.last().map_or(after, |f| f.cursor);
                let body: String = frags.into_iter().map(|f| f.html).collect();
                let mut res = Html(body).into_response();
                let h = res.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&cursor.to_string()) {
                    h.insert("spool-cursor", v);
                }
                if feed.done() {
                    h.insert("spool-done", HeaderValue::from_static("1"));
                }
                res
            }
            Err(e) => e.into_response(),
        };
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let mut after = after;
        loop {
            match feed.read(after).await {
                Ok(frags) => {
                    for f in frags {
                        let ev = Event::default().id(f.cursor.to_string()).data(f.html);
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                        after = f.cursor;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "live page read failed; retrying"),
            }
            if feed.done() {
                // Browsers drop events without data, so the close event carries a word.
                let _ = tx
                    .send(Ok(Event::default().event("close").data("close")))
                    .await;
                return;
            }
            tokio::select! {
                _ = feed.wait() => {}
                _ = tx.closed() => return,
            }
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
