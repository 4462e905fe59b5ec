//! The chat page in headless Chromium against a real server, worker, Postgres and the fake
//! OpenAI-compatible model: a reply streams in token by token, and a reload mid-stream ends with
//! the same transcript as an uninterrupted page, in this tab and in a second one.

mod common;

use std::time::{Duration, Instant};

use common::browser::{Browser, WAIT, screenshot, sign_in, wait_for, wait_for_text};
use common::chat::{agent_env, slow_text};
use common::fake_llm::{FakeLlm, Reply};
use common::fast_worker;
use fantoccini::key::Key;
use fantoccini::{Client, Locator};

/// What the assistant's reply shows now (empty before it starts).
async fn reply_text(c: &Client) -> String {
    match c.find(Locator::Css("#turns .msg-assistant > .text")).await {
        Ok(el) => el.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The whole transcript as the user sees it.
async fn transcript(c: &Client) -> String {
    c.find(Locator::Css("#turns"))
        .await
        .expect("the transcript")
        .text()
        .await
        .expect("transcript text")
}

fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{i} "))
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// Signs in, starts a chat from the chat list and returns its path.
async fn new_chat(b: &Client, s: &common::Server) -> String {
    sign_in(b, s).await;
    b.goto(&s.url("/chats")).await.expect("chats page");
    wait_for(b, "#new-chat", WAIT)
        .await
        .click()
        .await
        .expect("start a chat");
    wait_for(b, "#input", WAIT).await;
    b.current_url().await.expect("url").path().to_owned()
}

/// Types `text` in the composer and presses Enter.
async fn say(b: &Client, text: &str) {
    let input = wait_for(b, "#input", WAIT).await;
    input.send_keys(text).await.expect("typing");
    input
        .send_keys(&Key::Enter.to_string())
        .await
        .expect("Enter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_streams_in_pieces_then_settles_on_the_final_text() {
    let fake = FakeLlm::start().await;
    fake.push_all([slow_text(40, 60), Reply::text("A title")]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let b = Browser::start().await;
    new_chat(&b, &s).await;
    say(&b, "stream to me").await;
    wait_for_text(&b, "#turns .msg-user", "stream to me", WAIT).await;

    let want = words(40);
    let mut partials: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = reply_text(&b).await;
        if now.trim_end() == want {
            break;
        }
        if !now.is_empty() && partials.last() != Some(&now) {
            assert!(
                want.starts_with(now.trim_end()),
                "a partial reply must be a prefix of the final one: {now:?}"
            );
            partials.push(now);
        }
        assert!(
            Instant::now() < deadline,
            "the reply never completed; last {partials:?}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        partials.len() >= 2,
        "the reply should appear in at least two partial states before the final text, saw {partials:?}"
    );
    // The composer was cleared for the next message, and Enter did not leave a newline behind.
    let left = wait_for(&b, "#input", WAIT)
        .await
        .prop("value")
        .await
        .expect("value");
    assert_eq!(left.as_deref(), Some(""));
    wait_for_text(&b, "#chat-controls", "Idle", WAIT).await;
    screenshot(&b, "chat_streams").await;
    b.close().await;
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_mid_stream_ends_with_the_uninterrupted_transcript() {
    let fake = FakeLlm::start().await;
    fake.push_all([slow_text(60, 50), Reply::text("A title")]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let b = Browser::start().await;
    let chat = new_chat(&b, &s).await;
    say(&b, "stream, and survive a reload").await;
    let want = words(60);

    // Reload once some, but not all, of the reply is on the page.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = reply_text(&b).await;
        if now.split_whitespace().count() >= 5 {
            assert_ne!(
                now.trim_end(),
                want,
                "the reply finished before the reload; slow the fake down"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the reply never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.refresh().await.expect("reload");
    // Right after the reload the page shows the reply so far: a prefix, nothing repeated.
    let after_reload = reply_text(&b).await;
    assert!(
        want.starts_with(after_reload.trim_end()),
        "after a reload the partial reply must be a prefix of the final one: {after_reload:?}"
    );
    // A second tab joins the same stream.
    let other = Browser::start().await;
    sign_in(&other, &s).await;
    other.goto(&s.url(&chat)).await.expect("second tab");

    for c in [&*b, &*other] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while reply_text(c).await.trim_end() != want {
            assert!(
                Instant::now() < deadline,
                "the reply never completed: {:?}",
                reply_text(c).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_for_text(c, "#chat-controls", "Idle", WAIT).await;
    }
    let reloaded = transcript(&b).await;
    let second = transcript(&other).await;
    // An uninterrupted rendering of the finished chat.
    other.goto(&s.url(&chat)).await.expect("fresh load");
    wait_for_text(&other, "#turns .msg-assistant > .text", "w59", WAIT).await;
    let fresh = transcript(&other).await;
    assert_eq!(
        reloaded, fresh,
        "the reloaded tab must end with the uninterrupted transcript"
    );
    assert_eq!(
        second, fresh,
        "the second tab must end with the same transcript"
    );
    assert_eq!(
        reloaded.matches("w17 ").count(),
        1,
        "no word may appear twice"
    );
    for c in [&*b, &*other] {
        let turns = c
            .find_all(Locator::Css("#turns > .turn"))
            .await
            .expect("turns");
        assert_eq!(turns.len(), 1, "one turn was sent, so one turn is shown");
        let replies = c
            .find_all(Locator::Css("#turns .msg-assistant"))
            .await
            .expect("replies");
        assert_eq!(replies.len(), 1, "one reply");
    }
    screenshot(&b, "chat_reloaded").await;
    b.close().await;
    other.close().await;
    w.shutdown(Duration::from_secs(1)).await;
}

/// The reply text a chat page's live feed appended, read until `until` shows up.
async fn read_live(res: reqwest::Response, until: &str) -> String {
    use futures::StreamExt;
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        if buf.contains(until) {
            break;
        }
    }
    buf.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| d.starts_with(r#"<span hx-swap-oob="beforeend:#t-"#))
        .filter_map(|d| Some(&d[d.find('>')? + 1..d.rfind("</span>")?]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_open_chat_pages_share_a_pool_of_twenty() {
    const PAGES: usize = 500;
    let fake = FakeLlm::start().await;
    fake.push_all([slow_text(20, 20), Reply::text("A title")]);
    let e = agent_env(&fake).await;
    assert_eq!(e.svc.pool.options().get_max_connections(), 20);
    let s = e.serve(e.registry()).await;
    let cookie = common::web::WebSession::start(&s, &s.token)
        .await
        .cookie_header();
    let (st, body) = s.post("/api/v1/sessions", serde_json::json!({})).await;
    assert_eq!(st, 201, "{body}");
    let chat = body["id"].as_str().expect("session id").to_owned();

    let http = reqwest::Client::new();
    let mut pages = Vec::with_capacity(PAGES);
    for _ in 0..PAGES {
        let res = http
            .get(s.url(&format!("/chats/{chat}/live?after=0")))
            .header("cookie", &cookie)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("open a live page");
        assert_eq!(res.status(), 200, "{:?}", res.headers());
        pages.push(tokio::spawn(read_live(res, "w19 ")));
    }
    // Every page is open and idle; the pool has not grown past its 20 connections.
    assert!(
        e.svc.pool.size() <= 20,
        "pool grew to {}",
        e.svc.pool.size()
    );
    let w = e.worker(e.registry(), fast_worker()).await;
    let (st, body) = s
        .post(
            &format!("/api/v1/sessions/{chat}/turns"),
            serde_json::json!({ "input": "to everyone" }),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let want: String = (0..20).map(|i| format!("w{i} ")).collect();
    for (i, p) in pages.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .unwrap_or_else(|_| panic!("page {i} never saw the whole reply"))
            .expect("reader");
        assert_eq!(got, want, "page {i} saw a different reply");
    }
    assert!(e.svc.pool.size() <= 20);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sse_a_page_polls_the_same_fragments_by_cursor() {
    let fake = FakeLlm::start().await;
    fake.push_all([slow_text(6, 0), Reply::text("A title")]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let cookie = common::web::WebSession::start(&s, &s.token)
        .await
        .cookie_header();
    let (st, body) = s.post("/api/v1/sessions", serde_json::json!({})).await;
    assert_eq!(st, 201, "{body}");
    let chat = body["id"].as_str().expect("session id").to_owned();
    let (st, body) = s
        .post(
            &format!("/api/v1/sessions/{chat}/turns"),
            serde_json::json!({ "input": "poll me" }),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let turn = body["turn_id"]
        .as_str()
        .expect("turn")
        .parse()
        .expect("uuid");
    assert_eq!(s.wait(turn, 20).await["state"], "succeeded");

    let poll = |after: String| {
        reqwest::Client::new()
            .get(s.url(&format!("/chats/{chat}/live?after={after}")))
            .header("cookie", &cookie)
            .header("x-spool-poll", "1")
            .send()
    };
    let chat_id = chat.parse().expect("uuid");
    let head_before = spool::events::log::stream_head(&e.svc.pool, chat_id)
        .await
        .expect("head");
    let first = poll("0".into()).await.expect("poll");
    let head_after = spool::events::log::stream_head(&e.svc.pool, chat_id)
        .await
        .expect("head");
    assert_eq!(first.status(), 200);
    let cursor = first
        .headers()
        .get("spool-cursor")
        .and_then(|v| v.to_str().ok())
        .expect("Spool-Cursor")
        .to_owned();
    let html = first.text().await.expect("body");
    let text: String = html
        .split(r#"<span hx-swap-oob="beforeend:#t-"#)
        .skip(1)
        .filter_map(|d| Some(&d[d.find('>')? + 1..d.find("</span>")?]))
        .collect();
    assert_eq!(text, "w0 w1 w2 w3 w4 w5 ");
    assert!(
        html.contains(&format!(
            r#"id="turn-{turn}" aria-label="Turn" hx-swap-oob="true""#
        )),
        "the finished turn is re-rendered whole"
    );
    // The title job may still be adding events; the cursor is the newest one the answer held.
    let n: i64 = cursor.parse().expect("numeric cursor");
    assert!(
        (head_before..=head_after).contains(&n),
        "cursor {n} outside {head_before}..={head_after}"
    );
    let again = poll(cursor.clone()).await.expect("poll");
    let next: i64 = again
        .headers()
        .get("spool-cursor")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Spool-Cursor");
    assert!(next >= n);
    let rest = again.text().await.expect("body");
    assert!(
        !rest.contains("beforeend:#t-"),
        "no reply text is sent twice: {rest}"
    );
    let bad = poll("-3".into()).await.expect("poll");
    assert_eq!(bad.status(), 400, "a bad cursor is refused");
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_text_is_shown_as_text_while_streaming_and_after() {
    let hostile = r#"<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> done"#;
    let fake = FakeLlm::start().await;
    let slow = match Reply::text(hostile) {
        Reply::Stream { chunks, usage, .. } => Reply::Stream {
            chunks,
            usage,
            delay_ms: 150,
        },
        other => other,
    };
    fake.push_all([slow, Reply::text("A title")]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let b = Browser::start().await;
    let chat = new_chat(&b, &s).await;
    say(&b, "say something hostile").await;
    // Mid-stream (fragments appended by the live feed) ...
    wait_for_text(
        &b,
        "#turns .msg-assistant > .text",
        "<img",
        Duration::from_secs(20),
    )
    .await;
    let injected = |c: &Client| {
        let c = c.clone();
        async move {
            let v = c
                .execute(
                    "return [typeof window.__xss, document.querySelectorAll('#turns img, #turns script').length]",
                    vec![],
                )
                .await
                .expect("script");
            v.to_string()
        }
    };
    assert_eq!(injected(&b).await, r#"["undefined",0]"#);
    // ... after the turn (the stored transcript), and after a reload.
    wait_for_text(
        &b,
        "#turns .msg-assistant > .text",
        "done",
        Duration::from_secs(20),
    )
    .await;
    wait_for_text(&b, "#chat-controls", "Idle", WAIT).await;
    b.goto(&s.url(&chat)).await.expect("reload");
    let text = wait_for_text(&b, "#turns .msg-assistant > .text", "done", WAIT).await;
    assert!(text.contains("<script>window.__xss=2</script>"), "{text}");
    assert_eq!(injected(&b).await, r#"["undefined",0]"#);
    screenshot(&b, "chat_escapes_model_text").await;
    b.close().await;
    w.shutdown(Duration::from_secs(1)).await;
}
