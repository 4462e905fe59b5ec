//! `/api/v1/traces/{trace_id}` and `/api/v1/jobs/{id}/trace`: a trace's spans as a tree.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use uuid::Uuid;

use super::auth::Auth;
use super::jobs::job_id;
use super::{ApiError, AppState};
use crate::trace::store::{self, SpanRow};

/// A span with the spans that hang under it.
#[derive(Debug, Serialize)]
pub struct Node {
    #[serde(flatten)]
    pub span: SpanRow,
    pub children: Vec<Node>,
}

/// Nests spans under their parents; spans whose parent is not in the trace (the caller's own
/// span, or a root) come out as roots.
fn tree(spans: Vec<SpanRow>) -> Vec<Node> {
    let ids: std::collections::HashSet<String> = spans.iter().map(|s| s.span_id.clone()).collect();
    let mut children: std::collections::HashMap<String, Vec<SpanRow>> = Default::default();
    let mut roots = Vec::new();
    for s in spans {
        match &s.parent_span_id {
            Some(p) if ids.contains(p) && *p != s.span_id => {
                children.entry(p.clone()).or_default().push(s)
            }
            _ => roots.push(s),
        }
    }
    fn build(s: SpanRow, children: &mut std::collections::HashMap<String, Vec<SpanRow>>) -> Node {
        let kids = children.remove(&s.span_id).unwrap_or_default();
        Node {
            children: kids.into_iter().map(|k| build(k, children)).collect(),
            span: s,
        }
    }
    roots.into_iter().map(|r| build(r, &mut children)).collect()
}

fn valid_trace_id(raw: &str) -> Result<&str, ApiError> {
    if crate::trace::is_hex(raw, 32) {
        Ok(raw)
    } else {
        Err(ApiError::invalid_field(
            "trace_id",
            "a trace id is 32 lowercase hex digits, not all zero",
        ))
    }
}

/// The answer: the trace id, its spans as a tree, and how many spans there are.
#[derive(Debug, Serialize)]
pub struct Trace {
    pub trace_id: String,
    pub span_count: usize,
    pub spans: Vec<Node>,
}

async fn load(state: &AppState, project: Uuid, trace_id: &str) -> Result<Trace, ApiError> {
    let spans = store::by_trace(&state.pool, project, trace_id).await?;
    if spans.is_empty() {
        return Err(ApiError::not_found("trace"));
    }
    Ok(Trace {
        trace_id: trace_id.to_owned(),
        span_count: spans.len(),
        spans: tree(spans),
    })
}

/// `GET /api/v1/traces/{trace_id}`.
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(raw): Path<String>,
) -> Result<Json<Trace>, ApiError> {
    let id = valid_trace_id(&raw)?;
    Ok(Json(load(&state, auth.0.project_id, id).await?))
}

/// `GET /api/v1/jobs/{id}/trace`: the trace the job belongs to.
pub async fn of_job(
    State(state): State<AppState>,
    auth: Auth,
    Path(raw): Path<String>,
) -> Result<Json<Trace>, ApiError> {
    let id = job_id(&raw)?;
    let trace = store::trace_of_job(&state.pool, auth.0.project_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(load(&state, auth.0.project_id, &trace).await?))
}

/// Query of `GET /api/v1/sessions/{id}/traces`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnTracesQuery {
    cursor: Option<String>,
    limit: Option<String>,
    turn: Option<String>,
}

/// Tokens of a turn's LLM calls.
#[derive(Debug, Serialize)]
pub struct Tokens {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
}

/// One turn's trace in the list.
#[derive(Debug, Serialize)]
pub struct TurnTraceItem {
    pub turn_id: Uuid,
    pub trace_id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status: String,
    pub attempts: i64,
    pub span_count: i64,
    pub tokens: Tokens,
    pub cost_usd: f64,
    pub duration_ms: i64,
}

impl From<store::TurnTrace> for TurnTraceItem {
    fn from(t: store::TurnTrace) -> Self {
        Self {
            turn_id: t.turn_id,
            trace_id: t.trace_id,
            started_at: t.started_at,
            ended_at: t.ended_at,
            status: t.status,
            attempts: t.attempts,
            span_count: t.span_count,
            tokens: Tokens {
                input: t.input_tokens,
                output: t.output_tokens,
                cache_read: t.cache_read_tokens,
            },
            cost_usd: t.cost_usd,
            duration_ms: t.duration_ms,
        }
    }
}

/// A page of turn traces and where the next one starts.
#[derive(Debug, Serialize)]
pub struct TurnTraceList {
    pub traces: Vec<TurnTraceItem>,
    pub next_cursor: Option<String>,
}

/// The opaque cursor: base64url of `<first attempt's start, µs since the epoch>.<its span id>`.
fn encode_cursor(t: &store::TurnTrace) -> String {
    use base64::Engine;
    let raw = format!("{}.{}", t.started_at.timestamp_micros(), t.span_id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(raw: &str) -> Result<store::TurnCursor, ApiError> {
    use base64::Engine;
    let bad = || ApiError::invalid_field("cursor", "cursor is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (micros, span) = text.split_once('.').ok_or_else(bad)?;
    let started_at = micros
        .parse::<i64>()
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    let hex = span.len() == 16 && span.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex {
        return Err(bad());
    }
    Ok(store::TurnCursor {
        started_at,
        span_id: span.to_owned(),
    })
}

/// `GET /api/v1/sessions/{id}/traces`: the session's started turns with their traces and
/// totals, newest first, keyset-paginated; `turn=<id>` narrows to one turn.
pub async fn of_session(
    State(state): State<AppState>,
    auth: Auth,
    Path(raw): Path<String>,
    super::input::ValidQuery(q): super::input::ValidQuery<TurnTracesQuery>,
) -> Result<Json<TurnTraceList>, ApiError> {
    let project = auth.0.project_id;
    // A malformed session id is a 404 like an unknown one, as on every session route.
    let session = Uuid::parse_str(&raw).map_err(|_| ApiError::not_found("session"))?;
    let limit = super::input::bounded(q.limit.as_deref(), "limit", 50, 1..=200)?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let turn = q
        .turn
        .as_deref()
        .map(|t| {
            Uuid::parse_str(t.trim())
                .map_err(|_| ApiError::invalid_field("turn", "turn must be a turn id (a UUID)"))
        })
        .transpose()?;
    let mut conn = state.pool.acquire().await?;
    crate::agent::store::session(&mut conn, project, session, false)
        .await?
        .ok_or_else(|| ApiError::not_found("session"))?;
    drop(conn);
    let turns = turn.map(|t| vec![t]);
    let mut rows = store::turn_traces(
        &state.pool,
        project,
        session,
        turns.as_deref(),
        after.as_ref(),
        limit + 1,
    )
    .await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(TurnTraceList {
        traces: rows.into_iter().map(TurnTraceItem::from).collect(),
        next_cursor,
    }))
}
