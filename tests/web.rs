//! The pages in a real headless Chromium against a real server and Postgres: sign-in, the
//! sign-in redirect, cancelling a job live, CSRF, escaping, and the pages without JavaScript.
//! Every test saves a screenshot of its final state under `target/screenshots/`.

mod common;

use std::time::{Duration, Instant};

use common::browser::{
    Browser, WAIT, screenshot, session_cookie, sign_in, submit_token, text_of, wait_for,
    wait_for_text, wait_until,
};
use common::{Server, env, fast_worker};
use fantoccini::Locator;
use serde_json::{Value, json};
use uuid::Uuid;

/// The job's state through the REST API.
async fn api_state(s: &Server, id: Uuid) -> String {
    let (status, body) = s.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "GET /api/v1/jobs/{id}: {body}");
    body["state"].as_str().expect("state").to_owned()
}

/// Polls the REST API until the job is in `state`.
async fn wait_api_state(s: &Server, id: Uuid, state: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = api_state(s, id).await;
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is still {now:?} after {timeout:?}, expected {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Runs `script` in the page and returns its value.
async fn js(b: &Browser, script: &str) -> Value {
    b.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("running {script:?} in the page: {e}"))
}

/// The path of the page the browser shows.
async fn path(b: &Browser) -> String {
    b.current_url()
        .await
        .expect("current url")
        .path()
        .to_owned()
}

/// Accepts a confirmation dialog if the click opened one.
async fn accept_dialog(b: &Browser) {
    let _ = b.accept_alert().await;
}

#[tokio::test]
async fn sign_in_reaches_the_overview_and_sets_the_session_cookie() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let b = Browser::start().await;
    sign_in(&b, &s).await;
    assert_eq!(path(&b).await, "/");
    let cookie = b
        .get_named_cookie(spool::web::auth::COOKIE)
        .await
        .expect("the session cookie");
    assert_eq!(
        cookie.http_only(),
        Some(true),
        "the session cookie is HttpOnly"
    );
    assert!(
        !cookie.value().contains(&s.token),
        "the cookie must not carry the token's secret"
    );
    screenshot(&b, "web_sign_in_overview").await;
    b.close().await;
}

#[tokio::test]
async fn sign_in_with_a_wrong_token_shows_an_error_next_to_the_field() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let b = Browser::start().await;
    submit_token(&b, &s, "spool_not_a_real_token").await;
    assert_eq!(
        path(&b).await,
        "/login",
        "a wrong token stays on the sign-in page"
    );
    let error = wait_for_text(&b, "#token-error", "not valid", WAIT).await;
    assert!(error.contains("revoked"), "{error}");
    let field = b.find(Locator::Css("#token")).await.expect("#token");
    assert_eq!(
        field.attr("aria-invalid").await.expect("attr").as_deref(),
        Some("true")
    );
    assert_eq!(
        field
            .attr("aria-describedby")
            .await
            .expect("attr")
            .as_deref(),
        Some("token-error"),
        "the error is tied to the field"
    );
    let beside = js(
        &b,
        "const f = document.getElementById('token'); \
         return f.form !== null && f.form.contains(document.getElementById('token-error'));",
    )
    .await;
    assert_eq!(beside, json!(true), "the error sits in the sign-in form");
    assert_eq!(
        session_cookie(&b).await,
        None,
        "no session cookie after a wrong token"
    );
    // Still signed out: a page sends the browser back to sign in.
    b.goto(&s.url("/")).await.expect("goto /");
    wait_until(&b, WAIT, "the sign-in page", |c| async move {
        (c.current_url().await.ok()?.path() == "/login").then_some(())
    })
    .await;
    submit_token(&b, &s, "spool_not_a_real_token").await;
    wait_for(&b, "#token-error", WAIT).await;
    screenshot(&b, "web_sign_in_wrong_token").await;
    b.close().await;
}

#[tokio::test]
async fn unauthenticated_jobs_page_redirects_to_sign_in() {
    let e = env().await;
    let s = e.serve(e.registry()).await;

    let r = no_redirects()
        .get(s.url("/jobs"))
        .send()
        .await
        .expect("GET /jobs");
    assert!(
        r.status().is_redirection(),
        "GET /jobs without a session answered {}",
        r.status()
    );
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(location.starts_with("/login"), "redirects to {location:?}");

    let b = Browser::start().await;
    b.goto(&s.url("/jobs")).await.expect("goto /jobs");
    let url = wait_until(&b, WAIT, "the redirect to /login", |c| async move {
        let url = c.current_url().await.ok()?;
        (url.path() == "/login").then_some(url)
    })
    .await;
    let next: Option<String> = url
        .query_pairs()
        .find(|(k, _)| k == "next")
        .map(|(_, v)| v.into_owned());
    assert_eq!(
        next.as_deref(),
        Some("/jobs"),
        "returns to /jobs after signing in"
    );
    wait_for(&b, "#token", WAIT).await;
    // Signing in from there lands on the jobs page.
    let field = b.find(Locator::Css("#token")).await.expect("#token");
    field.send_keys(&s.token).await.expect("typing");
    b.find(Locator::Css("form[action='/login'] button[type=submit]"))
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("click");
    wait_until(&b, WAIT, "the jobs page after signing in", |c| async move {
        (c.current_url().await.ok()?.path() == "/jobs").then_some(())
    })
    .await;
    wait_for(&b, "table#jobs", WAIT).await;
    screenshot(&b, "web_jobs_redirect_then_sign_in").await;
    b.close().await;
}

#[tokio::test]
async fn cancel_a_running_job_from_its_page_without_a_reload() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let _worker = e.worker(e.registry(), fast_worker()).await;
    let id = s.enqueue("sleep", json!({ "ms": 60000 })).await;
    wait_api_state(&s, id, "running", Duration::from_secs(15)).await;

    let b = Browser::start().await;
    sign_in(&b, &s).await;
    let page = format!("/jobs/{id}");
    b.goto(&s.url(&page)).await.expect("goto job");
    wait_for_text(&b, "#job-state", "running", WAIT).await;
    let class = b
        .find(Locator::Css("#job-state"))
        .await
        .expect("#job-state")
        .attr("class")
        .await
        .expect("class")
        .unwrap_or_default();
    assert!(
        class.split_whitespace().any(|c| c == "state-running"),
        "{class}"
    );

    js(&b, "window.__marker = 1; return true;").await;
    wait_for(&b, "#cancel-job", WAIT)
        .await
        .click()
        .await
        .expect("clicking #cancel-job");
    accept_dialog(&b).await;
    wait_for_text(&b, "#job-state", "cancelled", Duration::from_secs(15)).await;
    let class = b
        .find(Locator::Css("#job-state"))
        .await
        .expect("#job-state")
        .attr("class")
        .await
        .expect("class")
        .unwrap_or_default();
    assert!(
        class.split_whitespace().any(|c| c == "state-cancelled"),
        "{class}"
    );
    assert_eq!(
        js(
            &b,
            "return window.__marker === undefined ? null : window.__marker;"
        )
        .await,
        json!(1),
        "the page was reloaded: the marker set before the click is gone"
    );
    assert_eq!(path(&b).await, page);
    assert_eq!(api_state(&s, id).await, "cancelled");
    screenshot(&b, "web_cancel_running_job").await;
    b.close().await;
}

#[tokio::test]
async fn posts_without_the_csrf_token_are_refused() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    // No worker: the job stays queued until something cancels it.
    let id = s.enqueue("sleep", json!({ "ms": 60000 })).await;
    let b = Browser::start().await;
    sign_in(&b, &s).await;
    let page = format!("/jobs/{id}");
    b.goto(&s.url(&page)).await.expect("goto job");
    wait_for(&b, "#cancel-job", WAIT).await;
    let form = js(
        &b,
        "const f = document.getElementById('cancel-job').closest('form'); \
         if (!f) return null; \
         const t = f.querySelector('input[type=hidden][name=_csrf]'); \
         return { action: f.getAttribute('action'), method: (f.getAttribute('method') || '').toLowerCase(), \
                  csrf: t ? t.value : null };",
    )
    .await;
    assert!(
        form["action"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!("/jobs/{id}/cancel"))),
        "the cancel button's form posts to /jobs/{id}/cancel: {form}"
    );
    assert_eq!(form["method"], "post", "{form}");
    let csrf = form["csrf"]
        .as_str()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| panic!("the cancel form has no hidden _csrf: {form}"))
        .to_owned();
    let cookie = session_cookie(&b).await.expect("session cookie");

    // In the browser: strip the token and submit the form the plain way.
    js(
        &b,
        "const f = document.getElementById('cancel-job').closest('form'); \
         f.querySelectorAll('input[name=_csrf]').forEach((i) => i.remove()); \
         f.submit(); return true;",
    )
    .await;
    wait_for_text(&b, "body", "CSRF token", WAIT).await;
    assert_eq!(
        api_state(&s, id).await,
        "queued",
        "a refused form changed the job"
    );
    screenshot(&b, "web_csrf_refused_in_browser").await;

    // Outside the browser, with its cookie.
    let http = no_redirects();
    let cancel = s.url(&format!("/jobs/{id}/cancel"));
    let post = |body: String| {
        http.post(&cancel)
            .header("cookie", format!("{}={cookie}", spool::web::auth::COOKIE))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let r = post(String::new()).await.expect("POST without _csrf");
    assert_eq!(r.status().as_u16(), 403, "no _csrf");
    let text = r.text().await.unwrap_or_default();
    assert!(text.contains("CSRF"), "the 403 says why: {text}");
    let r = post("_csrf=not-the-token".into())
        .await
        .expect("POST with a wrong _csrf");
    assert_eq!(r.status().as_u16(), 403, "wrong _csrf");
    assert_eq!(
        api_state(&s, id).await,
        "queued",
        "refused posts changed the job"
    );

    let encoded: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("_csrf", &csrf)
        .finish();
    let r = post(encoded).await.expect("POST with _csrf");
    let status = r.status();
    assert!(
        status.as_u16() == 303 || status.is_success(),
        "the right token is accepted, got {status}: {}",
        r.text().await.unwrap_or_default()
    );
    wait_api_state(&s, id, "cancelled", WAIT).await;

    b.goto(&s.url(&page)).await.expect("goto job");
    wait_for_text(&b, "#job-state", "cancelled", WAIT).await;
    screenshot(&b, "web_csrf").await;
    b.close().await;
}

/// Whether anything the args tried to inject ran or became markup, anywhere on the page.
const INJECTED: &str = "return { xss: typeof window.__xss, \
     scripts: [...document.scripts].filter((s) => s.textContent.includes('__xss')).length, \
     imgs: document.querySelectorAll('img[src=x], [onerror]').length };";

#[tokio::test]
async fn job_args_render_as_text() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let args = json!({
        "note": "<script>window.__xss=1</script>",
        "pic": "<img src=x onerror=\"window.__xss=2\">",
    });
    let id = s.enqueue("noop", args).await;
    let b = Browser::start().await;
    sign_in(&b, &s).await;

    b.goto(&s.url(&format!("/jobs/{id}")))
        .await
        .expect("goto job");
    let text = wait_for_text(&b, "#job-args", "<script>", WAIT).await;
    assert!(text.contains("<script>window.__xss=1</script>"), "{text}");
    assert!(text.contains("<img src=x onerror="), "{text}");
    let inside = js(
        &b,
        "const a = document.getElementById('job-args'); \
         return { tag: a.tagName.toLowerCase(), scripts: a.querySelectorAll('script').length, \
                  imgs: a.querySelectorAll('img').length };",
    )
    .await;
    assert_eq!(inside, json!({ "tag": "pre", "scripts": 0, "imgs": 0 }));
    let injected = js(&b, INJECTED).await;
    assert_eq!(
        injected,
        json!({ "xss": "undefined", "scripts": 0, "imgs": 0 }),
        "detail page"
    );

    b.goto(&s.url("/jobs")).await.expect("goto /jobs");
    wait_for(&b, &format!("table#jobs tr#job-{id}"), WAIT).await;
    let injected = js(&b, INJECTED).await;
    assert_eq!(
        injected,
        json!({ "xss": "undefined", "scripts": 0, "imgs": 0 }),
        "jobs list"
    );
    let in_table = js(
        &b,
        "const t = document.getElementById('jobs'); \
         return t.querySelectorAll('script').length + t.querySelectorAll('img').length;",
    )
    .await;
    assert_eq!(in_table, json!(0));

    // The list echoes its filters back into the page: they must stay text too.
    let payload = "\"><script>window.__xss=3</script><img src=x onerror=\"window.__xss=4\">";
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("kind", payload)
        .finish();
    b.goto(&s.url(&format!("/jobs?{query}")))
        .await
        .expect("goto /jobs?kind=…");
    wait_for(&b, "table#jobs", WAIT).await;
    let injected = js(&b, INJECTED).await;
    assert_eq!(
        injected,
        json!({ "xss": "undefined", "scripts": 0, "imgs": 0 }),
        "jobs list filtered by a hostile kind"
    );
    screenshot(&b, "web_job_args_escaped").await;
    b.close().await;
}

#[tokio::test]
async fn pages_work_without_javascript() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    // No worker: both stay queued.
    let first = s.enqueue("noop", json!({ "label": "first-seed" })).await;
    let second = s.enqueue("sleep", json!({ "ms": 60000 })).await;

    let b = Browser::without_js().await;
    sign_in(&b, &s).await;
    b.goto(&s.url("/jobs")).await.expect("goto /jobs");
    wait_for(&b, "table#jobs", WAIT).await;
    assert_eq!(
        js(&b, "return typeof window.htmx;").await,
        json!("undefined"),
        "the page's scripts ran: JavaScript is not off"
    );
    let rows = b
        .find_all(Locator::Css("table#jobs tr[id^=job-]"))
        .await
        .expect("rows");
    let mut ids = Vec::new();
    for r in &rows {
        ids.push(r.attr("id").await.expect("id").unwrap_or_default());
    }
    for (id, kind) in [(first, "noop"), (second, "sleep")] {
        assert!(
            ids.contains(&format!("job-{id}")),
            "no row for {id}: {ids:?}"
        );
        let row = text_of(&b, &format!("tr#job-{id}")).await;
        assert!(
            row.contains(kind),
            "row of {id} lacks its kind {kind}: {row}"
        );
    }
    assert_eq!(rows.len(), 2, "{ids:?}");

    b.find(Locator::Css(&format!(
        "tr#job-{first} a[href$='/jobs/{first}']"
    )))
    .await
    .unwrap_or_else(|e| panic!("no link from the row to /jobs/{first}: {e}"))
    .click()
    .await
    .expect("clicking the job link");
    let want = format!("/jobs/{first}");
    wait_until(&b, WAIT, "the job page", |c| {
        let want = want.clone();
        async move { (c.current_url().await.ok()?.path() == want).then_some(()) }
    })
    .await;
    wait_for_text(&b, "#job-state", "queued", WAIT).await;
    wait_for_text(&b, "#job-args", "first-seed", WAIT).await;
    wait_for(&b, "ol#timeline", WAIT).await;
    screenshot(&b, "web_no_js_job_detail").await;
    b.close().await;
}
