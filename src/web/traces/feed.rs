//! The trace page's live feed: at most once a second while a span is open, the waterfall's
//! changes as `hx-swap-oob` fragments, then `close` once every span has ended.
//!
//! The first read after a stream opens replaces the whole waterfall (the page was rendered a
//! moment before, and what it shows is unknown here). Later reads send only what changed: new
//! rows appended under their parent, and the label, bar or attributes of a row that changed. A
//! row's `<details>` is never replaced after that, so a row someone opened stays open while the
//! run goes on. The spans are re-read only when a cheap count says one started or ended;
//! in between, only the open bars grow.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use askama::Template;
use chrono::Utc;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::waterfall::{self, Row, Waterfall};
use super::{AttrsTpl, AxisTpl, BarTpl, LabelTpl, RowTpl, SummaryTpl, TotalsTpl, WaterfallTpl};
use crate::projects::signin;
use crate::trace::store::{self, SpanRow};
use crate::web::auth::User;
use crate::web::live::{Feed, Fragment};
use crate::web::{WebError, WebState};

/// Re-render at most this often.
const TICK: Duration = Duration::from_secs(1);
/// How often a long-lived stream re-checks that its sign-in token still works.
const RECHECK: Duration = Duration::from_secs(30);
/// Sent with the last fragment: removes the page's SSE element, so the browser neither
/// reconnects nor shows "reconnecting…".
const LIVE_END: &str = r#"<div id="trace-live" hx-swap-oob="delete"></div>"#;

/// What the browser has, as far as this stream knows: the rows it holds and the last HTML sent
/// for each replaceable part (by DOM id).
#[derive(Default)]
struct Sent {
    rows: HashSet<String>,
    parts: HashMap<String, String>,
}

impl Sent {
    /// Records `html` for `id`; whether it differs from what was sent before.
    fn changed(&mut self, id: String, html: &str) -> bool {
        if self.parts.get(&id).is_some_and(|h| h == html) {
            return false;
        }
        self.parts.insert(id, html.to_owned());
        true
    }
}

/// Follows one trace for one page.
pub(super) struct TraceFeed {
    pool: PgPool,
    project: Uuid,
    token_id: Uuid,
    trace_id: String,
    spans: Vec<SpanRow>,
    /// `(spans, ended)` when `spans` was read.
    version: Option<(i64, i64)>,
    sent: Option<Sent>,
    done: bool,
    checked: Instant,
}

impl TraceFeed {
    /// A feed of `trace_id` for `user`'s project.
    pub(super) fn new(state: &WebState, user: &User, trace_id: &str) -> Self {
        Self {
            pool: state.app.pool.clone(),
            project: user.project(),
            token_id: user.principal.token_id,
            trace_id: trace_id.to_owned(),
            spans: Vec::new(),
            version: None,
            sent: None,
            done: false,
            checked: Instant::now(),
        }
    }

    /// A row's replaceable parts, rendered as out-of-band swaps: `(DOM id, HTML)`.
    fn parts(r: &Row) -> Result<[(String, String); 3], WebError> {
        Ok([
            (
                format!("lbl-{}", r.id),
                LabelTpl { r, part_oob: true }.render()?,
            ),
            (
                format!("bar-{}", r.id),
                BarTpl { r, part_oob: true }.render()?,
            ),
            (
                format!("attrs-{}", r.id),
                AttrsTpl { r, part_oob: true }.render()?,
            ),
        ])
    }

    /// Everything, replacing what the page shows.
    fn whole(w: &Waterfall, sent: &mut Sent) -> Result<String, WebError> {
        let html = WaterfallTpl {
            w,
            whole_oob: true,
            part_oob: false,
        }
        .render()?;
        for r in &w.rows {
            sent.rows.insert(r.id.clone());
            for (id, part) in Self::parts(r)? {
                sent.parts.insert(id, part);
            }
        }
        sent.changed("wf-axis".into(), &AxisTpl { w, part_oob: true }.render()?);
        Ok(html + &Self::blocks(w, sent)?)
    }

    /// What changed since the last send.
    fn changes(w: &Waterfall, sent: &mut Sent) -> Result<String, WebError> {
        let mut html = String::new();
        for r in &w.rows {
            if sent.rows.contains(&r.id) {
                for (id, part) in Self::parts(r)? {
                    if sent.changed(id, &part) {
                        html.push_str(&part);
                    }
                }
                continue;
            }
            // Rows come in tree order, so a new row's parent was placed before it.
            let target = match &r.parent {
                Some(p) if sent.rows.contains(p) => format!("#kids-{p}"),
                _ => "#wf-roots".to_owned(),
            };
            let row = RowTpl { r, part_oob: false }.render()?;
            html.push_str(&format!(
                r#"<div hx-swap-oob="beforeend:{target}">{row}</div>"#
            ));
            sent.rows.insert(r.id.clone());
            for (id, part) in Self::parts(r)? {
                sent.parts.insert(id, part);
            }
        }
        let axis = AxisTpl { w, part_oob: true }.render()?;
        if sent.changed("wf-axis".into(), &axis) {
            html.push_str(&axis);
        }
        html.push_str(&Self::blocks(w, sent)?);
        Ok(html)
    }

    /// The header line and the totals, when they changed.
    fn blocks(w: &Waterfall, sent: &mut Sent) -> Result<String, WebError> {
        let mut html = String::new();
        let summary = SummaryTpl { w, whole_oob: true }.render()?;
        if sent.changed("trace-summary".into(), &summary) {
            html.push_str(&summary);
        }
        let totals = TotalsTpl { w, whole_oob: true }.render()?;
        if sent.changed("trace-totals".into(), &totals) {
            html.push_str(&totals);
        }
        Ok(html)
    }
}

impl Feed for TraceFeed {
    async fn read(&mut self, after: i64) -> Result<Vec<Fragment>, WebError> {
        // The stream outlives the sign-in check that opened it; a revoked token ends it.
        if self.checked.elapsed() >= RECHECK {
            self.checked = Instant::now();
            if signin::principal(&self.pool, self.token_id)
                .await?
                .is_none()
            {
                self.done = true;
                return Ok(Vec::new());
            }
        }
        let version = store::trace_version(&self.pool, self.project, &self.trace_id).await?;
        if self.version != Some(version) {
            self.spans = store::by_trace(&self.pool, self.project, &self.trace_id).await?;
            self.version = Some(version);
        }
        let cursor = Utc::now().timestamp_millis().max(after + 1);
        if self.spans.is_empty() {
            // The trace went away (its project was deleted): nothing more will come.
            self.done = true;
            return Ok(vec![Fragment {
                cursor,
                html: LIVE_END.to_owned(),
            }]);
        }
        let w = waterfall::build(&self.trace_id, &self.spans, Utc::now());
        let mut html = match self.sent.as_mut() {
            Some(sent) => Self::changes(&w, sent)?,
            None => {
                let mut sent = Sent::default();
                let html = Self::whole(&w, &mut sent)?;
                self.sent = Some(sent);
                html
            }
        };
        if !w.open {
            self.done = true;
            html.push_str(LIVE_END);
        }
        if html.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![Fragment { cursor, html }])
    }

    async fn wait(&mut self) {
        tokio::time::sleep(TICK).await;
    }

    fn done(&self) -> bool {
        self.done
    }
}
