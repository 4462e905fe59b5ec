//! The overview (`GET /`) and workers (`GET /workers`) pages against a real server, Postgres and
//! worker runtimes: counts by state and kind checked against the REST API, throughput and the
//! oldest queued job, the fleet table through a worker's life, live updates in headless Chromium
//! (no reload), both pages without JavaScript and at 375 px, and one project's jobs kept out of
//! another's numbers. Browser tests save screenshots under `target/screenshots/`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::browser::{Browser, WAIT, screenshot, sign_in, text_of, wait_for, wait_until};
use common::web::WebSession as Session;
use common::{Server, env, eventually, fast_worker};
use serde_json::{Value, json};
use spool::projects::{self, tokens};
use spool::worker::WorkerConfig;
use uuid::Uuid;

/// Job states in the order the overview shows them.
const STATES: [&str; 6] = [
    "queued",
    "running",
    "waiting",
    "succeeded",
    "failed",
    "cancelled",
];

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

/// POSTs a job to `/api/v1/jobs` with `token` and returns its id.
async fn enqueue_as(s: &Server, token: &str, body: Value) -> Uuid {
    let r = s
        .http
        .post(s.url("/api/v1/jobs"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("POST /api/v1/jobs");
    let status = r.status().as_u16();
    let answer: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "enqueue {body}: {answer}");
    answer["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("job id")
}

/// Enqueues with the server's own token.
async fn enqueue(s: &Server, body: Value) -> Uuid {
    enqueue_as(s, &s.token, body).await
}

/// A `sleep` of a minute on queue `parked`, which no test worker reads: it stays queued.
fn parked() -> Value {
    json!({ "kind": "sleep", "args": { "ms": 60000 }, "queue": "parked" })
}

/// The job's state through the REST API.
async fn api_state(s: &Server, id: Uuid) -> String {
    let (status, body) = s.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "GET /api/v1/jobs/{id}: {body}");
    body["state"].as_str().expect("state").to_owned()
}

/// Polls the REST API until the job is in `state`.
async fn wait_api_state(s: &Server, id: Uuid, state: &str, timeout: Duration) {
    let reached = eventually(timeout, || async {
        (api_state(s, id).await == state).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "job {id} is {:?} after {timeout:?}, expected {state:?}",
        api_state(s, id).await
    );
}

/// Jobs in `state` by kind, counted through every page of `GET /api/v1/jobs?state=…`.
async fn api_counts(s: &Server, token: &str, state: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/jobs?state={state}&limit=200");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = s
            .http
            .get(s.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /api/v1/jobs");
        assert_eq!(r.status().as_u16(), 200, "GET {path}");
        let body: Value = r.json().await.expect("json");
        for j in body["jobs"].as_array().expect("jobs array") {
            let kind = j["kind"].as_str().expect("kind").to_owned();
            *out.entry(kind).or_insert(0) += 1;
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// A closed local port: bound, read, released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a local port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// HTML helpers (the pages are server-rendered; these read the exact markup)
// ---------------------------------------------------------------------------------------------

/// The text of the element with `id` up to its first child tag or end tag.
fn text_by_id(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let start = at + html[at..].find('>')? + 1;
    let len = html[start..].find('<')?;
    Some(html[start..start + len].trim().to_owned())
}

/// `1,234` as 1234.
fn number(s: &str) -> i64 {
    s.replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("{s:?} is not a number: {e}"))
}

/// The overview's total per state, in [`STATES`] order.
fn state_totals(html: &str) -> [i64; 6] {
    STATES.map(|s| {
        number(
            &text_by_id(html, &format!("ov-n-{s}"))
                .unwrap_or_else(|| panic!("no #ov-n-{s} in the overview")),
        )
    })
}

/// The overview's `id="ov-kinds"` block.
fn kinds_block(html: &str) -> &str {
    let start = html.find("id=\"ov-kinds\"").expect("the kinds table");
    let end = start
        + html[start..]
            .find("</table>")
            .expect("end of the kinds table");
    &html[start..end]
}

/// The numbers of each kind's row in the kinds table: per state in [`STATES`] order, then the
/// row's total.
fn kind_rows(html: &str) -> BTreeMap<String, Vec<i64>> {
    let block = kinds_block(html);
    let body =
        &block[block.find("<tbody>").expect("tbody")..block.find("</tbody>").expect("/tbody")];
    let mut out = BTreeMap::new();
    for row in body.split("<tr>").skip(1) {
        let Some(th) = row.find("<th scope=\"row\">") else {
            continue;
        };
        let th = &row[th..row.find("</th>").expect("</th>")];
        let kind = strip_tags(th);
        let cells = row
            .split("<span id=\"ov-k")
            .skip(1)
            .map(|c| {
                let start = c.find('>').expect(">") + 1;
                let end = c.find("</span>").expect("</span>");
                number(&c[start..end])
            })
            .collect();
        out.insert(kind, cells);
    }
    out
}

/// The kinds table's footer: per state, then all.
fn kind_totals(html: &str) -> Vec<i64> {
    (0..7)
        .map(|c| number(&text_by_id(html, &format!("ov-t-{c}")).expect("a footer cell")))
        .collect()
}

/// `html` without its tags, whitespace collapsed.
fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `<tr>` whose row header is the worker `id`, within `html`.
fn worker_row<'a>(html: &'a str, id: &str) -> Option<&'a str> {
    let at = html.find(&format!("<th scope=\"row\" class=\"mono\">{id}</th>"))?;
    let end = at + html[at..].find("</tr>")?;
    Some(&html[at..end])
}

/// The text of each `<td>` of a row.
fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|c| {
            let start = c.find('>').expect(">") + 1;
            let end = c.find("</td>").expect("</td>");
            strip_tags(&c[start..end])
        })
        .collect()
}

/// The `datetime` of the `n`th `<time>` in `row`.
fn time_attr(row: &str, n: usize) -> DateTime<Utc> {
    let raw = row
        .split("<time datetime=\"")
        .nth(n + 1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no <time> #{n} in {row}"));
    DateTime::parse_from_rfc3339(raw)
        .unwrap_or_else(|e| panic!("{raw:?}: {e}"))
        .with_timezone(&Utc)
}

/// The slice of `html` from the element with `id` to the next `</div>` that closes a block.
fn block<'a>(html: &'a str, id: &str, end: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let len = html[start..].find(end).unwrap_or(html.len() - start);
    &html[start..start + len]
}

/// A compact duration as [`spool::web::view::duration`] prints a short one (`850 ms`, `12.4 s`).
fn is_short_duration(s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.');
    match s.rsplit_once(' ') {
        Some((n, "ms" | "s")) => digits(n),
        _ => false,
    }
}

/// The machine's host name as the worker registers it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

// ---------------------------------------------------------------------------------------------
// Browser helpers
// ---------------------------------------------------------------------------------------------

/// Runs `script` in the page and returns its value.
async fn js(b: &Browser, script: &str) -> Value {
    b.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("running {script:?} in the page: {e}"))
}

/// Waits until the element `#id` shows exactly `want`.
async fn wait_exact(b: &Browser, id: &str, want: &str, timeout: Duration) {
    let script = format!(
        "const e = document.getElementById('{id}'); return e ? e.textContent.trim() : null;"
    );
    let what = format!("#{id} to show {want:?}");
    wait_until(b, timeout, &what, |c| {
        let script = script.clone();
        async move {
            let v = c.execute(&script, vec![]).await.ok()?;
            (v == json!(want)).then_some(())
        }
    })
    .await;
}

/// The text of each cell of each row matching `selector` (a `tr`), whitespace collapsed.
async fn table_rows(b: &Browser, selector: &str) -> Vec<Vec<String>> {
    let script = format!(
        "return Array.from(document.querySelectorAll({selector:?})).map(tr => \
         Array.from(tr.children).map(c => c.textContent.trim().replace(/\\s+/g, ' ')));"
    );
    serde_json::from_value(js(b, &script).await).expect("rows of cells")
}

/// The row of `table_rows` whose first cell is `first`.
fn row_of<'a>(rows: &'a [Vec<String>], first: &str) -> Option<Vec<&'a str>> {
    rows.iter()
        .find(|r| r.first().is_some_and(|c| c == first))
        .map(|r| r.iter().map(String::as_str).collect())
}

/// The trimmed text content of `#id`.
async fn content(b: &Browser, id: &str) -> String {
    let v = js(
        b,
        &format!("const e = document.getElementById('{id}'); return e ? e.textContent : null;"),
    )
    .await;
    v.as_str()
        .unwrap_or_else(|| panic!("no #{id} on the page"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn overview_counts_match_the_api_by_state_and_kind() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let ses = Session::start(&s, &e.token).await;

    // Empty: zeros everywhere and no oldest job.
    let html = ses.page("/").await;
    assert_eq!(state_totals(&html), [0; 6]);
    assert!(kinds_block(&html).contains("No jobs yet."), "{html}");
    assert_eq!(kind_totals(&html), vec![0; 7]);
    assert!(html.contains("No jobs finished in the last 15 minutes."));
    assert!(html.contains("No jobs are ready and waiting to run."));
    assert!(!html.contains("id=\"ov-oldest-age\""));

    let worker = e.worker(e.registry(), fast_worker()).await;
    // Queued but scheduled for later: counted as queued, yet not "waiting to run".
    let later = (Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let mut scheduled = parked();
    scheduled["run_at"] = json!(later);
    enqueue(&s, scheduled).await;
    // Three ready and queued, on a queue no worker reads.
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(enqueue(&s, parked()).await);
    }
    // Two cancelled while queued.
    for _ in 0..2 {
        let id = enqueue(&s, parked()).await;
        let (status, body) = s
            .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Three that succeed.
    for _ in 0..3 {
        let id = enqueue(&s, json!({ "kind": "noop", "args": {} })).await;
        assert_eq!(s.wait(id, 15).await["state"], "succeeded");
    }
    // Two that fail: a call to a closed port with no second try.
    let url = format!("http://127.0.0.1:{}/", closed_port());
    for _ in 0..2 {
        let id = enqueue(
            &s,
            json!({ "kind": "http", "args": { "url": url }, "max_attempts": 1 }),
        )
        .await;
        let done = s.wait(id, 15).await;
        assert_eq!(done["state"], "failed", "{done}");
    }
    // One running.
    let running = enqueue(&s, json!({ "kind": "sleep", "args": { "ms": 60000 } })).await;
    wait_api_state(&s, running, "running", Duration::from_secs(10)).await;

    let html = ses.page("/").await;

    // By state: what the API lists, and what was made.
    let mut api: BTreeMap<&str, BTreeMap<String, i64>> = BTreeMap::new();
    for st in STATES {
        api.insert(st, api_counts(&s, &e.token, st).await);
    }
    let api_totals = STATES.map(|st| api[st].values().sum::<i64>());
    let page_totals = state_totals(&html);
    assert_eq!(page_totals, api_totals, "page vs API, by state {STATES:?}");
    assert_eq!(page_totals, [4, 1, 0, 3, 2, 2], "by state {STATES:?}");

    // By kind: each row against the API, and against what was made.
    let rows = kind_rows(&html);
    let mut api_rows: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (col, st) in STATES.iter().enumerate() {
        for (kind, n) in &api[st] {
            api_rows.entry(kind.clone()).or_insert_with(|| vec![0; 7])[col] = *n;
        }
    }
    for row in api_rows.values_mut() {
        row[6] = row[..6].iter().sum();
    }
    assert_eq!(rows, api_rows, "kinds table vs API");
    let want: BTreeMap<String, Vec<i64>> = [
        ("http", vec![0, 0, 0, 0, 2, 0, 2]),
        ("noop", vec![0, 0, 0, 3, 0, 0, 3]),
        ("sleep", vec![4, 1, 0, 0, 0, 2, 7]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(rows, want, "kinds table");
    assert_eq!(
        kind_totals(&html),
        vec![4, 1, 0, 3, 2, 2, 12],
        "kinds footer"
    );
    // Rows link to the jobs list of their kind, states to the list of their state.
    assert!(html.contains("<a href=\"/jobs?kind=noop\">noop</a>"));
    assert!(html.contains("<a href=\"/jobs?state=failed\">"));

    // Throughput: the five finished jobs, as a sentence and in the table's footer.
    let summary = block(&html, "ov-chart", "</div>");
    assert!(
        summary.contains("In the last 15 minutes 3 jobs succeeded and 2 failed"),
        "{summary}"
    );
    let minutes = block(&html, "ov-minutes", "</table>");
    assert!(
        minutes.contains(
            "<tfoot><tr><th scope=\"row\">All</th><td class=\"num\">3</td><td class=\"num\">2</td></tr></tfoot>"
        ),
        "{minutes}"
    );
    assert_eq!(minutes.matches("<tr><th scope=\"row\"><time").count(), 15);

    // The oldest ready job: the first of the three queued, not the one scheduled for later.
    let oldest = block(&html, "ov-oldest", "</div>");
    assert!(
        oldest.contains(&format!("href=\"/jobs/{}\"", queued[0])),
        "{oldest}"
    );
    assert!(
        oldest.contains("(<code>sleep</code> on queue <code>parked</code>)"),
        "{oldest}"
    );
    let age = text_by_id(&html, "ov-oldest-age").expect("the oldest job's age");
    assert!(is_short_duration(&age), "age {age:?}");

    worker.shutdown(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn workers_page_lists_a_runtime_then_shows_it_stopped() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let ses = Session::start(&s, &e.token).await;
    let html = ses.page("/workers").await;
    assert!(html.contains("No worker has registered yet."), "{html}");

    let cfg = |id: &str| WorkerConfig {
        worker_id: Some(id.into()),
        concurrency: 3,
        queues: vec!["default".into(), "mail".into()],
        heartbeat: Duration::from_millis(300),
        ..fast_worker()
    };
    let first = e.worker(e.registry(), cfg("dash-w1")).await;
    assert_eq!(first.worker_id(), "dash-w1");
    let busy = enqueue(&s, json!({ "kind": "sleep", "args": { "ms": 60000 } })).await;
    wait_api_state(&s, busy, "running", Duration::from_secs(10)).await;

    // The heartbeat reports the job held.
    let html = eventually(Duration::from_secs(10), || async {
        let html = ses.page("/workers").await;
        let row = worker_row(&html, "dash-w1")?;
        (cells(row).get(4).map(String::as_str) == Some("1")).then_some(html)
    })
    .await
    .expect("the worker row to show one job running");
    let row = worker_row(&html, "dash-w1").expect("row");
    let c = cells(row);
    let host = host_name();
    assert_eq!(c[0], "▶ running", "{row}");
    assert!(row.contains("class=\"state wstate-running\""), "{row}");
    assert_eq!(c[1], format!("{host} (pid {})", std::process::id()));
    assert!(c[2].ends_with(" ago"), "started {:?}", c[2]);
    assert!(c[3].ends_with(" ago"), "heartbeat {:?}", c[3]);
    assert!(!row.contains("late"), "{row}");
    let beat = time_attr(row, 1);
    let since = (Utc::now() - beat).num_milliseconds();
    assert!(
        (-1000..5000).contains(&since),
        "last heartbeat {since} ms ago"
    );
    assert_eq!(c[4], "1", "running");
    assert_eq!(c[5], "3", "concurrency");
    assert_eq!(c[6], "default, mail");
    assert_eq!(c[7], env!("CARGO_PKG_VERSION"));
    assert!(
        html.contains(
            "1 running, 0 draining, 0 stopped, 0 lost; 1 of 3 job slots in use on live workers."
        ),
        "{html}"
    );

    // The overview's live workers list it too.
    let ov = ses.page("/").await;
    let ov_workers = block(&ov, "ov-workers", "</table>");
    let row = worker_row(ov_workers, "dash-w1").expect("the worker on the overview");
    let c = cells(row);
    assert_eq!(c[0], "▶ running", "{row}");
    assert!(c[1].ends_with(" ago"), "heartbeat {:?}", c[1]);
    assert_eq!(c[2], "1 of 3");
    assert_eq!(c[3], env!("CARGO_PKG_VERSION"));

    // A second runtime (on another queue, so it leaves the handed-back job alone), then the
    // first stops: the live one is listed first.
    let second = e
        .worker(
            e.registry(),
            WorkerConfig {
                queues: vec!["elsewhere".into()],
                ..cfg("dash-w2")
            },
        )
        .await;
    first.shutdown(Duration::from_millis(500)).await;
    assert_eq!(
        api_state(&s, busy).await,
        "queued",
        "handed back on shutdown"
    );
    let html = ses.page("/workers").await;
    let row = worker_row(&html, "dash-w1").expect("the stopped worker is still listed");
    let c = cells(row);
    assert_eq!(c[0], "■ stopped", "{row}");
    assert!(row.contains("class=\"state wstate-stopped\""), "{row}");
    assert!(
        !row.contains("late"),
        "a stopped worker is never late: {row}"
    );
    assert!(
        html.find("dash-w2").expect("dash-w2") < html.find("dash-w1").expect("dash-w1"),
        "live workers come first"
    );
    assert!(
        html.contains(
            "1 running, 0 draining, 1 stopped, 0 lost; 0 of 3 job slots in use on live workers."
        ),
        "{html}"
    );
    // The overview lists live workers only.
    let ov = ses.page("/").await;
    let ov_workers = block(&ov, "ov-workers", "</table>");
    assert!(worker_row(ov_workers, "dash-w1").is_none(), "{ov_workers}");
    assert!(worker_row(ov_workers, "dash-w2").is_some(), "{ov_workers}");

    second.shutdown(Duration::from_millis(500)).await;
    let html = ses.page("/workers").await;
    assert!(
        html.contains(
            "0 running, 0 draining, 2 stopped, 0 lost; 0 of 0 job slots in use on live workers."
        ),
        "{html}"
    );
    let ov = ses.page("/").await;
    assert!(
        block(&ov, "ov-workers", "</div>").contains("No workers are running."),
        "{ov}"
    );
}

/// The start tag of the element with `id`.
fn start_tag<'a>(html: &'a str, id: &str) -> Option<&'a str> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let open = html[..at].rfind('<')?;
    let close = at + html[at..].find('>')?;
    Some(&html[open..=close])
}

/// A live update of a state total swaps only its contents, so the page's element keeps its class
/// (`ov-num`: bold, tabular figures) and the numbers do not lose their style on the first update.
#[tokio::test]
async fn live_state_totals_keep_their_class() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let ses = Session::start(&s, &e.token).await;
    enqueue(&s, parked()).await;
    let page = ses.page("/").await;
    let tag = start_tag(&page, "ov-n-queued").expect("the queued total");
    assert_eq!(tag, "<span id=\"ov-n-queued\" class=\"ov-num\">");
    // One poll of the feed (what browsers without SSE use) sends every block.
    let live = ses
        .page_with("/overview/live", &[("x-spool-poll", "1")])
        .await;
    assert!(
        live.contains(r#"<span hx-swap-oob="innerHTML:#ov-n-queued">1</span>"#),
        "the live update must fill the existing total, not replace it: {live}"
    );
    assert!(
        !live.contains(r#"id="ov-n-queued""#),
        "a replacement element would drop the total's class: {live}"
    );
}

/// A worker that shut down cleanly holds no job, so its row must not show one running.
#[tokio::test]
async fn a_stopped_worker_shows_no_running_jobs() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let ses = Session::start(&s, &e.token).await;
    let w = e
        .worker(
            e.registry(),
            WorkerConfig {
                worker_id: Some("stop-w1".into()),
                heartbeat: Duration::from_millis(300),
                ..fast_worker()
            },
        )
        .await;
    let busy = enqueue(&s, json!({ "kind": "sleep", "args": { "ms": 60000 } })).await;
    wait_api_state(&s, busy, "running", Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), || async {
        let html = ses.page("/workers").await;
        (cells(worker_row(&html, "stop-w1")?).get(4)? == "1").then_some(())
    })
    .await
    .expect("the heartbeat to report the job");
    w.shutdown(Duration::from_millis(300)).await;
    assert_eq!(
        api_state(&s, busy).await,
        "queued",
        "handed back on shutdown"
    );
    let html = ses.page("/workers").await;
    let row = worker_row(&html, "stop-w1").expect("the stopped worker's row");
    let c = cells(row);
    assert_eq!(c[0], "■ stopped", "{row}");
    assert_eq!(
        c[4], "0",
        "the stopped worker still shows the job it held at its last heartbeat: {c:?}"
    );
}

#[tokio::test]
async fn browser_overview_counts_update_live_without_a_reload() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let first = enqueue(&s, parked()).await;
    enqueue(&s, parked()).await;

    let b = Browser::start().await;
    sign_in(&b, &s).await;
    b.goto(&s.url("/")).await.expect("goto /");
    wait_exact(&b, "ov-n-queued", "2", WAIT).await;
    assert!(content(&b, "ov-kinds").await.contains("sleep"));
    assert!(!content(&b, "ov-kinds").await.contains("noop"));
    assert!(
        content(&b, "ov-oldest")
            .await
            .contains(&view_short_id(first))
    );
    js(&b, "window.__marker = 1; return true;").await;

    // Three more, of a kind the page has not shown yet, and one cancelled.
    for _ in 0..3 {
        enqueue(&s, json!({ "kind": "noop", "args": {} })).await;
    }
    let (status, body) = s
        .post(&format!("/api/v1/jobs/{first}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    wait_exact(&b, "ov-n-queued", "4", WAIT).await;
    wait_exact(&b, "ov-n-cancelled", "1", WAIT).await;
    wait_exact(&b, "ov-t-6", "5", WAIT).await;
    let kinds = table_rows(&b, "#ov-kinds tbody tr").await;
    assert_eq!(
        row_of(&kinds, "noop"),
        Some(vec!["noop", "3", "0", "0", "0", "0", "0", "3"]),
        "{kinds:?}"
    );
    assert_eq!(
        row_of(&kinds, "sleep"),
        Some(vec!["sleep", "1", "0", "0", "0", "0", "1", "2"]),
        "{kinds:?}"
    );
    // The oldest ready job moved on from the cancelled one.
    let oldest = content(&b, "ov-oldest").await;
    assert!(!oldest.contains(&view_short_id(first)), "{oldest}");
    assert_eq!(
        js(
            &b,
            "return window.__marker === undefined ? null : window.__marker;"
        )
        .await,
        json!(1),
        "the page was reloaded: the marker set before the enqueue is gone"
    );
    screenshot(&b, "overview_live").await;

    // The workers page picks up a runtime that starts while it is open.
    b.goto(&s.url("/workers")).await.expect("goto /workers");
    wait_for(&b, "#workers-fleet", WAIT).await;
    assert!(
        content(&b, "workers-fleet")
            .await
            .contains("No worker has registered yet.")
    );
    js(&b, "window.__marker = 2; return true;").await;
    let cfg = WorkerConfig {
        worker_id: Some("live-w1".into()),
        queues: vec!["elsewhere".into()],
        ..fast_worker()
    };
    let w = e.worker(e.registry(), cfg).await;
    wait_until(&b, WAIT, "the new worker's row", |c| async move {
        let t = c
            .execute(
                "return document.getElementById('workers-fleet').textContent;",
                vec![],
            )
            .await
            .ok()?;
        t.as_str()?.contains("live-w1").then_some(())
    })
    .await;
    assert!(content(&b, "workers-fleet").await.contains("▶ running"));
    assert_eq!(js(&b, "return window.__marker;").await, json!(2));
    w.shutdown(Duration::from_millis(500)).await;
    b.close().await;
}

/// The last 8 hex digits of a job id, as the overview shows it.
fn view_short_id(id: Uuid) -> String {
    id.simple().to_string()[24..].to_owned()
}

#[tokio::test]
async fn pages_render_their_content_without_javascript() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let cfg = WorkerConfig {
        worker_id: Some("nojs-w1".into()),
        ..fast_worker()
    };
    let w = e.worker(e.registry(), cfg).await;
    for _ in 0..2 {
        let id = enqueue(&s, json!({ "kind": "noop", "args": {} })).await;
        assert_eq!(s.wait(id, 15).await["state"], "succeeded");
    }
    let queued = enqueue(&s, parked()).await;

    let b = Browser::without_js().await;
    sign_in(&b, &s).await;
    b.goto(&s.url("/")).await.expect("goto /");
    wait_for(&b, "#ov-n-queued", WAIT).await;
    assert_eq!(
        js(&b, "return typeof window.htmx;").await,
        json!("undefined"),
        "the page's scripts ran: JavaScript is not off"
    );
    assert_eq!(text_of(&b, "#ov-n-queued").await, "1");
    assert_eq!(text_of(&b, "#ov-n-succeeded").await, "2");
    assert_eq!(text_of(&b, "#ov-n-failed").await, "0");
    let kinds = table_rows(&b, "#ov-kinds tr").await;
    assert_eq!(
        row_of(&kinds, "noop"),
        Some(vec!["noop", "0", "0", "0", "2", "0", "0", "2"]),
        "{kinds:?}"
    );
    assert_eq!(
        row_of(&kinds, "sleep"),
        Some(vec!["sleep", "1", "0", "0", "0", "0", "0", "1"]),
        "{kinds:?}"
    );
    assert_eq!(
        row_of(&kinds, "All kinds"),
        Some(vec!["All kinds", "1", "0", "0", "2", "0", "0", "3"]),
        "{kinds:?}"
    );
    let summary = text_of(&b, ".ov-summary").await;
    assert!(
        summary.contains("2 jobs succeeded and 0 failed"),
        "{summary}"
    );
    let oldest = content(&b, "ov-oldest").await;
    assert!(oldest.contains(&view_short_id(queued)), "{oldest}");
    assert!(oldest.contains("waiting"), "{oldest}");
    let workers = table_rows(&b, "#ov-workers tbody tr").await;
    let row = row_of(&workers, "nojs-w1").expect("the worker on the overview");
    assert_eq!(row[1], "▶ running", "{row:?}");
    assert_eq!(row[3..], ["0 of 8", env!("CARGO_PKG_VERSION")], "{row:?}");
    screenshot(&b, "overview_no_js").await;

    b.goto(&s.url("/workers")).await.expect("goto /workers");
    wait_for(&b, "#workers-fleet", WAIT).await;
    let fleet = content(&b, "workers-fleet").await;
    assert!(
        fleet.contains("1 running, 0 draining, 0 stopped, 0 lost; 0 of 8 job slots"),
        "{fleet}"
    );
    let rows = table_rows(&b, "#workers-fleet tbody tr").await;
    let row = row_of(&rows, "nojs-w1").expect("the worker's row");
    assert_eq!(row[1], "▶ running", "{row:?}");
    assert_eq!(
        row[2],
        format!("{} (pid {})", host_name(), std::process::id())
    );
    assert_eq!(
        row[6..],
        ["8", "default", env!("CARGO_PKG_VERSION")],
        "{row:?}"
    );
    screenshot(&b, "workers_no_js").await;
    w.shutdown(Duration::from_millis(500)).await;
    b.close().await;
}

#[tokio::test]
async fn pages_fit_a_375_px_screen_without_sideways_scroll() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let stopped = e.worker(e.registry(), fast_worker()).await;
    stopped.shutdown(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let id = enqueue(&s, json!({ "kind": "noop", "args": {} })).await;
        assert_eq!(s.wait(id, 15).await["state"], "succeeded");
    }
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let failed = enqueue(
        &s,
        json!({ "kind": "http", "args": { "url": url }, "max_attempts": 1 }),
    )
    .await;
    assert_eq!(s.wait(failed, 15).await["state"], "failed");
    enqueue(&s, parked()).await;

    let b = Browser::start().await;
    sign_in(&b, &s).await;
    b.set_window_size(375, 800).await.expect("window size");
    let width = js(&b, "return window.innerWidth;").await;
    assert!(
        width.as_i64().is_some_and(|w| w <= 375),
        "the window is {width} px wide, not 375"
    );
    let fits = "return [document.documentElement.scrollWidth, window.innerWidth];";
    for (page, ready, name) in [
        ("/", "#ov-n-queued", "overview_375"),
        ("/workers", "#workers-fleet table", "workers_375"),
    ] {
        b.goto(&s.url(page)).await.expect("goto");
        wait_for(&b, ready, WAIT).await;
        let v = js(&b, fits).await;
        let (sw, iw) = (v[0].as_i64().unwrap_or(-1), v[1].as_i64().unwrap_or(0));
        screenshot(&b, name).await;
        assert!(
            sw >= 0 && sw <= iw,
            "{page} scrolls sideways at 375 px: scrollWidth {sw} > innerWidth {iw}"
        );
    }
    // The content is there, not just a page that fits because it is empty.
    assert!(
        content(&b, "workers-fleet")
            .await
            .contains("1 running, 0 draining, 1 stopped")
    );
    w.shutdown(Duration::from_millis(500)).await;
    b.close().await;
}

#[tokio::test]
async fn another_projects_jobs_are_not_counted() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let other = projects::ensure(&e.svc.pool, "other")
        .await
        .expect("project");
    let other_token = tokens::create(&e.svc.pool, other.id, tokens::Scope::Admin)
        .await
        .expect("token")
        .secret;
    let w = e.worker(e.registry(), fast_worker()).await;

    // The other project's jobs come first, so its queued job is the older one.
    let foreign_queued = enqueue_as(&s, &other_token, parked()).await;
    for _ in 0..2 {
        enqueue_as(&s, &other_token, parked()).await;
    }
    let mut foreign_done = Vec::new();
    for _ in 0..4 {
        foreign_done
            .push(enqueue_as(&s, &other_token, json!({ "kind": "noop", "args": {} })).await);
    }
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let foreign_failed = enqueue_as(
        &s,
        &other_token,
        json!({ "kind": "http", "args": { "url": url }, "max_attempts": 1 }),
    )
    .await;
    // Ours.
    let ours_queued = enqueue(&s, parked()).await;
    enqueue(&s, parked()).await;
    let ours_done = enqueue(&s, json!({ "kind": "noop", "args": {} })).await;

    // Everything has finished (read through a pool, as the API would not show foreign jobs).
    let pool = e.svc.pool.clone();
    let mut finished = foreign_done.clone();
    finished.push(foreign_failed);
    finished.push(ours_done);
    let settled = eventually(Duration::from_secs(15), || {
        let pool = pool.clone();
        let ids = finished.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND state IN ('succeeded', 'failed')",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == ids.len() as i64).then_some(())
        }
    })
    .await;
    assert!(settled.is_some(), "the jobs did not finish");

    let ses = Session::start(&s, &e.token).await;
    let html = ses.page("/").await;
    assert_eq!(state_totals(&html), [2, 0, 0, 1, 0, 0], "{STATES:?}");
    let rows = kind_rows(&html);
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["noop", "sleep"],
        "only our kinds: no `http` row"
    );
    assert_eq!(rows["noop"], vec![0, 0, 0, 1, 0, 0, 1]);
    assert_eq!(rows["sleep"], vec![2, 0, 0, 0, 0, 0, 2]);
    assert_eq!(kind_totals(&html), vec![2, 0, 0, 1, 0, 0, 3]);
    let chart = block(&html, "ov-chart", "</div>");
    assert!(
        chart.contains("In the last 15 minutes 1 job succeeded and 0 failed"),
        "{chart}"
    );
    let oldest = block(&html, "ov-oldest", "</div>");
    assert!(
        oldest.contains(&format!("href=\"/jobs/{ours_queued}\"")),
        "the oldest queued job is another project's: {oldest}"
    );
    assert!(!html.contains(&foreign_queued.to_string()));
    // Same numbers as our API says.
    for (i, st) in STATES.iter().enumerate() {
        let n: i64 = api_counts(&s, &e.token, st).await.values().sum();
        assert_eq!(state_totals(&html)[i], n, "{st}");
    }

    // And the other project sees its own, not ours.
    let theirs = Session::start(&s, &other_token).await.page("/").await;
    assert_eq!(state_totals(&theirs), [3, 0, 0, 4, 1, 0], "{STATES:?}");
    assert_eq!(kind_totals(&theirs), vec![3, 0, 0, 4, 1, 0, 8]);
    let oldest = block(&theirs, "ov-oldest", "</div>");
    assert!(
        oldest.contains(&format!("href=\"/jobs/{foreign_queued}\"")),
        "{oldest}"
    );
    w.shutdown(Duration::from_millis(500)).await;
}
