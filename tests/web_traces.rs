//! The trace waterfall page over HTTP with a browser session: a finished turn's spans as labelled
//! bars in tree order, with escaped attributes and per-job totals; 400 and 404 for malformed,
//! unknown and other projects' trace ids; the live feed's poll answer; the job and chat pages'
//! links to traces, with cache-hit badges and the session's totals, rendered alike by the chat
//! page and its live feed. Then, in headless Chromium, a trace followed live while its turn runs,
//! with one span expanded to its attributes.

mod common;

use std::time::Duration;

use common::browser::{Browser, WAIT, screenshot, sign_in, wait_for_text, wait_until};
use common::chat::{agent_env, slow_text};
use common::fake_llm::{Chunk, FakeLlm, Reply};
use common::web::WebSession as Web;
use common::{Server, eventually, fast_worker};
use fantoccini::Locator;
use serde_json::{Value, json};
use uuid::Uuid;

/// A one-chunk text reply with this usage.
fn reply_with_usage(text: &str, input: u64, output: u64, cache_read: u64) -> Reply {
    Reply::Stream {
        chunks: vec![Chunk::Text(text.to_owned())],
        usage: Some(spool::llm::Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            ..Default::default()
        }),
        delay_ms: 0,
    }
}

/// Creates a session with the `demo` workspace and returns its id.
async fn new_session(s: &Server) -> String {
    let (st, b) = s
        .post("/api/v1/sessions", json!({ "workspace": "demo" }))
        .await;
    assert_eq!(st, 201, "{b}");
    b["id"].as_str().expect("id").to_owned()
}

/// Sends a turn and returns its id.
async fn send(s: &Server, session: &str, input: &str) -> Uuid {
    let (st, b) = s
        .post(
            &format!("/api/v1/sessions/{session}/turns"),
            json!({ "input": input }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    b["turn_id"].as_str().expect("turn").parse().expect("uuid")
}

/// Sends a turn and waits for it to succeed.
async fn run_turn(s: &Server, session: &str, input: &str) -> Uuid {
    let turn = send(s, session, input).await;
    assert_eq!(s.wait(turn, 30).await["state"], "succeeded");
    turn
}

/// Waits for the session's title job (it takes the model reply after the first turn's).
async fn wait_for_title(s: &Server) {
    let titled = eventually(Duration::from_secs(15), || async {
        let (_, b) = s.get("/api/v1/jobs?kind=agent.title").await;
        (b["jobs"][0]["state"] == "succeeded").then_some(())
    })
    .await;
    assert!(titled.is_some(), "the title job did not finish");
}

/// Every span of a trace tree, depth first (the waterfall's order).
fn flatten(nodes: &[Value], out: &mut Vec<Value>) {
    for n in nodes {
        out.push(n.clone());
        flatten(n["children"].as_array().map_or(&[][..], |v| v), out);
    }
}

/// A job's trace id and its spans in tree order, from the API.
async fn trace_of(s: &Server, job: Uuid) -> (String, Vec<Value>) {
    let (st, t) = s.get(&format!("/api/v1/jobs/{job}/trace")).await;
    assert_eq!(st, 200, "{t}");
    let mut spans = Vec::new();
    flatten(t["spans"].as_array().expect("spans"), &mut spans);
    (t["trace_id"].as_str().expect("trace id").to_owned(), spans)
}

fn span_id(span: &Value) -> &str {
    span["span_id"].as_str().expect("span id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_turns_trace_draws_a_labelled_bar_per_span() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        Reply::tool_call(
            "call_1",
            "list_dir",
            r#"{"path":"<img src=x onerror=alert(1)>"}"#,
        ),
        Reply::text("Nothing there."),
        Reply::text("A title"),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let turn = run_turn(&s, &session, "What is there?").await;
    wait_for_title(&s).await;
    w.shutdown(Duration::from_secs(1)).await;
    let (trace, spans) = trace_of(&s, turn).await;
    let kinds: Vec<&str> = spans.iter().filter_map(|s| s["kind"].as_str()).collect();
    assert_eq!(kinds, ["job", "llm", "tool", "llm", "job"]);

    let web = Web::start(&s, &s.token).await;
    let html = web.page(&format!("/traces/{trace}")).await;
    // One row and one bar per span, in tree order, children inside their parent's list.
    let mut at = 0;
    for span in &spans {
        let id = span_id(span);
        let row = html
            .find(&format!(r#"id="span-{id}""#))
            .unwrap_or_else(|| panic!("no row for span {id}"));
        assert!(row > at, "span {id} is out of tree order");
        at = row;
        assert!(
            html.contains(&format!(r#"id="bar-{id}""#)),
            "no bar for {id}"
        );
        assert!(html.contains(&format!(r#"id="attrs-{id}""#)));
    }
    let root = span_id(&spans[0]);
    let kids = html
        .find(&format!(r#"id="kids-{root}""#))
        .expect("the root's child list");
    assert!(
        kids < html
            .find(&format!(r#"id="span-{}""#, span_id(&spans[1])))
            .expect("llm row")
    );
    // Bars sit on the shared axis by percentages (five ticks mark it).
    assert_eq!(html.matches(r#"class="wf-bar "#).count(), spans.len());
    assert_eq!(html.matches(r#"class="wf-tick" style="left:"#).count(), 5);
    // Kind, name, duration and status in words, not only colour.
    for label in [
        r#"k-job">JOB<"#,
        r#"k-llm">LLM<"#,
        r#"k-tool">TOOL<"#,
        ">agent.turn<",
        ">agent.title<",
        ">chat fake<",
        ">execute_tool list_dir<",
        "✓ ok",
        r#"class="wf-took">"#,
    ] {
        assert!(html.contains(label), "the page lacks {label:?}");
    }
    // Attributes, pretty-printed, with the model's hostile text kept as text.
    assert!(html.contains("gen_ai.tool.name"));
    assert!(html.contains("gen_ai.usage.input_tokens"));
    assert!(html.contains("gen_ai.request.model"));
    assert!(!html.contains("<img src=x"), "model output was not escaped");
    assert!(html.contains("img src=x onerror=alert(1)"));
    // Totals per job span: the turn's two model calls (10 input tokens each).
    let totals = html
        .find(&format!(r#"id="total-{root}""#))
        .expect("the turn's totals row");
    let row = &html[totals..totals + html[totals..].find("</tr>").expect("row end")];
    assert!(row.contains("agent.turn · attempt 1"), "{row}");
    assert!(
        row.contains(r#"<td class="num">2</td><td class="num">20</td>"#),
        "{row}"
    );
    // Finished: no live stream on the page.
    assert!(!html.contains(r#"id="trace-live""#));
    assert!(html.contains("✓ finished"));

    // The live endpoint's poll answer: the whole waterfall out of band, and done.
    let a = web
        .get_with(&format!("/traces/{trace}/live"), &[("x-spool-poll", "1")])
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.done, "a finished trace's feed is done");
    assert!(
        a.body.contains(r#"id="waterfall" hx-swap-oob="true""#),
        "{}",
        a.body
    );
    assert!(
        a.body
            .contains(r#"<div id="trace-live" hx-swap-oob="delete"></div>"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_other_projects_trace_ids() {
    let e = common::env().await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let job = s.enqueue("noop", json!({})).await;
    assert_eq!(s.wait(job, 10).await["state"], "succeeded");
    w.shutdown(Duration::from_secs(1)).await;
    let (trace, _) = trace_of(&s, job).await;

    let web = Web::start(&s, &s.token).await;
    let html = web.page(&format!("/traces/{trace}")).await;
    assert!(html.contains(r#"k-job">JOB<"#) && html.contains(">noop<"));
    let bad_ids = [
        "not-a-trace".to_owned(),
        trace.to_uppercase(),
        trace[..31].to_owned(),
        format!("{trace}0"),
    ];
    for bad in &bad_ids {
        assert_eq!(
            web.get(&format!("/traces/{bad}")).await.status,
            400,
            "{bad}"
        );
        assert_eq!(web.get(&format!("/traces/{bad}/live")).await.status, 400);
    }
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_eq!(web.get(&format!("/traces/{unknown}")).await.status, 404);
    assert_eq!(
        web.get(&format!("/traces/{unknown}/live")).await.status,
        404
    );

    // Another project's browser session sees a 404, as for an unknown trace.
    let p2 = spool::projects::ensure(&e.svc.pool, "other")
        .await
        .expect("project");
    let other =
        spool::projects::tokens::create(&e.svc.pool, p2.id, spool::projects::tokens::Scope::Read)
            .await
            .expect("token");
    let web2 = Web::start(&s, &other.secret).await;
    let a = web2.get(&format!("/traces/{trace}")).await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(web2.get(&format!("/traces/{trace}/live")).await.status, 404);

    // Without a session: to the sign-in page, and back here after.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(s.url(&format!("/traces/{trace}")))
        .send()
        .await
        .expect("send");
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert!(
        location.starts_with("/login?next=%2Ftraces%2F"),
        "{location}"
    );
}

/// The `<section>` of turn `id`, as last rendered in `html`, without its out-of-band marker.
fn turn_html(html: &str, id: Uuid) -> String {
    let start = html
        .rfind(&format!(r#"<section class="turn" id="turn-{id}""#))
        .unwrap_or_else(|| panic!("turn {id} is not in {html}"));
    let len = html[start..].find("</section>").expect("section end") + "</section>".len();
    html[start..start + len].replace(r#" hx-swap-oob="true""#, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_chat_pages_link_to_traces_with_cache_hit_badges() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        reply_with_usage("Mostly cached.", 1000, 20, 800),
        Reply::text("A title"),
        reply_with_usage("Half cached.", 1000, 10, 400),
        reply_with_usage("Not cached.", 100, 5, 0),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let t1 = run_turn(&s, &session, "one").await;
    wait_for_title(&s).await;
    let t2 = run_turn(&s, &session, "two").await;
    let t3 = run_turn(&s, &session, "three").await;
    w.shutdown(Duration::from_secs(1)).await;
    let web = Web::start(&s, &s.token).await;

    // The job page links to the job's trace; a job that never ran has none to link to.
    let (trace1, _) = trace_of(&s, t1).await;
    let html = web.page(&format!("/jobs/{t1}")).await;
    assert!(
        html.contains(&format!(r#"<a id="job-trace" href="/traces/{trace1}">"#)),
        "no trace link on the job page"
    );
    let (st, parked) = s
        .post(
            "/api/v1/jobs",
            json!({ "kind": "noop", "args": {}, "queue": "parked" }),
        )
        .await;
    assert_eq!(st, 201, "{parked}");
    let parked = parked["id"].as_str().expect("id");
    assert!(
        !web.page(&format!("/jobs/{parked}"))
            .await
            .contains("job-trace")
    );

    // Each finished turn links to its trace with its cache-hit share in words and colour.
    let page = web.page(&format!("/chats/{session}")).await;
    for id in ["turns", "chat-controls", "composer", "chat-title"] {
        assert!(
            page.contains(&format!(r#"id="{id}""#)),
            "the chat page lost #{id}"
        );
    }
    for (turn, badge) in [
        (t1, r#"class="cache cache-high""#),
        (t2, r#"class="cache cache-medium""#),
        (t3, r#"class="cache cache-low""#),
    ] {
        let (trace, _) = trace_of(&s, turn).await;
        let section = turn_html(&page, turn);
        assert!(
            section.contains(&format!(r#"id="trace-{turn}""#))
                && section.contains(&format!(r#"href="/traces/{trace}""#)),
            "{section}"
        );
        assert!(section.contains(badge), "{section}");
    }
    assert!(turn_html(&page, t1).contains("cache hit 80% · high"));
    assert!(turn_html(&page, t2).contains("cache hit 40% · medium"));
    assert!(turn_html(&page, t3).contains("cache hit 0% · low"));
    // The session's totals: 2,100 input tokens of which 1,200 cache reads (57%).
    let head = &page[page.find(r#"id="chat-usage""#).expect("session totals")..];
    let head = &head[..head.find("</p>").expect("end")];
    assert!(
        head.contains("2,100 in · 35 out · 1,200 cache read"),
        "{head}"
    );
    assert!(head.contains(r#"cache cache-medium"#) && head.contains("cache hit 57% · medium"));

    // The live feed renders a finished turn exactly as the page does, and moves the totals.
    let live = web
        .get_with(
            &format!("/chats/{session}/live?after=0"),
            &[("x-spool-poll", "1")],
        )
        .await;
    assert_eq!(live.status, 200, "{}", live.body);
    for turn in [t1, t2, t3] {
        assert_eq!(turn_html(&live.body, turn), turn_html(&page, turn));
    }
    assert!(
        live.body
            .contains(r#"id="chat-usage" aria-label="Session totals" hx-swap-oob="true""#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_follows_a_running_trace_and_expands_a_span() {
    let fake = FakeLlm::start().await;
    // Slow enough (about 8 s) for the page to open while the model call is still streaming.
    let Reply::Stream { chunks, .. } = slow_text(50, 160) else {
        unreachable!("slow_text streams")
    };
    let slow = Reply::Stream {
        chunks,
        usage: Some(spool::llm::Usage {
            input_tokens: 1200,
            output_tokens: 50,
            cache_read_tokens: 900,
            ..Default::default()
        }),
        delay_ms: 160,
    };
    fake.push_all([slow, Reply::text("A title")]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let turn = send(&s, &session, "take your time").await;
    let (trace, llm) = eventually(Duration::from_secs(20), || async {
        let (st, t) = s.get(&format!("/api/v1/jobs/{turn}/trace")).await;
        let mut spans = Vec::new();
        flatten(t["spans"].as_array()?, &mut spans);
        let llm = spans.into_iter().find(|s| s["kind"] == "llm")?;
        (st == 200).then(|| (t["trace_id"].as_str().map(str::to_owned), llm))
    })
    .await
    .expect("the turn's model call to start");
    let trace = trace.expect("trace id");
    let llm = span_id(&llm).to_owned();

    let b = Browser::start().await;
    sign_in(&b, &s).await;
    b.goto(&s.url(&format!("/traces/{trace}")))
        .await
        .expect("trace page");
    wait_for_text(&b, "#trace-summary", "running", WAIT).await;
    // The stream's first message replaces the waterfall; open the row after it has landed.
    wait_until(
        &b,
        WAIT,
        "the live stream's first message",
        |c| async move {
            let landed = c
            .execute(
                "const l = document.getElementById('trace-live'); return !l || !!l.dataset.cursor;",
                vec![],
            )
            .await
            .ok()?;
            (landed == json!(true)).then_some(())
        },
    )
    .await;
    let summary = format!("#span-{llm} > details > summary");
    b.find(Locator::Css(&summary))
        .await
        .expect("the model call's row")
        .click()
        .await
        .expect("opening the row");
    let attrs = format!("#attrs-{llm}");
    wait_for_text(&b, &attrs, "gen_ai.request.model", WAIT).await;
    assert!(
        b.find(Locator::Css(&attrs))
            .await
            .expect("attributes")
            .text()
            .await
            .expect("text")
            .contains("fake")
    );
    // The run ends while the page watches: the row stays open and gains the call's usage.
    wait_for_text(&b, "#trace-summary", "finished", Duration::from_secs(40)).await;
    wait_for_text(&b, &attrs, "gen_ai.usage.output_tokens", WAIT).await;
    let open = b
        .execute(
            &format!("return document.querySelector('#span-{llm} > details').open;"),
            vec![],
        )
        .await
        .expect("details state");
    assert_eq!(
        open,
        json!(true),
        "live updates closed the row someone opened"
    );
    let label = b
        .find(Locator::Css(&format!("#lbl-{llm}")))
        .await
        .expect("label")
        .text()
        .await
        .expect("label text");
    assert!(
        label.contains("LLM") && label.contains("chat fake") && label.contains("✓ ok"),
        "{label}"
    );
    // The turn's totals came in with the call's usage: 900 of 1,200 input tokens were cached.
    wait_for_text(&b, "#trace-totals", "cache hit 75% · high", WAIT).await;
    let path = screenshot(&b, "trace_waterfall").await;
    assert!(path.ends_with("screenshots/trace_waterfall.png"));
    // On a phone the rows stack their label over the bar and nothing scrolls sideways.
    b.set_window_size(375, 800).await.expect("window size");
    let fits = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .expect("page width");
    screenshot(&b, "trace_waterfall_375").await;
    assert_eq!(
        fits,
        json!(true),
        "the trace page scrolls sideways at 375 px"
    );
    b.close().await;
    assert_eq!(s.wait(turn, 30).await["state"], "succeeded");
    w.shutdown(Duration::from_secs(1)).await;
}
