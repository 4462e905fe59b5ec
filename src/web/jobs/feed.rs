//! The job page's live feed (`GET /jobs/{id}/live`): new events become timeline entries, and a
//! state, progress or cancel event re-renders the blocks that depend on the job row. The cursor
//! is the event `seq`, so a reconnecting browser gets exactly what it missed.

use std::time::Duration;

use askama::Template;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::blocks::{Blocks, EventView};
use crate::events::hub::Subscription;
use crate::events::{Event, log};
use crate::queue::{QueueError, control};
use crate::store::Blobs;
use crate::web::WebError;
use crate::web::live::{Feed, Fragment};

/// Events read per round; a full round is followed by another at once.
const BATCH: i64 = 200;
/// A busy job (a token stream) is re-read at most this often.
const MIN_GAP: Duration = Duration::from_millis(200);
/// Re-read at least this often, in case a wake-up was lost.
const BACKSTOP: Duration = Duration::from_secs(2);

/// Live fragments of a job page: appended timeline entries and re-rendered blocks.
#[derive(Template)]
#[template(path = "job_live.html")]
pub(super) struct JobLive {
    pub events: Vec<EventView>,
    pub blocks: Option<Blocks>,
    pub oob: bool,
}

/// Sent with the last fragment: removes the page's SSE element, which closes its stream before
/// the server ends it, so the browser neither reconnects nor shows "reconnecting…".
const LIVE_END: &str = r#"<div id="job-live" hx-swap-oob="delete"></div>"#;

/// Whether an event may change what the blocks show (the job row), not just the timeline.
fn moves_row(e: &Event) -> bool {
    matches!(e.kind.as_str(), "state" | "progress" | "cancel_requested")
}

/// Follows one job for one page.
pub(super) struct DetailFeed {
    pool: PgPool,
    project: Uuid,
    id: Uuid,
    csrf: String,
    created: DateTime<Utc>,
    sub: Subscription,
    /// Offloaded results and event payloads are shown resolved.
    blobs: Blobs,
    first: bool,
    /// The job row was terminal when last read: once no events follow, the feed is done.
    terminal: bool,
    full: bool,
    done: bool,
    last_read: Option<Instant>,
}

impl DetailFeed {
    /// `sub` must be taken before the page read the job, so no change falls between the two.
    pub(super) fn new(
        pool: PgPool,
        project: Uuid,
        id: Uuid,
        csrf: String,
        created: DateTime<Utc>,
        sub: Subscription,
        blobs: Blobs,
    ) -> Self {
        Self {
            pool,
            project,
            id,
            csrf,
            created,
            sub,
            blobs,
            first: true,
            terminal: false,
            full: false,
            done: false,
            last_read: None,
        }
    }
}

impl DetailFeed {
    /// The closing fragment once the feed is done; nothing before.
    fn end(&self, cursor: i64) -> Vec<Fragment> {
        if self.done {
            vec![Fragment {
                cursor,
                html: LIVE_END.to_owned(),
            }]
        } else {
            Vec::new()
        }
    }
}

impl Feed for DetailFeed {
    async fn read(&mut self, after: i64) -> Result<Vec<Fragment>, WebError> {
        self.last_read = Some(Instant::now());
        let mut events = log::read_after(&self.pool, self.id, after, BATCH).await?;
        self.full = events.len() as i64 == BATCH;
        if events.is_empty() && !self.first {
            self.done = self.terminal;
            return Ok(self.end(after));
        }
        let mut blocks = None;
        if self.first || events.iter().any(moves_row) {
            self.first = false;
            // Read after the events, so the blocks are never older than the timeline.
            let mut conn = self.pool.acquire().await?;
            let mut job = match control::fetch(&mut conn, self.project, self.id).await {
                Ok(j) => j,
                Err(QueueError::NotFound) => {
                    self.done = true;
                    return Ok(self.end(after));
                }
                Err(e) => return Err(e.into()),
            };
            drop(conn);
            if let Some(r) = job.result.as_mut() {
                self.blobs.resolve(self.project, r).await;
            }
            self.terminal = job.state.is_terminal();
            if self.terminal && !self.full {
                // The terminal event committed with the row; any event after what we read is
                // in this second read, and then nothing more will come.
                let cursor = events.last().map_or(after, |e| e.seq);
                let more = log::read_after(&self.pool, self.id, cursor, BATCH).await?;
                self.full = more.len() as i64 == BATCH;
                self.done = more.is_empty();
                events.extend(more);
            }
            blocks = Some(Blocks::build(&self.pool, &job, &self.csrf).await?);
        }
        let Some(cursor) = events.last().map(|e| e.seq) else {
            return Ok(self.end(after));
        };
        let datas = events.iter_mut().map(|e| &mut e.data).collect();
        self.blobs.resolve_all(self.project, datas).await;
        let now = Utc::now();
        let mut html = JobLive {
            events: events
                .iter()
                .map(|e| EventView::new(e, self.created, now))
                .collect(),
            blocks,
            oob: true,
        }
        .render()?;
        if self.done {
            html.push_str(LIVE_END);
        }
        Ok(vec![Fragment { cursor, html }])
    }

    async fn wait(&mut self) {
        if self.full {
            return;
        }
        if let Some(t) = self.last_read {
            tokio::time::sleep_until(t + MIN_GAP).await;
        }
        self.sub.changed(BACKSTOP).await;
    }

    fn done(&self) -> bool {
        self.done
    }
}
