//! What a chat page shows from its session's traces: each finished turn's link to its trace with
//! a cache-hit badge, and the session's running totals (tokens, cache-hit rate, cost) in the
//! header. Both are read from the spans through `trace::store`, so they agree with the trace page
//! and `GET /api/v1/sessions/{id}/traces`, and the page and its live feed render them alike.

use std::collections::HashMap;

use askama::Template;
use sqlx::PgPool;
use uuid::Uuid;

use super::WebError;
use super::view::{self, CacheHit};
use crate::trace::store;

/// A finished turn's trace link and cache-hit badge.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnTrace {
    pub trace_id: String,
    /// `None` when the turn made no model call that counted input tokens.
    pub cache: Option<CacheHit>,
}

/// The traces of `turns` (finished turns of `session`), by turn id; turns without spans (a
/// turn cancelled before it started) are absent.
pub async fn for_turns(
    pool: &PgPool,
    project: Uuid,
    session: Uuid,
    turns: &[Uuid],
) -> Result<HashMap<Uuid, TurnTrace>, WebError> {
    if turns.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = store::turn_traces(
        pool,
        project,
        session,
        Some(turns),
        None,
        turns.len() as i64,
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|t| {
            let cache = CacheHit::new(t.input_tokens, t.cache_read_tokens);
            (
                t.turn_id,
                TurnTrace {
                    trace_id: t.trace_id,
                    cache,
                },
            )
        })
        .collect())
}

/// The session's totals in the chat header (`oob` replaces the page's).
#[derive(Template)]
#[template(path = "chat_usage.html")]
pub struct UsageTpl {
    pub calls: i64,
    pub input: String,
    pub output: String,
    pub cache_read: String,
    pub cache: Option<CacheHit>,
    pub cost: String,
    pub oob: bool,
}

/// Renders the session's totals over every model call so far.
pub async fn usage(
    pool: &PgPool,
    project: Uuid,
    session: Uuid,
    oob: bool,
) -> Result<String, WebError> {
    let family = crate::agent::store::session_family(pool, session).await?;
    let u = store::session_usage(pool, project, &family).await?;
    Ok(UsageTpl {
        calls: u.calls,
        input: view::thousands(u.input_tokens),
        output: view::thousands(u.output_tokens),
        cache_read: view::thousands(u.cache_read_tokens),
        cache: CacheHit::new(u.input_tokens, u.cache_read_tokens),
        cost: view::usd(u.cost_usd),
        oob,
    }
    .render()?)
}
