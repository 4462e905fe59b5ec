//! `GET /workflows`: every workflow the project can see (built-in, the `workflows/` directory,
//! uploads) with a run form each, the invalid files with their errors, and the newest runs.
//! `POST /workflows/{name}/runs` checks the form (the args must be a JSON object) and starts a
//! run; a refused form comes back with the message next to its field and starts nothing.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::origin_label;
use crate::web::auth::User;
use crate::web::chats::is_htmx;
use crate::web::view::{self, Layout};
use crate::web::{WebError, WebState};
use crate::workflow::{catalog, run, store};

/// Runs listed under the catalog.
const RECENT: i64 = 20;

/// One workflow's run form, as first shown or as refused.
pub(super) struct FormView {
    name: String,
    csrf: String,
    args: String,
    budget: String,
    args_error: Option<String>,
    budget_error: Option<String>,
}

impl FormView {
    fn blank(name: &str, csrf: &str) -> Self {
        Self {
            name: name.to_owned(),
            csrf: csrf.to_owned(),
            args: "{}".into(),
            budget: String::new(),
            args_error: None,
            budget_error: None,
        }
    }
}

/// The run form alone, for htmx.
#[derive(Template)]
#[template(path = "workflow_form.html")]
struct FormTpl<'a> {
    f: &'a FormView,
}

/// A runnable workflow.
struct Runnable {
    name: String,
    origin: &'static str,
    description: String,
    phases: Vec<String>,
    form: FormView,
}

/// A file that cannot be run, and why.
struct Invalid {
    name: String,
    origin: &'static str,
    error: String,
}

/// A recent run.
struct RecentRun {
    id: Uuid,
    short: String,
    workflow: String,
    state: String,
    label: &'static str,
    ago: String,
    stamp: String,
}

#[derive(Template)]
#[template(path = "workflows.html")]
struct Page {
    layout: Layout,
    workflows: Vec<Runnable>,
    invalid: Vec<Invalid>,
    runs: Vec<RecentRun>,
}

/// The catalog page; `refused` replaces the blank form of its workflow.
async fn render(
    state: &WebState,
    user: &User,
    mut refused: Option<FormView>,
) -> Result<String, WebError> {
    let pool = &state.app.pool;
    let entries = catalog::list(pool, user.project(), &state.app.workflows).await?;
    let mut workflows = Vec::new();
    let mut invalid = Vec::new();
    for e in entries {
        let origin = origin_label(e.origin);
        match (e.meta, e.error) {
            (Some(meta), None) => {
                let form = match refused.take_if(|f| f.name == e.name) {
                    Some(f) => f,
                    None => FormView::blank(&e.name, &user.csrf),
                };
                workflows.push(Runnable {
                    name: e.name,
                    origin,
                    description: meta.description,
                    phases: meta.phases,
                    form,
                });
            }
            (_, error) => invalid.push(Invalid {
                name: e.name,
                origin,
                error: error.unwrap_or_else(|| "no metadata".into()),
            }),
        }
    }
    let now = Utc::now();
    let runs = store::runs(pool, user.project(), RECENT)
        .await?
        .into_iter()
        .map(|r| RecentRun {
            short: view::short_id(&r.id),
            id: r.id,
            workflow: r.workflow,
            label: view::state_label(&r.state),
            state: r.state,
            ago: view::ago(r.created_at, now),
            stamp: view::stamp(r.created_at),
        })
        .collect();
    Ok(Page {
        layout: user.layout("workflows"),
        workflows,
        invalid,
        runs,
    }
    .render()?)
}

/// `GET /workflows`.
pub async fn page(State(state): State<WebState>, user: User) -> Result<Html<String>, WebError> {
    Ok(Html(render(&state, &user, None).await?))
}

/// The run form's fields.
#[derive(Debug, Deserialize)]
pub struct RunForm {
    #[serde(default)]
    args: String,
    #[serde(default)]
    budget_tokens: String,
}

/// The args as a JSON object (`{}` when left empty), or what is wrong with them.
fn parse_args(raw: &str, max_bytes: usize) -> Result<Value, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    if raw.len() > max_bytes {
        return Err(format!(
            "The args are larger than {} KiB.",
            max_bytes / 1024
        ));
    }
    match serde_json::from_str::<Value>(raw) {
        Err(e) => Err(format!("The args are not valid JSON: {e}.")),
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => {
            let what = match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            };
            Err(format!(
                "The args must be a JSON object, like {{\"topic\": \"…\"}}; this is {what}."
            ))
        }
    }
}

/// The budget (none when left empty), or what is wrong with it.
fn parse_budget(raw: &str) -> Result<Option<i64>, String> {
    let raw = raw.trim().replace([',', '_'], "");
    if raw.is_empty() {
        return Ok(None);
    }
    match raw.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err("The budget must be a whole number of tokens, at least 1.".into()),
    }
}

/// `POST /workflows/{name}/runs`: a valid form starts a run and goes to its page; a refused one
/// comes back (422) with the message next to its field, as a fragment for htmx or the whole
/// catalog page for a plain form.
pub async fn start(
    State(state): State<WebState>,
    user: User,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<RunForm>,
) -> Result<Response, WebError> {
    user.require_write()?;
    let pool = &state.app.pool;
    let entry = catalog::find(pool, user.project(), &state.app.workflows, &name)
        .await?
        .ok_or(WebError::NotFound("workflow"))?;
    if let Some(e) = &entry.error {
        return Err(WebError::BadRequest(format!(
            "workflow `{name}` is invalid and cannot run: {e}"
        )));
    }
    let args = parse_args(&form.args, state.app.limits.max_args_bytes);
    let budget = parse_budget(&form.budget_tokens);
    let (args, budget) = match (args, budget) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            let refused = FormView {
                name: entry.name.clone(),
                csrf: user.csrf.clone(),
                args: form.args,
                budget: form.budget_tokens,
                args_error: a.err(),
                budget_error: b.err(),
            };
            let html = if is_htmx(&headers) {
                FormTpl { f: &refused }.render()?
            } else {
                render(&state, &user, Some(refused)).await?
            };
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(html)).into_response());
        }
    };
    let id = run::start(
        pool,
        user.project(),
        &state.app.workflows,
        &entry,
        &args,
        budget,
    )
    .await
    .map_err(|e| match e {
        run::StartError::Queue(q) => WebError::from(q),
        run::StartError::Db(d) => WebError::from(d),
    })?;
    let to = format!("/workflow-runs/{id}");
    if is_htmx(&headers) {
        let mut res = Response::default();
        if let Ok(v) = HeaderValue::from_str(&to) {
            res.headers_mut().insert("hx-redirect", v);
        }
        return Ok(res);
    }
    Ok(Redirect::to(&to).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_must_be_a_json_object() {
        assert_eq!(parse_args("  ", 100), Ok(serde_json::json!({})));
        assert_eq!(
            parse_args(r#"{"a":1}"#, 100),
            Ok(serde_json::json!({"a": 1}))
        );
        assert!(parse_args("{", 100).is_err_and(|e| e.contains("not valid JSON")));
        assert!(parse_args("[1]", 100).is_err_and(|e| e.contains("an array")));
        assert!(parse_args(r#"{"a":"long"}"#, 4).is_err_and(|e| e.contains("larger")));
    }

    #[test]
    fn a_budget_is_empty_or_a_positive_whole_number() {
        assert_eq!(parse_budget(""), Ok(None));
        assert_eq!(parse_budget("12,000"), Ok(Some(12_000)));
        assert!(parse_budget("0").is_err());
        assert!(parse_budget("ten").is_err());
    }
}
