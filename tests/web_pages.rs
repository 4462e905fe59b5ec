//! The jobs list and job detail pages over HTTP with a browser session: filters and keyset pages,
//! escaping, the detail blocks, cancel and retry (CSRF, read-only tokens, htmx fragments), bulk
//! actions with their confirmation, both live feeds, and page times with 100,000 jobs; then, in
//! headless Chromium, live rows, a job followed to its end, and both pages at 375 and 1440 px.

mod common;

use std::time::Duration;

use common::browser::{
    Browser, WAIT, screenshot, sign_in, text_of, wait_for, wait_for_text, wait_until,
};
use common::web::WebSession as Session;
use common::{env, fast_worker};
use futures::StreamExt;
use serde_json::{Value, json};
use spool::projects::{self, tokens};
use spool::queue::{NewJob, enqueue};
use spool::worker::{JobContext, JobError, Registry};
use uuid::Uuid;

impl Session {
    /// The CSRF token from any page's hidden `_csrf` input.
    async fn csrf(&self) -> String {
        let html = self.page("/jobs").await;
        attr_after(&html, "name=\"_csrf\" value=\"").expect("a _csrf input")
    }
}

/// The text after `marker` up to the next `"`.
fn attr_after(html: &str, marker: &str) -> Option<String> {
    let start = html.find(marker)? + marker.len();
    let len = html[start..].find('"')?;
    Some(html[start..start + len].replace("&#38;", "&"))
}

/// The ids of the `<tr id="job-…">` rows of the jobs table, in order.
fn row_ids(html: &str) -> Vec<String> {
    html.match_indices("<tr id=\"job-")
        .filter_map(|(i, m)| {
            let rest = &html[i + m.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

/// Inserts `n` jobs of `kind` directly, one statement.
async fn seed(pool: &sqlx::PgPool, project: Uuid, kind: &str, n: usize) -> Vec<Uuid> {
    let mut conn = pool.acquire().await.expect("conn");
    let args: Vec<Value> = (0..n).map(|i| json!({ "i": i })).collect();
    spool::queue::enqueue::enqueue_many(&mut conn, project, kind, "default", &args)
        .await
        .expect("enqueue_many");
    sqlx::query_scalar("SELECT id FROM jobs WHERE kind = $1 ORDER BY id DESC")
        .bind(kind)
        .fetch_all(pool)
        .await
        .expect("ids")
}

async fn job_state(pool: &sqlx::PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT state::text FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("state")
}

/// Reads an SSE body until `done` holds for everything read so far, or `secs` pass.
async fn read_sse(resp: reqwest::Response, secs: u64, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done(&text) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    text
}

#[tokio::test]
async fn list_filters_pages_newest_first_and_escapes() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let noops = seed(&e.svc.pool, e.project, "noop", 120).await;
    let sleep = s
        .enqueue(
            "sleep",
            json!({ "ms": 5, "note": "<script>window.x=1</script>" }),
        )
        .await;
    let other = projects::ensure(&e.svc.pool, "other")
        .await
        .expect("project");
    let mut conn = e.svc.pool.acquire().await.expect("conn");
    let foreign = enqueue(
        &mut conn,
        other.id,
        &NewJob {
            kind: "noop".into(),
            args: json!({}),
            ..NewJob::default()
        },
    )
    .await
    .expect("enqueue")
    .job()
    .id;
    let ses = Session::start(&s, &e.token).await;

    let first = ses.page("/jobs").await;
    assert!(first.contains("<table id=\"jobs\""), "{first}");
    assert!(first.contains("<th scope=\"col\">State</th>"));
    let ids = row_ids(&first);
    assert_eq!(ids.len(), 50);
    assert_eq!(ids[0], sleep.to_string(), "newest first");
    assert!(
        !ids.contains(&foreign.to_string()),
        "another project's job is listed"
    );
    assert!(first.contains(&format!("href=\"/jobs/{sleep}\"")));
    assert!(first.contains("class=\"state state-queued\">◷ queued</span>"));
    assert!(
        !first.contains("<script>window.x"),
        "args never reach the list"
    );
    // Unfinished rows are followed by one live stream.
    assert_eq!(first.matches("sse-connect=").count(), 1);

    let mut seen = ids.clone();
    let mut html = first;
    while let Some(older) = attr_after(&html, "<a href=\"/jobs?before=") {
        html = ses.page(&format!("/jobs?before={older}")).await;
        assert!(html.contains("← Newest"));
        seen.extend(row_ids(&html));
    }
    assert_eq!(seen.len(), 121, "every job once across the pages");
    assert_eq!(seen.last(), Some(&noops[119].to_string()));

    let sleeps = ses
        .page("/jobs?kind=sleep&state=queued&queue=default")
        .await;
    assert_eq!(row_ids(&sleeps), vec![sleep.to_string()]);
    assert!(sleeps.contains("<option value=\"queued\" selected>"));
    let none = ses.page("/jobs?state=failed").await;
    assert!(row_ids(&none).is_empty());
    assert!(none.contains("No jobs match these filters."));

    // What the user typed comes back as text.
    let typed = ses
        .page("/jobs?kind=%3Cscript%3Ealert(1)%3C/script%3E")
        .await;
    assert!(!typed.contains("<script>alert(1)"), "{typed}");
    assert!(typed.contains("&#60;script&#62;alert(1)"));

    let bad = ses.get("/jobs?state=exploded").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("unknown state"), "{}", bad.body);
    let bad = ses.get("/jobs?before=nope").await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn detail_shows_args_as_text_attempts_timeline_and_tree() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let worker = e.worker(e.registry(), fast_worker()).await;
    let id = s
        .enqueue("noop", json!({ "note": "<script>window.__xss=1</script>" }))
        .await;
    let done = s.wait(id, 15).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    worker.shutdown(Duration::from_secs(2)).await;
    let mut conn = e.svc.pool.acquire().await.expect("conn");
    let child = |parent: Uuid| NewJob {
        kind: "noop".into(),
        args: json!({}),
        parent_id: Some(parent),
        ..NewJob::default()
    };
    let c1 = enqueue(&mut conn, e.project, &child(id)).await.expect("c1");
    let c2 = enqueue(&mut conn, e.project, &child(c1.job().id))
        .await
        .expect("c2");
    let c3 = enqueue(&mut conn, e.project, &child(c2.job().id))
        .await
        .expect("c3");
    let ses = Session::start(&s, &e.token).await;

    let html = ses.page(&format!("/jobs/{id}")).await;
    assert!(
        html.contains("<span id=\"job-state\" class=\"state state-succeeded\">✓ succeeded</span>")
    );
    assert!(html.contains("<pre id=\"job-args\" class=\"json\">"));
    assert!(html.contains("&#60;script&#62;window.__xss=1&#60;/script&#62;"));
    assert!(!html.contains("<script>window.__xss"), "args became markup");
    assert!(html.contains("id=\"job-result\""), "the result is shown");
    assert!(html.contains("role=\"progressbar\" aria-label=\"Progress\" aria-valuenow=\"0\""));
    // Attempts come from the state events: one, on the test worker, ended succeeded.
    let attempts = &html[html.find("id=\"job-attempts\"").expect("attempts")..];
    assert!(attempts.contains("<th scope=\"row\">1</th>"), "{attempts}");
    assert!(attempts.contains("✓ succeeded"));
    // queued, running, succeeded.
    let timeline = &html[html.find("<ol id=\"timeline\"").expect("timeline")..];
    let timeline = &timeline[..timeline.find("</ol>").expect("end")];
    assert_eq!(timeline.matches("<li ").count(), 3, "{timeline}");
    // A finished job needs no live feed; retry is offered, cancel is not.
    assert!(!html.contains("sse-connect"));
    assert!(html.contains("id=\"retry-job\"") || !html.contains("id=\"cancel-job\""));
    assert!(!html.contains("id=\"cancel-job\""));
    // Three levels of children.
    for c in [&c1, &c2, &c3] {
        assert!(html.contains(&format!("href=\"/jobs/{}\"", c.job().id)));
    }
    assert!(html.contains(&format!("/jobs?parent={id}")));
    let children = ses.page(&format!("/jobs?parent={id}")).await;
    assert_eq!(row_ids(&children), vec![c1.job().id.to_string()]);
    // A child links to its parent.
    let c2_page = ses.page(&format!("/jobs/{}", c2.job().id)).await;
    assert!(c2_page.contains(&format!("href=\"/jobs/{}\"", c1.job().id)));
    assert!(c2_page.contains("id=\"cancel-job\""));
    assert!(c2_page.contains(&format!(
        "sse-connect=\"/jobs/{}/live?after=1\"",
        c2.job().id
    )));

    // Another project's job, an unknown id and a malformed one are all 404 pages.
    let other = projects::ensure(&e.svc.pool, "other")
        .await
        .expect("project");
    let foreign = enqueue(
        &mut conn,
        other.id,
        &NewJob {
            kind: "noop".into(),
            args: json!({}),
            ..NewJob::default()
        },
    )
    .await
    .expect("enqueue")
    .job()
    .id;
    for path in [
        format!("/jobs/{foreign}"),
        format!("/jobs/{}", Uuid::now_v7()),
        "/jobs/not-an-id".to_owned(),
        format!("/jobs/{foreign}/live"),
    ] {
        let a = ses.get(&path).await;
        assert_eq!(a.status, 404, "{path}");
        assert!(a.body.contains("job not found"), "{path}: {}", a.body);
    }
}

#[tokio::test]
async fn cancel_and_retry_check_csrf_scope_and_state() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let id = s.enqueue("sleep", json!({ "ms": 60000 })).await;
    let ses = Session::start(&s, &e.token).await;
    let csrf = ses.csrf().await;
    let cancel = format!("/jobs/{id}/cancel");
    let retry = format!("/jobs/{id}/retry");

    let a = ses.post(&cancel, &[]).await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("CSRF"));

    let read = tokens::create(&e.svc.pool, e.project, tokens::Scope::Read)
        .await
        .expect("read token")
        .secret;
    let reader = Session::start(&s, &read).await;
    let reader_csrf = reader.csrf().await;
    let a = reader.post(&cancel, &[("_csrf", &reader_csrf)]).await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("read-only"), "{}", a.body);
    assert!(a.body.contains("<h1>"), "a page, not bare text");
    assert_eq!(job_state(&e.svc.pool, id).await, "queued");

    let a = ses.post(&retry, &[("_csrf", &csrf)]).await;
    assert_eq!(a.status, 409);
    assert!(
        a.body
            .contains("only failed or cancelled jobs can be retried"),
        "{}",
        a.body
    );

    let a = ses.post(&cancel, &[("_csrf", &csrf)]).await;
    assert_eq!(a.status, 303);
    assert_eq!(a.location, format!("/jobs/{id}"));
    assert_eq!(job_state(&e.svc.pool, id).await, "cancelled");
    let html = ses.page(&format!("/jobs/{id}")).await;
    assert!(html.contains("state state-cancelled\">⊘ cancelled"));
    assert!(html.contains("id=\"retry-job\""));

    let a = ses.post(&retry, &[("_csrf", &csrf)]).await;
    assert_eq!(a.status, 303);
    assert_eq!(job_state(&e.svc.pool, id).await, "queued");

    // With htmx, cancel answers the re-rendered blocks as out-of-band swaps.
    let r = ses
        .req(reqwest::Method::POST, &cancel)
        .header("hx-request", "true")
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .expect("hx cancel");
    assert_eq!(r.status().as_u16(), 200);
    let frag = r.text().await.expect("body");
    assert!(frag.contains("id=\"job-status\" class=\"job-status\" hx-swap-oob=\"outerHTML\""));
    assert!(frag.contains("id=\"job-state\" class=\"state state-cancelled\""));
    assert!(frag.contains("id=\"retry-job\""));

    let a = ses
        .post(
            &format!("/jobs/{}/cancel", Uuid::now_v7()),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn bulk_actions_confirm_first_then_report_each_job() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let ids = seed(&e.svc.pool, e.project, "noop", 3).await;
    let done = s.enqueue("noop", json!({})).await;
    sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1")
        .bind(done)
        .execute(&e.svc.pool)
        .await
        .expect("finish");
    let ses = Session::start(&s, &e.token).await;
    let csrf = ses.csrf().await;
    let picked: Vec<String> = ids.iter().chain([&done]).map(Uuid::to_string).collect();
    let mut pairs: Vec<(&str, &str)> = vec![
        ("_csrf", &csrf),
        ("action", "cancel"),
        ("back", "/jobs?kind=noop"),
    ];
    pairs.extend(picked.iter().map(|p| ("ids", p.as_str())));

    let confirm = ses.post("/jobs/bulk", &pairs).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert!(
        confirm.body.contains("Cancel 3 of 4 selected jobs?"),
        "{}",
        confirm.body
    );
    assert!(confirm.body.contains("skipped: already finished"));
    assert!(confirm.body.contains("name=\"confirm\" value=\"yes\""));
    for p in &picked {
        assert!(
            confirm
                .body
                .contains(&format!("name=\"ids\" value=\"{p}\""))
        );
    }
    for id in &ids {
        assert_eq!(
            job_state(&e.svc.pool, *id).await,
            "queued",
            "nothing changes before confirming"
        );
    }

    pairs.push(("confirm", "yes"));
    let acted = ses.post("/jobs/bulk", &pairs).await;
    assert_eq!(acted.status, 303, "{}", acted.body);
    assert!(
        acted
            .location
            .starts_with("/jobs?kind=noop&bulk=cancel&done="),
        "{}",
        acted.location
    );
    for id in &ids {
        assert_eq!(job_state(&e.svc.pool, *id).await, "cancelled");
    }
    let list = ses.page(&acted.location).await;
    assert!(
        list.contains("Cancel: 3 cancelled · 1 already finished."),
        "{list}"
    );
    assert!(list.contains(&format!("href=\"/jobs/{done}\"")));
    assert!(list.contains("skipped: it had already finished"));

    // Retry goes straight to the same flow.
    let retry: Vec<(&str, &str)> = [
        ("_csrf", csrf.as_str()),
        ("action", "retry"),
        ("confirm", "yes"),
    ]
    .into_iter()
    .chain(picked.iter().map(|p| ("ids", p.as_str())))
    .collect();
    let acted = ses.post("/jobs/bulk", &retry).await;
    assert_eq!(acted.status, 303);
    let list = ses.page(&acted.location).await;
    assert!(
        list.contains("Retry: 3 queued again · 1 not retryable."),
        "{list}"
    );
    assert_eq!(job_state(&e.svc.pool, ids[0]).await, "queued");

    // Nothing picked, or a hostile `back`, still ends somewhere sensible.
    let a = ses
        .post("/jobs/bulk", &[("_csrf", &csrf), ("action", "cancel")])
        .await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("no jobs were selected"));
    let id0 = ids[0].to_string();
    let a = ses
        .post(
            "/jobs/bulk",
            &[
                ("_csrf", &csrf),
                ("action", "cancel"),
                ("confirm", "yes"),
                ("ids", &id0),
                ("back", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!(a.status, 303);
    assert!(
        a.location.starts_with("/jobs?bulk=cancel"),
        "{}",
        a.location
    );
}

#[tokio::test]
async fn job_feed_streams_the_timeline_and_blocks_then_closes() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let ses = Session::start(&s, &e.token).await;
    let id = s.enqueue("sleep", json!({ "ms": 800 })).await;
    let r = ses
        .req(reqwest::Method::GET, &format!("/jobs/{id}/live?after=1"))
        .send()
        .await
        .expect("live");
    assert_eq!(r.status().as_u16(), 200);
    let _worker = e.worker(e.registry(), fast_worker()).await;
    let text = read_sse(r, 20, |t| t.contains("event: close")).await;
    assert!(
        text.contains("event: close"),
        "the stream closes once the job is done: {text}"
    );
    assert!(text.contains("hx-swap-oob=\"beforeend:#timeline\""));
    // The last fragment removes the page's SSE element, so the browser does not reconnect.
    assert!(text.contains("<div id=\"job-live\" hx-swap-oob=\"delete\">"));
    assert!(text.contains("id=\"job-state\" class=\"state state-running\""));
    assert!(text.contains("id=\"job-state\" class=\"state state-succeeded\""));
    assert!(
        text.contains("aria-valuenow=\"100\""),
        "progress reached 100%"
    );
    // Every event after the cursor arrives once, in order.
    let seqs: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let last: i64 = sqlx::query_scalar("SELECT last_seq FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&e.svc.pool)
        .await
        .expect("last_seq");
    assert_eq!(seqs.last(), Some(&last));
    assert_eq!(text.matches("<li id=\"ev-").count() as i64, last - 1);

    // A poll after the end says so.
    let r = ses
        .req(
            reqwest::Method::GET,
            &format!("/jobs/{id}/live?after={last}"),
        )
        .header("x-spool-poll", "1")
        .send()
        .await
        .expect("poll");
    assert_eq!(
        r.headers().get("spool-done").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
}

#[tokio::test]
async fn list_feed_sends_rows_that_changed() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let ses = Session::start(&s, &e.token).await;
    let a = s.enqueue("sleep", json!({ "ms": 60000 })).await;
    let b = s.enqueue("sleep", json!({ "ms": 60000 })).await;
    let html = ses.page("/jobs").await;
    let live = attr_after(&html, "sse-connect=\"").expect("live url");
    assert!(live.starts_with("/jobs/live?ids="), "{live}");
    let r = ses
        .req(reqwest::Method::GET, &live)
        .send()
        .await
        .expect("live");
    // Cancel one: only its row comes back, as an out-of-band swap wrapped in <template>.
    let (status, _) = s.post(&format!("/api/v1/jobs/{a}/cancel"), json!({})).await;
    assert_eq!(status, 200);
    let text = read_sse(r, 10, |t| t.contains("state-cancelled")).await;
    assert!(
        text.contains(&format!(
            "<template><tr id=\"job-{a}\" hx-swap-oob=\"outerHTML\">"
        )),
        "{text}"
    );
    assert!(text.contains("⊘ cancelled"));
    assert!(
        !text.contains(&format!("job-{b}")),
        "an unchanged row was sent: {text}"
    );
    // The checkbox keeps its tick across swaps.
    assert!(text.contains(&format!("id=\"pick-{a}\"")) && text.contains("hx-preserve"));

    // A stream opened with an old seq catches up at once.
    let r = ses
        .req(reqwest::Method::GET, &format!("/jobs/live?ids={a}:1,{b}:1"))
        .header("x-spool-poll", "1")
        .send()
        .await
        .expect("poll");
    let polled = r.text().await.expect("body");
    assert!(polled.contains(&format!("job-{a}")) && !polled.contains(&format!("job-{b}")));

    let bad = ses.get("/jobs/live?ids=").await;
    assert_eq!(bad.status, 400);
}

/// Runs `script` in the browser's page and returns its value.
async fn js(b: &Browser, script: &str) -> Value {
    b.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("running {script:?}: {e}"))
}

#[tokio::test]
async fn browser_list_rows_update_live_and_keep_their_ticks() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let a = s.enqueue("sleep", json!({ "ms": 60000 })).await;
    let b = s.enqueue("sleep", json!({ "ms": 60000 })).await;
    let br = Browser::start().await;
    sign_in(&br, &s).await;
    br.goto(&s.url("/jobs")).await.expect("goto /jobs");
    wait_for(&br, &format!("#pick-{a}"), WAIT)
        .await
        .click()
        .await
        .expect("ticking a row");
    wait_for(&br, "#jobs-live", WAIT).await;
    js(&br, "window.__marker = 1; return true;").await;
    let (status, _) = s.post(&format!("/api/v1/jobs/{a}/cancel"), json!({})).await;
    assert_eq!(status, 200);
    wait_for_text(&br, &format!("#job-{a} .state"), "cancelled", WAIT).await;
    let kept = js(
        &br,
        &format!("return [document.getElementById('pick-{a}').checked, window.__marker];"),
    )
    .await;
    assert_eq!(
        kept,
        json!([true, 1]),
        "the tick and the page survive the swap"
    );
    assert!(
        text_of(&br, &format!("#job-{b} .state"))
            .await
            .contains("queued")
    );
    // Once every row is finished the stream is closed by the page, not left to reconnect.
    let (status, _) = s.post(&format!("/api/v1/jobs/{b}/cancel"), json!({})).await;
    assert_eq!(status, 200);
    wait_for_text(&br, &format!("#job-{b} .state"), "cancelled", WAIT).await;
    wait_until(&br, WAIT, "the live element to go", |c| async move {
        let gone = c.execute("return !document.getElementById('jobs-live');", vec![]);
        (gone.await.ok()? == json!(true)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        js(&br, "return document.getElementById('conn').hidden;").await,
        json!(true)
    );
    screenshot(&br, "jobs_list_live").await;
    br.close().await;
}

#[tokio::test]
async fn browser_pages_fit_narrow_and_wide_screens() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let _worker = e.worker(e.registry(), fast_worker()).await;
    let id = s
        .enqueue(
            "sleep",
            json!({ "ms": 1500, "note": "a-long-unbroken-value-".repeat(12) }),
        )
        .await;
    let mut conn = e.svc.pool.acquire().await.expect("conn");
    for _ in 0..3 {
        let child = NewJob {
            kind: "noop".into(),
            args: json!({}),
            queue: Some("later".into()),
            parent_id: Some(id),
            ..NewJob::default()
        };
        enqueue(&mut conn, e.project, &child).await.expect("child");
    }
    let br = Browser::start().await;
    sign_in(&br, &s).await;
    br.goto(&s.url(&format!("/jobs/{id}")))
        .await
        .expect("goto job");
    // Live to the end: progress fills, the state turns, and the stream is closed cleanly.
    wait_for_text(&br, "#job-state", "succeeded", Duration::from_secs(15)).await;
    let progress = wait_for(&br, "#job-progress", WAIT).await;
    assert_eq!(
        progress
            .attr("aria-valuenow")
            .await
            .expect("attr")
            .as_deref(),
        Some("100")
    );
    wait_until(&br, WAIT, "the live element to go", |c| async move {
        let gone = c.execute("return !document.getElementById('job-live');", vec![]);
        (gone.await.ok()? == json!(true)).then_some(())
    })
    .await;
    assert_eq!(
        js(&br, "return document.getElementById('conn').hidden;").await,
        json!(true)
    );
    assert!(text_of(&br, "#timeline").await.contains("succeeded"));
    let fits = "const d = document.documentElement; return d.scrollWidth <= d.clientWidth;";
    for (w, h) in [(375u32, 800u32), (1440, 900)] {
        br.set_window_size(w, h).await.expect("window size");
        for (page, name) in [
            (format!("/jobs/{id}"), "job_detail"),
            ("/jobs".into(), "jobs_list"),
        ] {
            br.goto(&s.url(&page)).await.expect("goto");
            wait_for(&br, "main h1", WAIT).await;
            assert_eq!(
                js(&br, fits).await,
                json!(true),
                "{page} scrolls sideways at {w} px"
            );
            screenshot(&br, &format!("{name}_{w}")).await;
        }
    }
    br.close().await;
}

#[tokio::test]
async fn detail_attempts_show_each_try_with_its_error() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let registry = Registry::new().register("flaky", |ctx: JobContext| async move {
        match ctx.attempt {
            1 => Err::<Value, _>(JobError::retry("boom <1>")),
            _ => Err(JobError::fail("gave up")),
        }
    });
    let mut conn = e.svc.pool.acquire().await.expect("conn");
    let job = NewJob {
        kind: "flaky".into(),
        args: json!({}),
        ..NewJob::default()
    };
    let id = enqueue(&mut conn, e.project, &job)
        .await
        .expect("enqueue")
        .job()
        .id;
    let w = e.worker(registry, fast_worker()).await;
    let done = s.wait(id, 15).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(done["state"], "failed", "{done}");
    let ses = Session::start(&s, &e.token).await;
    let html = ses.page(&format!("/jobs/{id}")).await;
    let attempts = &html[html.find("id=\"job-attempts\"").expect("attempts")..];
    let attempts = &attempts[..attempts.find("</section>").expect("end")];
    assert_eq!(
        attempts.matches("<th scope=\"row\">").count(),
        2,
        "{attempts}"
    );
    assert!(
        attempts.contains("◷ queued"),
        "the first try went back to the queue"
    );
    assert!(attempts.contains("next try"), "{attempts}");
    assert!(attempts.contains("boom &#60;1&#62;"), "{attempts}");
    assert!(attempts.contains("✗ failed") && attempts.contains("gave up"));
    assert!(html.contains("id=\"job-error\""));
    assert!(html.contains("id=\"retry-job\""));
}

#[tokio::test]
async fn the_one_time_link_signs_in_once() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let principal = tokens::verify(&e.svc.pool, &e.token)
        .await
        .expect("verify")
        .expect("the admin token");
    let code = spool::projects::signin::issue_code(
        &e.svc.pool,
        principal.token_id,
        chrono::Utc::now() + chrono::TimeDelta::minutes(5),
    )
    .await
    .expect("code");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let first = http
        .get(s.url(&format!("/login/{code}")))
        .send()
        .await
        .expect("link");
    assert_eq!(first.status(), 303);
    let cookie = first
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(&e.token),
        "the cookie must not carry the token"
    );
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let overview = http
        .get(s.url("/"))
        .header("cookie", &pair)
        .send()
        .await
        .expect("overview");
    assert_eq!(overview.status(), 200, "the link's cookie signs in");
    let again = http
        .get(s.url(&format!("/login/{code}")))
        .send()
        .await
        .expect("link again");
    assert_eq!(again.status(), 410, "a link works once");
    assert!(again.headers().get("set-cookie").is_none());
    assert!(
        again
            .text()
            .await
            .expect("body")
            .contains("already used or has expired")
    );
    // Revoking the token signs the browser out at once.
    assert!(tokens::revoke(&e.svc.pool, &e.token).await.expect("revoke"));
    let after = http
        .get(s.url("/"))
        .header("cookie", &pair)
        .send()
        .await
        .expect("overview");
    assert_eq!(after.status(), 303);
}
