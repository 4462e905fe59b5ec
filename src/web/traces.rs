//! `GET /traces/{trace_id}`: one trace as a waterfall — a bar per span on a shared time axis,
//! nested by parent, labelled with kind, name, duration and status, each row opening onto its
//! attributes — with totals per job span. While a span is open, `/traces/{trace_id}/live` keeps
//! it current (see `feed`).
//!
//! `waterfall` turns spans into rows; the spans come from `trace::store`, scoped to the
//! signed-in project, so another project's trace is a 404 like an unknown one.

mod feed;
mod waterfall;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Response};
use axum::routing::get;
use chrono::Utc;
use serde::Deserialize;

use super::auth::User;
use super::view::Layout;
use super::{WebError, WebState, live};
use crate::trace::store;
use waterfall::{Row, Waterfall};

/// Read-only routes.
pub fn pages() -> Router<WebState> {
    Router::new()
        .route("/traces/{trace_id}", get(page))
        .route("/traces/{trace_id}/live", get(live_feed))
}

/// A trace id from a path: 32 lowercase hex digits, as the API takes them; else a 400.
fn trace_id(raw: &str) -> Result<&str, WebError> {
    if crate::trace::is_hex(raw, 32) {
        Ok(raw)
    } else {
        Err(WebError::BadRequest(
            "a trace id is 32 lowercase hex digits".into(),
        ))
    }
}

#[derive(Template)]
#[template(path = "trace.html")]
struct TracePage<'a> {
    layout: Layout,
    w: &'a Waterfall,
    /// The whole-block includes render in place on the page…
    whole_oob: bool,
    /// …and so do the parts of each row.
    part_oob: bool,
}

/// The waterfall, whole (`whole_oob` replaces the page's).
#[derive(Template)]
#[template(path = "trace_waterfall.html")]
struct WaterfallTpl<'a> {
    w: &'a Waterfall,
    whole_oob: bool,
    part_oob: bool,
}

/// The header line: running or finished, span count, duration.
#[derive(Template)]
#[template(path = "trace_summary.html")]
struct SummaryTpl<'a> {
    w: &'a Waterfall,
    whole_oob: bool,
}

/// The totals table.
#[derive(Template)]
#[template(path = "trace_totals.html")]
struct TotalsTpl<'a> {
    w: &'a Waterfall,
    whole_oob: bool,
}

/// The time axis.
#[derive(Template)]
#[template(path = "trace_axis.html")]
struct AxisTpl<'a> {
    w: &'a Waterfall,
    part_oob: bool,
}

/// One complete row (with an empty list for its children), to append to the page.
#[derive(Template)]
#[template(path = "trace_row_one.html")]
struct RowTpl<'a> {
    r: &'a Row,
    part_oob: bool,
}

/// A row's label.
#[derive(Template)]
#[template(path = "trace_label.html")]
struct LabelTpl<'a> {
    r: &'a Row,
    part_oob: bool,
}

/// A row's bar.
#[derive(Template)]
#[template(path = "trace_bar.html")]
struct BarTpl<'a> {
    r: &'a Row,
    part_oob: bool,
}

/// A row's attributes.
#[derive(Template)]
#[template(path = "trace_attrs.html")]
struct AttrsTpl<'a> {
    r: &'a Row,
    part_oob: bool,
}

/// `GET /traces/{trace_id}`.
pub async fn page(
    State(state): State<WebState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Html<String>, WebError> {
    let id = trace_id(&raw)?;
    let spans = store::by_trace(&state.app.pool, user.project(), id).await?;
    if spans.is_empty() {
        return Err(WebError::NotFound("trace"));
    }
    let w = waterfall::build(id, &spans, Utc::now());
    Ok(Html(
        TracePage {
            layout: user.layout(""),
            w: &w,
            whole_oob: false,
            part_oob: false,
        }
        .render()?,
    ))
}

/// Query of the live feed.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    after: Option<String>,
}

/// `GET /traces/{trace_id}/live`: the waterfall's changes as SSE (or one poll answer), about
/// once a second until every span has ended.
pub async fn live_feed(
    State(state): State<WebState>,
    user: User,
    headers: HeaderMap,
    Path(raw): Path<String>,
    Query(q): Query<LiveQuery>,
) -> Result<Response, WebError> {
    let id = trace_id(&raw)?;
    let after = live::cursor(&headers, q.after.as_deref())?;
    let (spans, _) = store::trace_version(&state.app.pool, user.project(), id).await?;
    if spans == 0 {
        return Err(WebError::NotFound("trace"));
    }
    let feed = feed::TraceFeed::new(&state, &user, id);
    Ok(live::respond(&headers, after, feed).await)
}
