//! Background subagents on the pages, against a real server, worker, Postgres and the fake
//! model: the chat page's panel lists a session's subagents (all depths) with status, labels and
//! tokens; each subagent's transcript opens read-only, and other chats' subagents are 404s; the
//! job page draws the turn → subagent → subagent tree. In headless Chromium the panel follows a
//! running subagent live and cancels it without a reload.

mod common;

use std::time::Duration;

use common::browser::{Browser, WAIT, screenshot, sign_in, wait_for, wait_for_text, wait_until};
use common::chat::{agent_env, slow_text};
use common::fake_llm::{Chunk, FakeLlm, Reply};
use common::subagents::{calls, new_session, send_turn, spawn_call, wait_all_call};
use common::web::WebSession as Web;
use common::{Server, eventually, fast_worker};
use serde_json::json;
use spool::agent::subagents::store::{By, Subagent, list};
use uuid::Uuid;

/// Sends a turn and waits for it to succeed; otherwise fails showing every job's state.
async fn run_turn(s: &Server, session: Uuid, input: &str) -> Uuid {
    let turn = send_turn(s, session, input).await;
    let done = s.wait(turn, 30).await;
    if done["state"] != "succeeded" {
        let (_, jobs) = s.get("/api/v1/jobs?limit=50").await;
        let states: Vec<String> = jobs["jobs"]
            .as_array()
            .map(|j| {
                j.iter()
                    .map(|j| format!("{} {} {}", j["id"], j["kind"], j["state"]))
                    .collect()
            })
            .unwrap_or_default();
        panic!("the turn did not succeed: {done}\njobs: {states:#?}");
    }
    turn
}

/// Waits for every subagent the call ids name.
fn wait_all(id: &str, wait_s: u64) -> Reply {
    calls(vec![wait_all_call(id, wait_s)])
}

/// A one-chunk text reply with this usage.
fn reply_with_usage(text: &str, input: u64, output: u64) -> Reply {
    Reply::Stream {
        chunks: vec![Chunk::Text(text.to_owned())],
        usage: Some(spool::llm::Usage {
            input_tokens: input,
            output_tokens: output,
            ..Default::default()
        }),
        delay_ms: 0,
    }
}

/// The session's subagents, all depths, oldest first.
async fn subagents(e: &common::Env, session: Uuid) -> Vec<Subagent> {
    list(&e.svc.pool, e.project, By::Root, session)
        .await
        .expect("subagents")
}

fn by_label<'a>(subs: &'a [Subagent], label: &str) -> &'a Subagent {
    subs.iter()
        .find(|s| s.label.as_deref() == Some(label))
        .unwrap_or_else(|| panic!("no subagent labelled {label}: {subs:?}"))
}

/// The HTML of the panel's row for subagent `id`.
fn row_of(html: &str, id: Uuid) -> &str {
    let start = html
        .find(&format!(r#"id="sub-{id}""#))
        .unwrap_or_else(|| panic!("no panel row for {id}:\n{html}"));
    let end = html[start..]
        .find("</li>")
        .map_or(html.len(), |n| start + n);
    &html[start..end]
}

/// The CSRF token from a page's hidden `_csrf` input.
fn csrf_of(html: &str) -> String {
    let marker = r#"name="_csrf" value=""#;
    let start = html.find(marker).expect("a _csrf input") + marker.len();
    let len = html[start..].find('"').expect("end of the token");
    html[start..start + len].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_page_lists_finished_subagents_and_opens_their_transcripts_read_only() {
    let fake = FakeLlm::start().await;
    // The turn spawns two subagents in one reply, waits for both, then answers.
    fake.push_all([
        Reply::Stream {
            chunks: vec![
                spawn_call("c1", "SUB-A find the <b>alpha</b>", "alpha"),
                spawn_call("c2", "SUB-B find the beta", "beta"),
            ],
            usage: Some(spool::llm::Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Default::default()
            }),
            delay_ms: 0,
        },
        wait_all("c3", 30),
        Reply::text("both are back"),
        Reply::text("A title"),
    ]);
    fake.route(
        "SUB-A",
        [reply_with_usage("alpha <i>result</i> here", 11, 3)],
    );
    fake.route("SUB-B", [reply_with_usage("beta result", 1200, 40)]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let turn = run_turn(&s, session, "Ask two helpers").await;

    let subs = subagents(&e, session).await;
    assert_eq!(subs.len(), 2, "{subs:?}");
    let (alpha, beta) = (by_label(&subs, "alpha"), by_label(&subs, "beta"));

    let web = Web::start(&s, &s.token).await;
    let html = web.page(&format!("/chats/{session}")).await;
    let panel_at = html
        .find(r#"id="subagents""#)
        .unwrap_or_else(|| panic!("the chat page has the panel: {html}"));
    let panel_tag = &html[panel_at..panel_at + html[panel_at..].find('>').expect("tag end")];
    assert!(
        !panel_tag.contains("hidden"),
        "the panel is shown: {panel_tag}"
    );
    // Nothing is unfinished, so the panel does not poll.
    assert!(panel_tag.contains(r#"data-live="0""#), "{panel_tag}");
    assert!(!panel_tag.contains("load delay"), "{panel_tag}");
    for (sub, tokens) in [
        (alpha, "14 tokens · 11 in · 3 out"),
        (beta, "1,240 tokens · 1,200 in · 40 out"),
    ] {
        let row = row_of(&html, sub.id);
        let label = sub.label.as_deref().unwrap_or_default();
        assert!(row.contains(&format!(">{label}</a>")), "{row}");
        assert!(row.contains("✓ succeeded"), "{row}");
        assert!(row.contains("state-succeeded"), "{row}");
        assert!(row.contains(tokens), "want {tokens:?} in {row}");
        assert!(!row.contains("cancel-sub-"), "no cancel once ended: {row}");
        assert!(
            row.contains(&format!(r#"href="/chats/{session}/subagents/{}""#, sub.id)),
            "{row}"
        );
    }
    // Model text is escaped in the summary.
    assert!(
        row_of(&html, alpha.id).contains("alpha &#60;i&#62;result&#60;/i&#62; here")
            || row_of(&html, alpha.id).contains("alpha &lt;i&gt;result&lt;/i&gt; here"),
        "{}",
        row_of(&html, alpha.id)
    );
    // The fragment htmx polls is the same panel.
    let fragment = web.page(&format!("/chats/{session}/subagents")).await;
    assert!(
        fragment
            .trim_start()
            .starts_with("<section id=\"subagents\"")
    );
    assert!(fragment.contains(&format!(r#"id="sub-{}""#, beta.id)));

    // The transcript: the prompt it was given and its reply, escaped, with no composer.
    let page = web
        .page(&format!("/chats/{session}/subagents/{}", alpha.id))
        .await;
    assert!(
        page.contains("SUB-A find the &#60;b&#62;alpha&#60;/b&#62;")
            || page.contains("SUB-A find the &lt;b&gt;alpha&lt;/b&gt;"),
        "the prompt: {page}"
    );
    assert!(!page.contains("<b>alpha</b>"), "the prompt is escaped");
    assert!(page.contains("result&#60;/i&#62; here") || page.contains("result&lt;/i&gt; here"));
    assert!(page.contains("✓ succeeded"));
    for control in [r#"id="composer""#, "<textarea", "/turns\"", r#"id="abort""#] {
        assert!(!page.contains(control), "a read-only page has no {control}");
    }
    assert!(
        !page.contains("hx-trigger=\"load delay"),
        "a finished one does not poll"
    );
    assert!(
        page.contains(&format!(r#"href="/chats/{session}""#)),
        "back to the chat"
    );
    assert!(
        page.contains(&format!(r#"href="/jobs/{}""#, alpha.id)),
        "its job"
    );

    // Another chat's subagent, an unknown id and a malformed one are 404s, here and on cancel.
    let other = new_session(&s).await;
    let csrf = csrf_of(&html);
    for path in [
        format!("/chats/{other}/subagents/{}", alpha.id),
        format!("/chats/{session}/subagents/{}", Uuid::now_v7()),
        format!("/chats/{session}/subagents/{turn}"),
        format!("/chats/{session}/subagents/not-an-id"),
    ] {
        let a = web.get(&path).await;
        assert_eq!(a.status, 404, "GET {path}");
        assert!(a.body.contains("subagent not found"), "{}", a.body);
        let a = web
            .post(&format!("{path}/cancel"), &[("_csrf", &csrf)])
            .await;
        assert_eq!(a.status, 404, "POST {path}/cancel");
    }
    // Cancelling one that has ended says so and leaves it as it was.
    let a = Web::answer(
        web.req(
            reqwest::Method::POST,
            &format!("/chats/{session}/subagents/{}/cancel", beta.id),
        )
        .header("hx-request", "true")
        .header("x-csrf-token", &csrf),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("beta had already ended"), "{}", a.body);
    assert!(row_of(&a.body, beta.id).contains("✓ succeeded"));
    // Without its CSRF token the cancel is refused.
    let a = web
        .post(
            &format!("/chats/{session}/subagents/{}/cancel", beta.id),
            &[],
        )
        .await;
    assert_eq!(a.status, 403);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_page_shows_a_turn_its_subagent_and_the_subagent_it_spawned() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        calls(vec![spawn_call("c1", "SUB-A plan it", "outer")]),
        wait_all("c2", 30),
        Reply::text("all done"),
        Reply::text("A title"),
    ]);
    fake.route(
        "SUB-A",
        [
            calls(vec![spawn_call("d1", "SUB-B do it", "inner")]),
            wait_all("d2", 30),
            Reply::text("outer done"),
        ],
    );
    fake.route("SUB-B", [Reply::text("inner result")]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let turn = run_turn(&s, session, "Plan and do").await;
    let subs = subagents(&e, session).await;
    assert_eq!(subs.len(), 2, "{subs:?}");
    let (outer, inner) = (by_label(&subs, "outer"), by_label(&subs, "inner"));
    assert_eq!((outer.depth, inner.depth), (1, 2));

    let web = Web::start(&s, &s.token).await;
    let html = web.page(&format!("/jobs/{turn}")).await;
    let tree = &html[html.find(r#"class="job-tree""#).expect("the job tree")..];
    let tree = &tree[..tree.find("</section>").expect("end of the tree section")];
    let at_outer = tree
        .find(&format!(r#"href="/jobs/{}""#, outer.id))
        .unwrap_or_else(|| panic!("the subagent is in the tree: {tree}"));
    let at_inner = tree
        .find(&format!(r#"href="/jobs/{}""#, inner.id))
        .unwrap_or_else(|| panic!("the nested subagent is in the tree: {tree}"));
    // The nested one sits in a list inside the outer one's item: after it, one level deeper.
    let between = &tree[at_outer..at_inner];
    assert!(
        between.contains("<ul>"),
        "inner is nested under outer: {tree}"
    );
    assert!(
        !between.contains("</li>"),
        "inner is inside outer's item: {tree}"
    );
    assert_eq!(tree.matches("agent.subagent").count(), 2, "{tree}");
    for (at, sub) in [(at_outer, outer), (at_inner, inner)] {
        let node = &tree[at..];
        let node = &node[..node.find('\n').unwrap_or(node.len())];
        assert!(
            node.contains("agent.subagent") && node.contains("✓ succeeded"),
            "{sub:?}: {node}"
        );
    }

    // The chat's panel lists both, the nested one indented under its parent.
    let chat = web.page(&format!("/chats/{session}")).await;
    let (ro, ri) = (
        chat.find(&format!(r#"id="sub-{}""#, outer.id))
            .expect("outer row"),
        chat.find(&format!(r#"id="sub-{}""#, inner.id))
            .expect("inner row"),
    );
    assert!(ro < ri, "the parent comes first");
    assert!(row_of(&chat, inner.id).contains("--depth: 1"));
    assert!(row_of(&chat, outer.id).contains("--depth: 0"));
    // Each page links the other: the parent lists what it spawned, the child its parent.
    let outer_page = web
        .page(&format!("/chats/{session}/subagents/{}", outer.id))
        .await;
    assert!(outer_page.contains(&format!(
        "/chats/{session}/subagents/{}\">inner</a>",
        inner.id
    )));
    let inner_page = web
        .page(&format!("/chats/{session}/subagents/{}", inner.id))
        .await;
    assert!(inner_page.contains(&format!(
        "/chats/{session}/subagents/{}\">outer</a>",
        outer.id
    )));
    assert!(inner_page.contains("SUB-B do it") && inner_page.contains("inner result"));
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_follows_a_running_subagent_and_cancels_it_without_a_reload() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        calls(vec![spawn_call("c1", "SUB-A go slow", "slowpoke")]),
        wait_all("c2", 120),
        Reply::text("it was stopped"),
        Reply::text("A title"),
    ]);
    // About a minute of streaming: far longer than the test takes to cancel it.
    fake.route("SUB-A", [slow_text(300, 200)]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;

    let b = Browser::start().await;
    sign_in(&b, &s).await;
    b.goto(&s.url(&format!("/chats/{session}")))
        .await
        .expect("chat page");
    wait_for(&b, "#subagents", WAIT).await;
    b.execute("window.__marker = 42;", vec![])
        .await
        .expect("marker");
    // The turn starts after the page has loaded: the subagent must appear, and then run, live.
    let turn = send_turn(&s, session, "Start something slow").await;
    wait_for_text(&b, "#subagents", "slowpoke", WAIT).await;
    let sub = eventually(Duration::from_secs(10), || async {
        subagents(&e, session).await.into_iter().next()
    })
    .await
    .expect("the subagent row");
    let state = format!("#sub-state-{}", sub.id);
    wait_for_text(&b, &state, "running", Duration::from_secs(20)).await;
    // The elapsed time moves on while it runs, without a reload.
    let elapsed = format!("#sub-elapsed-{}", sub.id);
    let first = wait_for(&b, &elapsed, WAIT)
        .await
        .text()
        .await
        .expect("elapsed");
    wait_until(&b, WAIT, "the elapsed time to change", |c| {
        let (elapsed, first) = (elapsed.clone(), first.clone());
        async move {
            let now = c
                .find(fantoccini::Locator::Css(&elapsed))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (now != first).then_some(())
        }
    })
    .await;
    screenshot(&b, "subagents_running").await;

    wait_for(&b, &format!("#cancel-sub-{}", sub.id), WAIT)
        .await
        .click()
        .await
        .expect("click cancel");
    wait_for_text(&b, &state, "cancelled", Duration::from_secs(20)).await;
    let marker = b
        .execute("return window.__marker;", vec![])
        .await
        .expect("marker");
    assert_eq!(marker, json!(42), "the page was not reloaded");
    let (st, job) = s.get(&format!("/api/v1/jobs/{}", sub.id)).await;
    assert_eq!(st, 200, "{job}");
    assert_eq!(job["state"], "cancelled", "{job}");
    // With nothing unfinished the panel stops polling.
    wait_until(&b, WAIT, "the panel to stop polling", |c| async move {
        let live = c
            .execute(
                "return document.getElementById('subagents').dataset.live;",
                vec![],
            )
            .await
            .ok()?;
        (live == "0").then_some(())
    })
    .await;
    assert_eq!(s.wait(turn, 30).await["state"], "succeeded");

    // At phone width neither the chat page nor the transcript scrolls sideways.
    b.set_window_size(375, 800).await.expect("window size");
    for path in [
        format!("/chats/{session}"),
        format!("/chats/{session}/subagents/{}", sub.id),
    ] {
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
    screenshot(&b, "subagent_transcript_375").await;
    b.close().await;
    w.shutdown(Duration::from_secs(1)).await;
}
