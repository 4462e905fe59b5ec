//! A live feed of re-rendered page parts, for the overview and workers pages.
//!
//! A page lists its live parts as [`Block`]s, each an `hx-swap-oob` element with an id. The feed
//! re-renders them on a timer (sooner after a wake-up) and sends only those that changed since
//! the last send. Parts that hold links or an open `<details>` change only when their structure
//! does, while the numbers in them are blocks of their own: a keyboard user's focus, or a
//! disclosure someone opened, is not replaced every second.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::super::auth::User;
use super::super::live::{Feed, Fragment};
use super::super::{WebError, WebState};
use crate::projects::signin;

/// Blocks are re-rendered at most this often, however many jobs are enqueued…
const REFRESH_MIN: Duration = Duration::from_secs(1);
/// …and at least this often, since nothing announces finished jobs or heartbeats.
const REFRESH_MAX: Duration = Duration::from_secs(2);
/// How often a long-lived stream re-checks that its sign-in token still works.
const RECHECK: Duration = Duration::from_secs(30);

/// One live element: its DOM id, what decides whether it changed, and its `hx-swap-oob` HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub id: String,
    pub sig: String,
    pub html: String,
}

impl Block {
    /// A block that is re-sent whenever its HTML changes.
    pub fn whole(id: impl Into<String>, html: String) -> Self {
        Self {
            id: id.into(),
            sig: html.clone(),
            html,
        }
    }

    /// A block re-sent only when `sig` changes (its numbers travel as blocks of their own).
    pub fn keyed(id: impl Into<String>, sig: String, html: String) -> Self {
        Self {
            id: id.into(),
            sig,
            html,
        }
    }

    /// New text for the element `id`, which must be plain (numbers, durations). Only the
    /// contents are swapped, so the element keeps its classes and attributes.
    pub fn span(id: &str, text: &str) -> Self {
        Self::whole(
            id,
            format!(r#"<span hx-swap-oob="innerHTML:#{id}">{text}</span>"#),
        )
    }
}

/// A page's live parts. Containers come before the blocks inside them.
pub trait Blocks: Send + Sync + 'static {
    /// Renders every block.
    fn render(&self) -> impl Future<Output = Result<Vec<Block>, WebError>> + Send;
}

/// A [`Feed`] of changed blocks; the cursor is the render time in milliseconds.
pub struct BlockFeed<B> {
    blocks: B,
    pool: PgPool,
    token_id: Uuid,
    wakeups: Option<watch::Receiver<u64>>,
    /// Each block's signature as last rendered.
    last: HashMap<String, String>,
    checked: tokio::time::Instant,
    revoked: bool,
}

impl<B: Blocks> BlockFeed<B> {
    /// A feed for `user`, woken early by `wakeups` when given.
    pub fn new(
        state: &WebState,
        user: &User,
        blocks: B,
        wakeups: Option<watch::Receiver<u64>>,
    ) -> Self {
        Self {
            blocks,
            pool: state.app.pool.clone(),
            token_id: user.principal.token_id,
            wakeups,
            last: HashMap::new(),
            checked: tokio::time::Instant::now(),
            revoked: false,
        }
    }
}

impl<B: Blocks> Feed for BlockFeed<B> {
    async fn read(&mut self, after: i64) -> Result<Vec<Fragment>, WebError> {
        // The User extractor checked the token when the stream opened; a stream outlives that,
        // so revoking a token must also end the streams it opened.
        if self.checked.elapsed() >= RECHECK {
            self.checked = tokio::time::Instant::now();
            if signin::principal(&self.pool, self.token_id)
                .await?
                .is_none()
            {
                self.revoked = true;
                return Ok(Vec::new());
            }
        }
        // The first read sends every block: the page may have changed since it was rendered, and
        // what it showed is unknown here.
        let now = now_ms();
        let mut html = String::new();
        for b in self.blocks.render().await? {
            if self.last.get(&b.id) != Some(&b.sig) {
                html.push_str(&b.html);
                self.last.insert(b.id, b.sig);
            }
        }
        if html.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![Fragment {
            cursor: now.max(after + 1),
            html,
        }])
    }

    async fn wait(&mut self) {
        tokio::time::sleep(REFRESH_MIN).await;
        let rest = tokio::time::sleep(REFRESH_MAX - REFRESH_MIN);
        match self.wakeups.as_mut() {
            // `changed` also sees a wake-up that came during the render or the pause above.
            Some(w) => {
                tokio::select! {
                    _ = rest => {}
                    _ = w.changed() => {}
                }
            }
            None => rest.await,
        }
    }

    fn done(&self) -> bool {
        self.revoked
    }
}

/// Milliseconds since the Unix epoch: a cursor that only grows and means the same on every node.
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
