//! The workflow pages against a real server, worker, Postgres and the fake model: the catalog
//! lists the built-ins and an invalid file with its error; the run form refuses bad args with a
//! readable message and starts nothing, and a good one starts a run and goes to its page; another
//! project's run is a 404. In headless Chromium a run's page follows its steps and log live,
//! shows cached steps on a rerun, and cancels a running run without a reload.

mod common;

use std::time::Duration;

use common::browser::{Browser, WAIT, screenshot, sign_in, wait_for, wait_for_text, wait_until};
use common::chat::{agent_env, slow_text};
use common::fake_llm::{FakeLlm, Reply};
use common::temp_dir;
use common::web::{WebSession as Web, form};
use common::workflows::{finished, get_run, start, upload};
use common::{Env, fast_worker};
use fantoccini::Locator;
use serde_json::{Value, json};
use spool::projects::{self, tokens};
use spool::workflow::{catalog, run, store};
use uuid::Uuid;

/// The CSRF token from a page's hidden `_csrf` input.
fn csrf_of(html: &str) -> String {
    let marker = r#"name="_csrf" value=""#;
    let start = html.find(marker).expect("a _csrf input") + marker.len();
    let len = html[start..].find('"').expect("end of the token");
    html[start..start + len].to_owned()
}

/// `s` as askama escapes text.
fn escaped(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '&' => out.push_str("&#38;"),
            '<' => out.push_str("&#60;"),
            '>' => out.push_str("&#62;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The element with `id` and what follows it up to `end`.
fn part<'a>(html: &'a str, id: &str, end: &str) -> &'a str {
    let start = html
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no element with id {id}:\n{html}"));
    let stop = html[start..].find(end).map_or(html.len(), |n| start + n);
    &html[start..stop]
}

/// How many runs the project has.
async fn run_count(e: &Env, project: Uuid) -> usize {
    store::runs(&e.svc.pool, project, 1000)
        .await
        .expect("runs")
        .len()
}

const GOOD: &str = r#"export const meta = { description: "doubles <b>n</b>", phases: ["think"] };
export default async function (args) {
  phase("think");
  log("doubling", args.n);
  return (args.n || 0) * 2;
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_lists_invalid_files_and_its_form_checks_args_before_starting_a_run() {
    let fake = FakeLlm::start().await;
    let mut e = agent_env(&fake).await;
    let dir = temp_dir("workflows");
    std::fs::write(dir.join("broken.js"), "export default async function ( {").expect("write");
    std::fs::write(dir.join("nometa.js"), "export default async function () {}").expect("write");
    std::fs::write(dir.join("good.js"), GOOD).expect("write");
    e.settings.workflows.dir = dir;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let web = Web::start(&s, &s.token).await;

    let html = web.page("/workflows").await;
    assert!(
        html.contains(r#"href="/workflows" aria-current="page""#),
        "nav"
    );
    for name in ["deep-research", "review-code", "find-issues", "good"] {
        let entry = part(&html, &format!("wf-{name}"), "</article>");
        assert!(
            entry.contains(&format!(r#"action="/workflows/{name}/runs""#)),
            "{name} has a run form: {entry}"
        );
        assert!(entry.contains(&format!(r#"id="args-{name}""#)), "{entry}");
        let origin = if name == "good" {
            "directory"
        } else {
            "built-in"
        };
        assert!(entry.contains(&format!(">{origin}</span>")), "{entry}");
    }
    assert!(part(&html, "wf-deep-research", "</article>").contains("Phases:"));
    let good = part(&html, "wf-good", "</article>");
    assert!(
        good.contains(&escaped("doubles <b>n</b>")),
        "escaped: {good}"
    );
    assert!(!good.contains("<b>n</b>"));
    // The invalid files, each with its error, and no run form.
    let (_, api) = s.get("/api/v1/workflows").await;
    let error_of = |n: &str| {
        api["workflows"]
            .as_array()
            .and_then(|all| all.iter().find(|w| w["name"] == n))
            .and_then(|w| w["error"].as_str())
            .unwrap_or_else(|| panic!("{n} has an error: {api}"))
            .to_owned()
    };
    let invalid = part(&html, "invalid", "</section>");
    assert!(invalid.contains("Invalid files"), "{invalid}");
    let broken = part(invalid, "invalid-broken", "</li>");
    assert!(broken.contains(&escaped(&error_of("broken"))), "{broken}");
    let nometa = part(invalid, "invalid-nometa", "</li>");
    assert!(
        nometa.contains("meta.description must be a string"),
        "{nometa}"
    );
    assert!(!html.contains(r#"action="/workflows/broken/runs""#));
    assert!(!html.contains(r#"id="wf-nometa""#));

    let csrf = csrf_of(&html);
    let before = run_count(&e, e.project).await;
    // Not JSON, from a plain form: the whole page again, the message by the field, the text kept.
    let a = web
        .post(
            "/workflows/good/runs",
            &[
                ("_csrf", &csrf),
                ("args", r#"{"n": 2,"#),
                ("budget_tokens", ""),
            ],
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(a.body.contains("<h1>Workflows</h1>"), "a full page");
    let form_html = part(&a.body, "run-form-good", "</form>");
    let err = part(form_html, "args-error-good", "</p>");
    assert!(err.contains("The args are not valid JSON"), "{err}");
    assert!(form_html.contains(r#"aria-invalid="true""#), "{form_html}");
    assert!(
        form_html.contains(&escaped(r#"{"n": 2,"#)),
        "the text is kept: {form_html}"
    );
    // The refused form is open; the others are not.
    assert!(a.body.contains("<details open>"));
    // Not an object, from htmx: the form alone.
    let a = Web::answer(
        web.req(reqwest::Method::POST, "/workflows/good/runs")
            .header("hx-request", "true")
            .header("x-csrf-token", &csrf)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("args", "[1, 2]"), ("budget_tokens", "")])),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(
        a.body
            .trim_start()
            .starts_with(r#"<form id="run-form-good""#),
        "{}",
        a.body
    );
    assert!(!a.body.contains("<html"), "a fragment");
    assert!(
        a.body.contains("The args must be a JSON object") && a.body.contains("this is an array"),
        "{}",
        a.body
    );
    // A budget that is not a number.
    let a = web
        .post(
            "/workflows/good/runs",
            &[("_csrf", &csrf), ("args", "{}"), ("budget_tokens", "lots")],
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(
        part(&a.body, "budget-error-good", "</p>").contains("whole number of tokens"),
        "{}",
        a.body
    );
    // Without the CSRF token nothing happens either.
    let a = web.post("/workflows/good/runs", &[("args", "{}")]).await;
    assert_eq!(a.status, 403);
    assert_eq!(run_count(&e, e.project).await, before, "nothing started");

    // A good form starts a run and goes to its page.
    let a = web
        .post(
            "/workflows/good/runs",
            &[
                ("_csrf", &csrf),
                ("args", r#"{"n": 21}"#),
                ("budget_tokens", "500"),
            ],
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    let id: Uuid = a
        .location
        .strip_prefix("/workflow-runs/")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("redirects to a run page: {}", a.location));
    assert_eq!(run_count(&e, e.project).await, before + 1);
    let r = get_run(&s, id).await;
    assert_eq!(r["workflow"], "good");
    assert_eq!(r["args"], json!({ "n": 21 }));
    assert_eq!(r["budget_total"], 500);
    // From htmx, the same, as an HX-Redirect.
    let res = web
        .req(reqwest::Method::POST, "/workflows/good/runs")
        .header("hx-request", "true")
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("args", "")]))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 200);
    let to = res
        .headers()
        .get("hx-redirect")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(to.starts_with("/workflow-runs/"), "{to}");
    assert_eq!(run_count(&e, e.project).await, before + 2);

    let r = finished(&s, id, 60).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let page = web.page(&format!("/workflow-runs/{id}")).await;
    assert!(part(&page, "run-state", "</span>").contains("✓ succeeded"));
    assert!(part(&page, "run-output", "</pre>").contains("42"), "{page}");
    assert!(part(&page, "run-budget-text", "</p>").contains("of 500 tokens"));
    assert!(part(&page, "run-phases", "</ol>").contains("think"));
    assert!(
        part(&page, "run-log", "</ol>").contains("doubling 21"),
        "{page}"
    );
    assert!(
        page.contains(r#"data-live="0""#),
        "an ended run does not poll"
    );
    assert!(!page.contains("load delay"), "an ended run does not poll");
    assert!(!page.contains(r#"id="cancel-run""#), "nothing to cancel");
    let live = web.page(&format!("/workflow-runs/{id}/live")).await;
    assert!(live.trim_start().starts_with(r#"<section id="run-live""#));
    // The catalog lists it among the recent runs.
    let html = web.page("/workflows").await;
    assert!(html.contains(&format!(r#"href="/workflow-runs/{id}""#)));

    // An unknown workflow is a 404; an invalid one cannot run.
    let a = web
        .post("/workflows/nope/runs", &[("_csrf", &csrf), ("args", "{}")])
        .await;
    assert_eq!(a.status, 404);
    let a = web
        .post(
            "/workflows/broken/runs",
            &[("_csrf", &csrf), ("args", "{}")],
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(run_count(&e, e.project).await, before + 2);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_projects_run_is_not_found() {
    let fake = FakeLlm::start().await;
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let pool = &e.svc.pool;
    let other = projects::ensure(pool, "other").await.expect("project");
    let other_token = tokens::create(pool, other.id, tokens::Scope::Admin)
        .await
        .expect("token")
        .secret;
    let entry = catalog::find(pool, other.id, &e.settings.workflows, "review-code")
        .await
        .expect("catalog")
        .expect("review-code");
    let id = run::start(
        pool,
        other.id,
        &e.settings.workflows,
        &entry,
        &json!({ "code": "fn main() {}" }),
        None,
    )
    .await
    .expect("start");

    // Its own project sees it (so the 404 below is about the project, not the run).
    let theirs = Web::start(&s, &other_token).await;
    let page = theirs.page(&format!("/workflow-runs/{id}")).await;
    assert!(page.contains("review-code") && page.contains(r#"id="cancel-run""#));

    let web = Web::start(&s, &s.token).await;
    let csrf = csrf_of(&web.page("/workflows").await);
    for path in [
        format!("/workflow-runs/{id}"),
        format!("/workflow-runs/{id}/live"),
        format!("/workflow-runs/{}", Uuid::now_v7()),
        "/workflow-runs/not-an-id".to_owned(),
    ] {
        let a = web.get(&path).await;
        assert_eq!(a.status, 404, "GET {path}");
        assert!(a.body.contains("workflow run not found"), "{}", a.body);
    }
    let a = web
        .post(&format!("/workflow-runs/{id}/cancel"), &[("_csrf", &csrf)])
        .await;
    assert_eq!(a.status, 404);
    let still = store::run(pool, other.id, id)
        .await
        .expect("run")
        .expect("the run");
    assert_eq!(
        still.state, "queued",
        "the other project's run was not cancelled"
    );
    assert!(
        !web.page("/workflows")
            .await
            .contains(&format!("/workflow-runs/{id}")),
        "nor listed"
    );
    // Its own project cancels it with a plain form (no JavaScript): back to the page, cancelled.
    let page = theirs.page(&format!("/workflow-runs/{id}")).await;
    let a = theirs
        .post(
            &format!("/workflow-runs/{id}/cancel"),
            &[("_csrf", &csrf_of(&page))],
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.location, format!("/workflow-runs/{id}"));
    let page = theirs.page(&format!("/workflow-runs/{id}")).await;
    assert!(page.contains("⊘ cancelled"), "{page}");
    assert!(!page.contains(r#"id="cancel-run""#));
}

/// A two-phase workflow whose two agent steps stream slowly.
const SLOW: &str = r#"export const meta = { description: "two slow steps", phases: ["draft", "polish"] };
export default async function (args) {
  phase("draft");
  log("drafting", args.topic);
  const a = await agent(`SLOW-A ${args.topic}`, { label: "draft" });
  phase("polish");
  log("polishing");
  const b = await agent(`SLOW-B ${args.topic}`, { label: "polish" });
  return [a.output.length > 0, b.output.length > 0];
}"#;

const LONG: &str = r#"export const meta = { description: "one long step" };
export default async function () {
  phase("wait");
  const r = await agent("LONG-STEP go", { label: "long" });
  return r.output;
}"#;

/// Starts `name` from the catalog page's form with `args`; returns the run id from the page URL.
async fn run_from_form(b: &Browser, s: &common::Server, name: &str, args: &str) -> Uuid {
    b.goto(&s.url("/workflows")).await.expect("catalog");
    wait_for(b, &format!("#wf-{name} summary"), WAIT)
        .await
        .click()
        .await
        .expect("open the form");
    let field = wait_for(b, &format!("#args-{name}"), WAIT).await;
    screenshot(b, "workflows_catalog").await;
    field.clear().await.expect("clear");
    field.send_keys(args).await.expect("type args");
    wait_for(b, &format!("#run-{name}"), WAIT)
        .await
        .click()
        .await
        .expect("run");
    wait_until(b, WAIT, "the run page", |c| async move {
        let url = c.current_url().await.ok()?;
        url.path()
            .strip_prefix("/workflow-runs/")
            .and_then(|i| i.parse::<Uuid>().ok())
    })
    .await
}

/// The text of a step's status on the page (1-based).
fn step_state(n: usize) -> String {
    format!("#run-steps > li:nth-child({n}) .step-state")
}

async fn log_lines(b: &Browser) -> i64 {
    b.execute(
        "return document.querySelectorAll('#run-log > li').length;",
        vec![],
    )
    .await
    .expect("log lines")
    .as_i64()
    .unwrap_or(0)
}

async fn marker(b: &Browser) -> Value {
    b.execute("return window.__marker;", vec![])
        .await
        .expect("marker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_page_follows_steps_live_shows_cached_reruns_and_cancels_without_a_reload() {
    let fake = FakeLlm::start().await;
    // About 3 s and 2 s of streaming: long enough to see each step running.
    let mut draft = slow_text(20, 150);
    if let Reply::Stream { usage, .. } = &mut draft {
        *usage = Some(spool::llm::Usage {
            input_tokens: 100,
            output_tokens: 20,
            ..Default::default()
        });
    }
    fake.route("SLOW-A", [draft]);
    fake.route("SLOW-B", [slow_text(15, 130)]);
    // About a minute: far longer than the test takes to cancel it.
    fake.route("LONG-STEP", [slow_text(300, 200)]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    upload(&s, "slowflow", SLOW).await;
    upload(&s, "longflow", LONG).await;
    let web = Web::start(&s, &s.token).await;

    let b = Browser::start().await;
    sign_in(&b, &s).await;
    let id = run_from_form(&b, &s, "slowflow", r#"{"topic": "tides"}"#).await;
    wait_for(&b, "#run-live", WAIT).await;
    b.execute("window.__marker = 42;", vec![])
        .await
        .expect("marker");
    let slow = Duration::from_secs(30);
    wait_for_text(&b, &step_state(1), "running", slow).await;
    let lines = log_lines(&b).await;
    screenshot(&b, "workflow_run_running").await;
    wait_for_text(&b, &step_state(1), "succeeded", slow).await;
    wait_for_text(&b, &step_state(2), "running", slow).await;
    wait_for_text(&b, "#run-state", "succeeded", slow).await;
    assert!(
        log_lines(&b).await > lines,
        "the log grew from {lines} lines"
    );
    assert_eq!(marker(&b).await, json!(42), "the page was not reloaded");
    wait_for_text(&b, "#run-phases", "polish", WAIT).await;
    wait_for_text(&b, "#run-log", "drafting tides", WAIT).await;
    wait_for_text(&b, "#run-cache", "0 of 2 steps cached", WAIT).await;
    // The first step's tokens, its duration, and the budget gauge.
    let first = wait_for_text(&b, "#run-steps > li:nth-child(1)", "120 tokens", WAIT).await;
    assert!(first.contains("⏱"), "a duration: {first}");
    wait_for_text(&b, "#run-budget-text", "120 of 100,000 tokens", WAIT).await;
    wait_until(&b, WAIT, "the page to stop polling", |c| async move {
        let live = c
            .execute(
                "return document.getElementById('run-live').dataset.live;",
                vec![],
            )
            .await
            .ok()?;
        (live == "0").then_some(())
    })
    .await;
    // Each step links to its transcript, which opens.
    let transcript = b
        .find(Locator::Css(
            "#run-steps > li:nth-child(1) a.step-transcript",
        ))
        .await
        .expect("a transcript link")
        .attr("href")
        .await
        .expect("href")
        .expect("an href");
    let chat = web.page(&transcript).await;
    assert!(chat.contains("SLOW-A tides"), "the step's prompt: {chat}");
    let r = get_run(&s, id).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(fake.request_count(), 2);

    // The same args again: every step comes from the cache, and the page says so.
    let again = run_from_form(&b, &s, "slowflow", r#"{"topic": "tides"}"#).await;
    assert_ne!(again, id);
    wait_for_text(&b, "#run-state", "succeeded", slow).await;
    wait_for_text(&b, "#run-cache", "2 of 2 steps cached", WAIT).await;
    let cached = b
        .execute(
            "return document.querySelectorAll('#run-steps .step-cached').length;",
            vec![],
        )
        .await
        .expect("cached flags");
    assert_eq!(cached, json!(2));
    assert_eq!(fake.request_count(), 2, "no model was called");

    // Cancel a running run from its page.
    let long = start(&s, "longflow", json!({})).await;
    b.goto(&s.url(&format!("/workflow-runs/{long}")))
        .await
        .expect("run page");
    wait_for(&b, "#run-live", WAIT).await;
    b.execute("window.__marker = 43;", vec![])
        .await
        .expect("marker");
    wait_for_text(&b, &step_state(1), "running", slow).await;
    screenshot(&b, "workflow_run_cancel").await;
    // The live part is replaced every second: retry a click that met a replaced button.
    wait_until(&b, WAIT, "a click on Cancel", |c| async move {
        let button = c.find(Locator::Css("#cancel-run")).await.ok()?;
        button.click().await.ok()
    })
    .await;
    wait_for_text(&b, "#run-state", "cancelled", slow).await;
    wait_for_text(&b, &step_state(1), "cancelled", slow).await;
    assert_eq!(marker(&b).await, json!(43), "the page was not reloaded");
    let r = finished(&s, long, 30).await;
    assert_eq!(r["state"], "cancelled", "{r}");

    // At phone width neither page scrolls sideways.
    b.set_window_size(375, 800).await.expect("window size");
    for path in ["/workflows".to_owned(), format!("/workflow-runs/{id}")] {
        b.goto(&s.url(&path)).await.expect("page");
        wait_for(&b, "main", WAIT).await;
        let fits = b
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth;",
                vec![],
            )
            .await
            .expect("page width");
        assert_eq!(fits, json!(true), "{path} scrolls sideways at 375 px");
    }
    screenshot(&b, "workflow_run_375").await;
    b.close().await;
    w.shutdown(Duration::from_secs(1)).await;
}
