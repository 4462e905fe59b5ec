//! `GET /workflow-runs/{id}`: one run — its phases, its steps with status, cache flag, tokens and
//! duration, its log, a budget gauge and a cancel button — and `GET /workflow-runs/{id}/live`,
//! the part of the page that changes, which asks for itself again while the run is unfinished.
//! Another project's run is a 404 like an unknown one.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use uuid::Uuid;

use super::log::{self as run_log, LogLine};
use super::origin_label;
use crate::events::log;
use crate::queue::QueueError;
use crate::queue::control::{self, Cancelled};
use crate::web::auth::User;
use crate::web::chats::is_htmx;
use crate::web::view::{self, Layout};
use crate::web::{WebError, WebState};
use crate::workflow::view::{RunView, StepView};
use crate::workflow::{catalog, steps::terminal, view as run_view};

/// Log entries a page shows; older ones stay in the API.
const LOG_MAX: i64 = 300;

fn run_id(raw: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(raw).map_err(|_| WebError::NotFound("workflow run"))
}

/// One phase: declared by the script's `meta`, or announced by `phase()`.
struct PhaseView {
    title: String,
    /// `done`, `current` or `pending`.
    status: &'static str,
    steps: usize,
}

/// One step as a table row.
struct StepRow {
    n: usize,
    key: String,
    short_key: String,
    kind: String,
    name: String,
    phase: String,
    status: String,
    status_label: &'static str,
    cached: bool,
    tokens: String,
    duration: String,
    job: Option<Uuid>,
    /// The agent turn's transcript (its session), once its job has started.
    transcript: Option<String>,
    /// A nested run's page.
    nested: Option<String>,
}

/// The part of the page that changes while the run goes on.
pub(super) struct RunLive {
    id: Uuid,
    csrf: String,
    state: String,
    state_label: &'static str,
    /// Unfinished (the run, or a step still ending): the fragment asks for itself again.
    live: bool,
    can_cancel: bool,
    notice: Option<String>,
    error: Option<String>,
    output: Option<String>,
    cache_summary: String,
    took: String,
    spent: String,
    total: String,
    pct: u8,
    over: bool,
    phases: Vec<PhaseView>,
    steps: Vec<StepRow>,
    log: Vec<LogLine>,
    log_omitted: bool,
    trace: Option<String>,
}

#[derive(Template)]
#[template(path = "workflow_run_live.html")]
struct LiveTpl<'a> {
    r: &'a RunLive,
}

#[derive(Template)]
#[template(path = "workflow_run.html")]
struct Page {
    layout: Layout,
    id: Uuid,
    short: String,
    workflow: String,
    origin: &'static str,
    created: String,
    created_stamp: String,
    args: String,
    r: RunLive,
}

/// The symbol-and-word label of a step status (a job state, or the step's own words).
fn step_label(status: &str) -> &'static str {
    match status {
        "cached" => "↺ cached",
        "sleeping" => "◷ sleeping",
        "done" => "✓ done",
        s => view::state_label(s),
    }
}

fn step_row(run: Uuid, n: usize, s: &StepView) -> StepRow {
    let started = s.job_id.is_some() && !matches!(s.status.as_str(), "queued" | "unknown");
    StepRow {
        n,
        short_key: s.key.chars().take(10).collect(),
        key: s.key.clone(),
        kind: s.kind.clone(),
        name: match s.label.as_deref().map(str::trim) {
            Some(l) if !l.is_empty() => l.to_owned(),
            _ => format!("{} {}", s.kind, s.position),
        },
        phase: s.phase.clone().unwrap_or_default(),
        status_label: step_label(&s.status),
        status: s.status.clone(),
        cached: s.cached,
        tokens: view::thousands(s.tokens),
        duration: s.duration_ms.map_or_else(String::new, |ms| {
            view::duration(chrono::TimeDelta::milliseconds(ms))
        }),
        job: s.job_id,
        transcript: (s.kind == "agent" && started)
            .then(|| format!("/chats/{}", run_view::step_session(run, &s.key))),
        nested: s
            .job_id
            .filter(|_| s.kind == "workflow")
            .map(|j| format!("/workflow-runs/{j}")),
    }
}

/// The phases in order: those `meta` declares, then any others the script announced; the last
/// announced one is current while the run goes on.
fn phases(
    declared: &[String],
    announced: &[String],
    steps: &[StepView],
    ended: bool,
) -> Vec<PhaseView> {
    let mut titles: Vec<String> = declared.to_vec();
    for t in announced
        .iter()
        .chain(steps.iter().filter_map(|s| s.phase.as_ref()))
    {
        if !titles.contains(t) {
            titles.push(t.clone());
        }
    }
    let current = announced.last();
    let reached: Vec<&String> = announced.iter().collect();
    titles
        .into_iter()
        .map(|title| {
            let status = if current == Some(&title) && !ended {
                "current"
            } else if reached.contains(&&title)
                || steps.iter().any(|s| s.phase.as_ref() == Some(&title))
            {
                "done"
            } else {
                "pending"
            };
            PhaseView {
                steps: steps
                    .iter()
                    .filter(|s| s.phase.as_ref() == Some(&title))
                    .count(),
                title,
                status,
            }
        })
        .collect()
}

/// Builds the live part from the run and its log.
async fn build(
    state: &WebState,
    user: &User,
    v: &RunView,
    notice: Option<String>,
) -> Result<RunLive, WebError> {
    let pool = &state.app.pool;
    let project = user.project();
    let head = control::last_seq(pool, project, v.run.id).await?;
    let from = (head - LOG_MAX).max(0);
    let events = log::read_after(pool, v.run.id, from, LOG_MAX).await?;
    // Everything the script announced is in the log, but older phases may have scrolled out
    // of it; the steps keep theirs.
    let announced: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "phase")
        .filter_map(|e| e.data["title"].as_str().map(str::to_owned))
        .collect();
    let declared = catalog::validate(&v.run.source, state.app.workflows.sandbox())
        .await
        .map(|m| m.phases)
        .unwrap_or_default();
    let ended = terminal(Some(&v.run.state));
    let now = Utc::now();
    let steps: Vec<StepRow> = v
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| step_row(v.run.id, i + 1, s))
        .collect();
    // A cancelled run's running steps end a moment after it: follow them too.
    let steps_open = v
        .steps
        .iter()
        .any(|s| s.job_id.is_some() && !terminal(Some(&s.status)) && s.status != "cached");
    let total = v.run.budget_total.max(1);
    let trace = crate::trace::store::started_trace_of_job(pool, project, v.run.id).await?;
    Ok(RunLive {
        id: v.run.id,
        csrf: user.csrf.clone(),
        state_label: view::state_label(&v.run.state),
        state: v.run.state.clone(),
        live: !ended || steps_open,
        can_cancel: !ended,
        notice,
        error: v.run.error.clone(),
        output: v
            .output
            .as_ref()
            .filter(|_| v.run.state == "succeeded")
            .map(view::pretty),
        cache_summary: v.cache_summary.clone(),
        // A waiting run has a finish time too (its last activation's): only an ended run stops.
        took: view::duration(v.run.finished_at.filter(|_| ended).unwrap_or(now) - v.run.created_at),
        spent: view::thousands(v.spent),
        total: view::thousands(v.run.budget_total),
        pct: (v.spent.clamp(0, total) * 100 / total) as u8,
        over: v.spent > v.run.budget_total,
        phases: phases(&declared, &announced, &v.steps, ended),
        steps,
        log: run_log::lines(&events, v.run.created_at),
        log_omitted: from > 0,
        trace,
    })
}

async fn load(state: &WebState, user: &User, id: Uuid) -> Result<RunView, WebError> {
    run_view::run(&state.app.pool, user.project(), id)
        .await?
        .ok_or(WebError::NotFound("workflow run"))
}

/// `GET /workflow-runs/{id}`.
pub async fn page(
    State(state): State<WebState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Html<String>, WebError> {
    let id = run_id(&raw)?;
    let v = load(&state, &user, id).await?;
    let r = build(&state, &user, &v, None).await?;
    let origin = catalog::find(
        &state.app.pool,
        user.project(),
        &state.app.workflows,
        &v.run.workflow,
    )
    .await?
    .map_or("", |e| origin_label(e.origin));
    Ok(Html(
        Page {
            layout: user.layout("workflows"),
            id,
            short: view::short_id(&id),
            workflow: v.run.workflow.clone(),
            origin,
            created: view::ago(v.run.created_at, Utc::now()),
            created_stamp: view::stamp(v.run.created_at),
            args: view::pretty(&v.run.args),
            r,
        }
        .render()?,
    ))
}

/// `GET /workflow-runs/{id}/live`: the changing part alone, for htmx.
pub async fn live(
    State(state): State<WebState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Html<String>, WebError> {
    let id = run_id(&raw)?;
    let v = load(&state, &user, id).await?;
    let r = build(&state, &user, &v, None).await?;
    Ok(Html(LiveTpl { r: &r }.render()?))
}

/// `POST /workflow-runs/{id}/cancel`: cancels the run and, through the job tree, its steps.
/// htmx gets the live part back with what happened; a plain form goes back to the page.
pub async fn cancel(
    State(state): State<WebState>,
    user: User,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, WebError> {
    user.require_write()?;
    let id = run_id(&raw)?;
    let before = load(&state, &user, id).await?;
    let notice = if terminal(Some(&before.run.state)) {
        format!("The run had already ended ({}).", before.run.state)
    } else {
        match control::cancel(&state.app.pool, user.project(), id).await {
            Ok(Cancelled::Requested) => "Asked the run to stop; it ends in a moment.".to_owned(),
            Ok(Cancelled::Now | Cancelled::Already) => "The run was cancelled.".to_owned(),
            Err(QueueError::WrongState(s, _)) => {
                format!("The run had already ended ({}).", s.as_str())
            }
            Err(QueueError::NotFound) => return Err(WebError::NotFound("workflow run")),
            Err(e) => return Err(e.into()),
        }
    };
    if !is_htmx(&headers) {
        return Ok(Redirect::to(&format!("/workflow-runs/{id}")).into_response());
    }
    let v = load(&state, &user, id).await?;
    let r = build(&state, &user, &v, Some(notice)).await?;
    Ok(Html(LiveTpl { r: &r }.render()?).into_response())
}
