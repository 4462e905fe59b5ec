//! `POST /jobs/bulk`: cancel or retry the checked jobs. The first post shows what will happen to
//! each; the confirmation posts again with `confirm=yes`, acts, and sends the browser back to the
//! list with a per-job summary in the URL, so the outcome survives the redirect with no
//! server-side flash state.

use askama::Template;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use uuid::Uuid;

use super::RowView;
use super::list::ListParams;
use crate::queue::control::{self, Cancelled};
use crate::queue::{JobState, QueueError};
use crate::web::auth::User;
use crate::web::view::{Layout, short_id};
use crate::web::{WebError, WebState};

/// The most jobs one bulk action takes (two list pages).
const MAX_BULK: usize = 100;

/// What happened to one job of a bulk action; `code` is how it travels in the summary URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Cancelled,
    Stopping,
    Already,
    Finished,
    Queued,
    Skipped,
    Missing,
    Failed,
}

const OUTCOMES: [Outcome; 8] = [
    Outcome::Cancelled,
    Outcome::Stopping,
    Outcome::Queued,
    Outcome::Already,
    Outcome::Finished,
    Outcome::Skipped,
    Outcome::Missing,
    Outcome::Failed,
];

impl Outcome {
    fn code(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Stopping => "stopping",
            Self::Already => "already",
            Self::Finished => "finished",
            Self::Queued => "queued",
            Self::Skipped => "skipped",
            Self::Missing => "missing",
            Self::Failed => "failed",
        }
    }

    /// For the summary's headline: "3 cancelled".
    fn short(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Stopping => "asked to stop",
            Self::Already => "already cancelled",
            Self::Finished => "already finished",
            Self::Queued => "queued again",
            Self::Skipped => "not retryable",
            Self::Missing => "not found",
            Self::Failed => "failed",
        }
    }

    /// For the per-job list.
    fn text(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Stopping => "was running; its worker has been asked to stop it",
            Self::Already => "skipped: it was already cancelled",
            Self::Finished => "skipped: it had already finished",
            Self::Queued => "queued again as a new attempt",
            Self::Skipped => "skipped: only failed or cancelled jobs can be retried",
            Self::Missing => "skipped: no such job in this project",
            Self::Failed => "not changed: the database did not answer; try again",
        }
    }

    fn parse(code: &str) -> Option<Self> {
        OUTCOMES.into_iter().find(|o| o.code() == code)
    }

    fn of_cancel(r: &Result<Cancelled, QueueError>) -> Self {
        match r {
            Ok(Cancelled::Now) => Self::Cancelled,
            Ok(Cancelled::Requested) => Self::Stopping,
            Ok(Cancelled::Already) => Self::Already,
            Err(QueueError::WrongState(..)) => Self::Finished,
            Err(QueueError::NotFound) => Self::Missing,
            Err(_) => Self::Failed,
        }
    }

    fn of_retry(r: &Result<(), QueueError>) -> Self {
        match r {
            Ok(()) => Self::Queued,
            Err(QueueError::WrongState(..)) => Self::Skipped,
            Err(QueueError::NotFound) => Self::Missing,
            Err(_) => Self::Failed,
        }
    }
}

/// One job's line in a summary.
#[derive(Debug, Clone)]
pub(super) struct SummaryItem {
    pub(super) id: String,
    pub(super) short: String,
    pub(super) text: &'static str,
}

/// What a bulk action did, shown above the list it returned to.
#[derive(Debug, Clone)]
pub(super) struct Summary {
    pub(super) title: String,
    pub(super) items: Vec<SummaryItem>,
}

impl Summary {
    /// Reads `?bulk=cancel&done=<id>:<code>,…`; anything malformed is left out.
    pub(super) fn from_params(bulk: Option<&str>, done: Option<&str>) -> Option<Self> {
        let verb = match bulk? {
            "cancel" => "Cancel",
            "retry" => "Retry",
            _ => return None,
        };
        let mut items = Vec::new();
        let mut counts = [0usize; OUTCOMES.len()];
        for part in done.unwrap_or("").split(',').take(MAX_BULK) {
            let Some((id, code)) = part.split_once(':') else {
                continue;
            };
            let (Ok(id), Some(o)) = (Uuid::parse_str(id), Outcome::parse(code)) else {
                continue;
            };
            if let Some(i) = OUTCOMES.iter().position(|x| *x == o) {
                counts[i] += 1;
            }
            items.push(SummaryItem {
                id: id.to_string(),
                short: short_id(&id),
                text: o.text(),
            });
        }
        let parts: Vec<String> = OUTCOMES
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(o, n)| format!("{n} {}", o.short()))
            .collect();
        let title = if parts.is_empty() {
            format!("{verb}: nothing was changed.")
        } else {
            format!("{verb}: {}.", parts.join(" · "))
        };
        Some(Self { title, items })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Cancel,
    Retry,
}

/// The bulk form: `action`, repeated `ids`, `confirm=yes` on the second post, and `back`, the list
/// URL to return to. Read by hand because repeated keys are beyond `Form`.
struct BulkForm {
    action: Action,
    ids: Vec<Uuid>,
    confirm: bool,
    back: ListParams,
}

fn parse_form(body: &[u8]) -> Result<BulkForm, WebError> {
    let (mut action, mut ids, mut confirm, mut back) = (None, Vec::new(), false, None);
    for (k, v) in url::form_urlencoded::parse(body) {
        match &*k {
            "action" => action = Some(v.into_owned()),
            "ids" => ids.push(
                Uuid::parse_str(v.trim())
                    .map_err(|_| WebError::BadRequest("a selected job id is malformed".into()))?,
            ),
            "confirm" => confirm = v == "yes",
            "back" => back = Some(v.into_owned()),
            _ => {}
        }
    }
    let action = match action.as_deref() {
        Some("cancel") => Action::Cancel,
        Some("retry") => Action::Retry,
        _ => {
            return Err(WebError::BadRequest(
                "choose Cancel or Retry for the selected jobs".into(),
            ));
        }
    };
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(WebError::BadRequest(
            "no jobs were selected; tick the boxes of the jobs to change first".into(),
        ));
    }
    if ids.len() > MAX_BULK {
        return Err(WebError::BadRequest(format!(
            "at most {MAX_BULK} jobs can be changed at once"
        )));
    }
    // Only the list's own parameters come back from `back`, so it cannot send the browser away.
    let back = back
        .as_deref()
        .and_then(|b| b.strip_prefix("/jobs"))
        .filter(|rest| rest.is_empty() || rest.starts_with('?'))
        .and_then(|rest| ListParams::parse(rest.trim_start_matches('?')).ok())
        .unwrap_or_default();
    Ok(BulkForm {
        action,
        ids,
        confirm,
        back,
    })
}

/// A job on the confirmation page with what the action will do to it.
struct ConfirmItem {
    row: RowView,
    plan: &'static str,
}

#[derive(Template)]
#[template(path = "bulk_confirm.html")]
struct ConfirmPage {
    layout: Layout,
    action: &'static str,
    verb: &'static str,
    items: Vec<ConfirmItem>,
    missing: Vec<String>,
    ids: Vec<String>,
    acting: usize,
    back: String,
}

fn plan(action: Action, state: JobState) -> (&'static str, bool) {
    match (action, state) {
        (Action::Cancel, JobState::Running) => ("will be asked to stop, then end cancelled", true),
        (Action::Cancel, JobState::Queued | JobState::Waiting) => ("will be cancelled", true),
        (Action::Cancel, JobState::Cancelled) => ("skipped: already cancelled", false),
        (Action::Cancel, _) => ("skipped: already finished", false),
        (Action::Retry, JobState::Failed | JobState::Cancelled) => ("will be queued again", true),
        (Action::Retry, _) => (
            "skipped: only failed or cancelled jobs can be retried",
            false,
        ),
    }
}

/// `POST /jobs/bulk`.
pub async fn submit(
    State(state): State<WebState>,
    user: User,
    body: Bytes,
) -> Result<Response, WebError> {
    user.require_write()?;
    let form = parse_form(&body)?;
    let pool = &state.app.pool;
    let project = user.project();
    if !form.confirm {
        let rows = control::rows_by_ids(pool, project, &form.ids).await?;
        let now = Utc::now();
        let mut acting = 0;
        let items: Vec<ConfirmItem> = rows
            .iter()
            .map(|r| {
                let (plan, acts) = plan(form.action, r.state);
                acting += usize::from(acts);
                ConfirmItem {
                    row: RowView::new(r, now),
                    plan,
                }
            })
            .collect();
        let missing = form
            .ids
            .iter()
            .filter(|id| !rows.iter().any(|r| r.id == **id))
            .map(Uuid::to_string)
            .collect();
        let (action, verb) = match form.action {
            Action::Cancel => ("cancel", "Cancel"),
            Action::Retry => ("retry", "Retry"),
        };
        let page = ConfirmPage {
            layout: user.layout("jobs"),
            action,
            verb,
            items,
            missing,
            ids: form.ids.iter().map(Uuid::to_string).collect(),
            acting,
            back: form.back.here(),
        };
        return Ok(Html(page.render()?).into_response());
    }
    let (name, done): (&str, Vec<(Uuid, Outcome)>) = match form.action {
        Action::Cancel => (
            "cancel",
            control::cancel_many(pool, project, &form.ids)
                .await
                .iter()
                .map(|(id, r)| (*id, Outcome::of_cancel(r)))
                .collect(),
        ),
        Action::Retry => (
            "retry",
            control::retry_many(pool, project, &form.ids)
                .await
                .iter()
                .map(|(id, r)| (*id, Outcome::of_retry(r)))
                .collect(),
        ),
    };
    let done: Vec<String> = done
        .iter()
        .map(|(id, o)| format!("{id}:{}", o.code()))
        .collect();
    let mut q = url::form_urlencoded::Serializer::new(form.back.here_query());
    q.append_pair("bulk", name)
        .append_pair("done", &done.join(","));
    Ok(Redirect::to(&format!("/jobs?{}", q.finish())).into_response())
}
