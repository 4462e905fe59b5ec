//! Background subagents as child jobs: fan-out with a suspended parent, limits, cascade cancel,
//! a result that arrives after its turn ended, and a parent that waits on one worker slot.

mod common;

use std::time::Duration;

use common::chat::agent_env;
use common::fake_llm::{Chunk, FakeLlm, Reply};
use common::subagents::{calls, new_session, send_turn, spawn_call, wait_all_call};
use common::{Env, Server, eventually, fast_worker};
use serde_json::{Value, json};
use uuid::Uuid;

/// A child's answer, streamed slowly enough that siblings overlap.
fn slow(text: &str, delay_ms: u64) -> Reply {
    Reply::Stream {
        chunks: vec![Chunk::Text(text.into())],
        usage: None,
        delay_ms,
    }
}

async fn scalar(e: &Env, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&e.svc.pool)
        .await
        .expect(sql)
}

async fn subagents(s: &Server, session: Uuid) -> Vec<Value> {
    let (st, b) = s
        .get(&format!("/api/v1/sessions/{session}/subagents"))
        .await;
    assert_eq!(st, 200, "{b}");
    b["subagents"].as_array().cloned().unwrap_or_default()
}

/// The text of every tool result the model was sent, across all requests.
fn tool_results_sent(fake: &FakeLlm) -> String {
    fake.requests()
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_fans_out_to_three_subagents_and_waits_without_a_worker_slot() {
    let fake = FakeLlm::start().await;
    fake.route(
        "FANOUT",
        [
            calls(vec![
                spawn_call("s1", "SUB-1 task", "SUB-1 task"),
                spawn_call("s2", "SUB-2 task", "SUB-2 task"),
                spawn_call("s3", "SUB-3 task", "SUB-3 task"),
            ]),
            calls(vec![wait_all_call("w", 60)]),
            Reply::text("all three are done"),
        ],
    );
    for (marker, answer) in [
        ("SUB-1", "result one"),
        ("SUB-2", "result two"),
        ("SUB-3", "result three"),
    ] {
        fake.route(marker, [slow(answer, 700)]);
    }
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let turn_id = send_turn(&s, session, "FANOUT please").await;
    // While the children run, the parent waits without a lease (no worker holds it).
    let waited = eventually(Duration::from_secs(20), || async {
        let n = scalar(&e, &format!(
            "SELECT count(*) FROM jobs WHERE id = '{turn_id}' AND state = 'waiting' AND lease_token IS NULL")).await;
        (n == 1).then_some(())
    })
    .await;
    assert!(waited.is_some(), "the parent never went to waiting");
    let job = s.wait(turn_id, 30).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 1, "suspending must not count attempts");
    let subs = subagents(&s, session).await;
    assert_eq!(subs.len(), 3);
    // Their hidden sessions are not chats: the list shows the one the user opened.
    let (_, listed) = s.get("/api/v1/sessions").await;
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec![session.to_string().as_str()], "{listed}");
    assert!(
        subs.iter()
            .all(|x| x["status"] == "succeeded" && x["parent_job_id"] == turn_id.to_string()),
        "{subs:?}"
    );
    // They ran side by side: some two overlapped in time.
    let overlap = scalar(
        &e,
        &format!(
            "SELECT count(*) FROM jobs a JOIN jobs b ON a.id < b.id
         WHERE a.parent_id = '{turn_id}' AND b.parent_id = '{turn_id}'
           AND a.started_at < b.finished_at AND b.started_at < a.finished_at"
        ),
    )
    .await;
    assert!(overlap >= 1, "the subagents ran one after another");
    let sent = tool_results_sent(&fake);
    for r in ["result one", "result two", "result three"] {
        assert!(sent.contains(r), "the final round did not get {r}: {sent}");
    }
    // In the trace, each subagent's job span hangs under the tool span that spawned it.
    let nested = scalar(
        &e,
        &format!(
            "SELECT count(*) FROM spans c JOIN spans t
               ON t.trace_id = c.trace_id AND t.span_id = c.parent_span_id
             JOIN jobs j ON j.id = c.job_id
             WHERE j.parent_id = '{turn_id}' AND c.kind = 'job' AND t.kind = 'tool'
               AND t.job_id = '{turn_id}' AND t.name = 'execute_tool spawn_subagent'"
        ),
    )
    .await;
    assert_eq!(
        nested, 3,
        "subagent spans do not nest under their spawning tool spans"
    );
    let completed = scalar(&e, &format!(
        "SELECT count(*) FROM job_events WHERE job_id = '{turn_id}' AND kind = 'subagent_completed'")).await;
    assert_eq!(completed, 3);
    let succeeded = scalar(&e, &format!(
        "SELECT count(*) FROM job_events WHERE job_id = '{turn_id}' AND kind = 'state' AND data->>'state' = 'succeeded'")).await;
    assert_eq!(succeeded, 1, "the parent completed more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_slot_is_enough_for_a_parent_waiting_on_two_children() {
    let fake = FakeLlm::start().await;
    fake.route(
        "SOLO",
        [
            calls(vec![
                spawn_call("s1", "SUB-A job", "SUB-A job"),
                spawn_call("s2", "SUB-B job", "SUB-B job"),
            ]),
            calls(vec![wait_all_call("w", 60)]),
            Reply::text("both done"),
        ],
    );
    fake.route("SUB-A", [Reply::text("alpha answer")]);
    fake.route("SUB-B", [Reply::text("beta answer")]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e
        .worker(
            e.registry(),
            spool::worker::WorkerConfig {
                concurrency: 1,
                ..fast_worker()
            },
        )
        .await;
    let session = new_session(&s).await;
    let turn_id = send_turn(&s, session, "SOLO run").await;
    let job = s.wait(turn_id, 30).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let sent = tool_results_sent(&fake);
    assert!(
        sent.contains("alpha answer") && sent.contains("beta answer"),
        "{sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_and_per_turn_limits_are_tool_errors_the_model_reads() {
    let fake = FakeLlm::start().await;
    fake.route(
        "LIMITS",
        [
            // The deep one first, alone: spawns in one round race for the last place.
            calls(vec![spawn_call("s1", "SUB-DEEP1 go", "SUB-DEEP1 go")]),
            calls(vec![
                spawn_call("s2", "SUB-X two", "SUB-X two"),
                spawn_call("s3", "SUB-Y three", "SUB-Y three"),
            ]),
            calls(vec![wait_all_call("w", 60)]),
            Reply::text("ok"),
        ],
    );
    // Level 1 spawns level 2, which tries a level 3.
    fake.route(
        "SUB-DEEP1",
        [
            calls(vec![spawn_call("d1", "SUB-DEEP2 go", "SUB-DEEP2 go")]),
            calls(vec![wait_all_call("w", 60)]),
            Reply::text("level one done"),
        ],
    );
    fake.route(
        "SUB-DEEP2",
        [
            calls(vec![spawn_call("d2", "SUB-DEEP3 go", "SUB-DEEP3 go")]),
            Reply::text("level two done"),
        ],
    );
    let mut e = agent_env(&fake).await;
    e.settings.subagents.per_turn = 2;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let turn_id = send_turn(&s, session, "LIMITS test").await;
    let job = s.wait(turn_id, 30).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let sent = tool_results_sent(&fake);
    assert!(
        sent.contains("limit reached: at most 2 subagents per turn"),
        "{sent}"
    );
    assert!(
        sent.contains(
            "depth limit reached: subagents may nest 2 level(s) deep, and this one would be level 3"
        ),
        "{sent}"
    );
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM subagents WHERE depth = 3").await,
        0
    );
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM subagents WHERE depth = 2").await,
        1
    );
    assert_eq!(
        subagents(&s, session).await.len(),
        3,
        "two at level 1, one at level 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_parent_cancels_its_subagents_and_none_succeeds_later() {
    let fake = FakeLlm::start().await;
    fake.route(
        "CASCADE",
        [
            calls(vec![
                spawn_call("s1", "SUB-SLOW1 x", "SUB-SLOW1 x"),
                spawn_call("s2", "SUB-SLOW2 y", "SUB-SLOW2 y"),
            ]),
            calls(vec![wait_all_call("w", 60)]),
        ],
    );
    fake.route("SUB-SLOW1", [common::chat::slow_text(40, 100)]);
    fake.route("SUB-SLOW2", [common::chat::slow_text(40, 100)]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let turn_id = send_turn(&s, session, "CASCADE now").await;
    let running = eventually(Duration::from_secs(20), || async {
        let n = scalar(
            &e,
            &format!(
                "SELECT count(*) FROM jobs WHERE parent_id = '{turn_id}' AND state = 'running'"
            ),
        )
        .await;
        (n == 2).then_some(())
    })
    .await;
    assert!(running.is_some(), "the children never ran");
    let (st, b) = s
        .post(&format!("/api/v1/jobs/{turn_id}/cancel"), json!({}))
        .await;
    assert!(st < 300, "{st} {b}");
    let all_cancelled = eventually(Duration::from_secs(1), || async {
        let n = scalar(&e, &format!("SELECT count(*) FROM jobs WHERE (id = '{turn_id}' OR parent_id = '{turn_id}') AND state = 'cancelled'")).await;
        (n == 3).then_some(())
    })
    .await;
    assert!(
        all_cancelled.is_some(),
        "the tree was not cancelled within 1 s"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.shutdown(Duration::from_secs(1)).await;
    let late = scalar(
        &e,
        &format!(
            "SELECT count(*) FROM job_events ev JOIN jobs j ON j.id = ev.job_id
         WHERE j.parent_id = '{turn_id}' AND ev.kind = 'state' AND ev.data->>'state' = 'succeeded'"
        ),
    )
    .await;
    assert_eq!(
        late, 0,
        "a cancelled subagent (or a child born after the cancel) wrote succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_arrives_after_its_turn_ended_reaches_the_next_turn() {
    let fake = FakeLlm::start().await;
    fake.route(
        "TARDY",
        [
            calls(vec![spawn_call("s1", "SUB-LATE work", "SUB-LATE work")]),
            Reply::text("spawned it, bye"),
        ],
    );
    fake.route("SUB-LATE", [slow("the late finding", 1500)]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let first = send_turn(&s, session, "TARDY start").await;
    assert_eq!(s.wait(first, 30).await["state"], "succeeded");
    let done = eventually(Duration::from_secs(20), || async {
        let subs = subagents(&s, session).await;
        (subs.len() == 1 && subs[0]["status"] == "succeeded").then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the subagent never finished: {:?}",
        subagents(&s, session).await
    );
    let before = fake.request_count();
    let second = send_turn(&s, session, "and now?").await;
    assert_eq!(s.wait(second, 30).await["state"], "succeeded");
    w.shutdown(Duration::from_secs(1)).await;
    let next = &fake.requests()[before..];
    let system = next
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["role"] == "system")
        .map(|m| m["content"].to_string())
        .collect::<String>();
    assert!(
        system.contains("the late finding"),
        "the next turn did not get the result: {system}"
    );
    let collected = scalar(
        &e,
        &format!("SELECT count(*) FROM subagents WHERE collected_by = '{second}'"),
    )
    .await;
    assert_eq!(collected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_rescued_after_its_worker_dies_still_completes_its_parent_once() {
    let fake = FakeLlm::start().await;
    fake.route(
        "CRASHP",
        [
            calls(vec![spawn_call("s1", "SUB-CRASH work", "crashy")]),
            calls(vec![wait_all_call("w", 120)]),
            Reply::text("parent done"),
        ],
    );
    // The first attempt stalls mid-reply on the worker that dies; the rescued one answers.
    fake.route(
        "SUB-CRASH",
        [
            Reply::Stall {
                chunks: vec![Chunk::Text("half an ans".into())],
                stall_ms: 60_000,
            },
            Reply::text("child survived"),
        ],
    );
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let mut victim = common::chat::worker_process(&e, &fake).await;
    let session = new_session(&s).await;
    let turn_id = send_turn(&s, session, "CRASHP go").await;
    let child_mid_reply = eventually(Duration::from_secs(30), || async {
        let n = scalar(
            &e,
            &format!(
                "SELECT count(*) FROM jobs p JOIN jobs c ON c.parent_id = p.id
             WHERE p.id = '{turn_id}' AND p.state = 'waiting' AND c.state = 'running'"
            ),
        )
        .await;
        let asked = fake
            .requests()
            .iter()
            .any(|r| r["messages"].to_string().contains("SUB-CRASH work"));
        (n == 1 && asked).then_some(())
    })
    .await;
    assert!(
        child_mid_reply.is_some(),
        "the child never started on the first worker"
    );
    victim.start_kill().expect("kill -9");
    let _ = victim.wait().await;
    let cfg = spool::worker::WorkerConfig {
        rescue_interval: Duration::from_millis(200),
        ..fast_worker()
    };
    let w = e.worker(e.registry(), cfg).await;
    let job = s.wait(turn_id, 40).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let subs = subagents(&s, session).await;
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0]["status"], "succeeded", "{subs:?}");
    assert_eq!(subs[0]["output"], "child survived");
    let child = subs[0]["id"].as_str().expect("id");
    let attempts = scalar(
        &e,
        &format!("SELECT attempt::bigint FROM jobs WHERE id = '{child}'"),
    )
    .await;
    assert_eq!(attempts, 2, "the child was not rescued and run again");
    let parent_done = scalar(&e, &format!(
        "SELECT count(*) FROM job_events WHERE job_id = '{turn_id}' AND kind = 'state' AND data->>'state' = 'succeeded'")).await;
    assert_eq!(parent_done, 1, "the parent completed more than once");
    assert!(tool_results_sent(&fake).contains("child survived"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_parent_cap_queues_children_and_a_spent_budget_stops_one() {
    let fake = FakeLlm::start().await;
    fake.route(
        "CAPPED",
        [
            calls(vec![
                spawn_call("s1", "SUB-C1 a", "c1"),
                spawn_call("s2", "SUB-C2 b", "c2"),
                spawn_call("s3", "SUB-C3 c", "c3"),
                spawn_call("s4", "SUB-C4 d", "c4"),
                Chunk::ToolCall {
                    id: "s5".into(),
                    name: "spawn_subagent".into(),
                    arguments:
                        json!({ "prompt": "SUB-POOR e", "label": "poor", "budget_tokens": 50 })
                            .to_string(),
                    parts: 1,
                },
            ]),
            calls(vec![wait_all_call("w", 60)]),
            Reply::text("capped done"),
        ],
    );
    for m in ["SUB-C1", "SUB-C2", "SUB-C3", "SUB-C4"] {
        fake.route(m, [slow("capped child", 400)]);
    }
    // The poor one asks for a tool after spending 60 tokens of its 50: it stops there.
    fake.route(
        "SUB-POOR",
        [Reply::Stream {
            chunks: vec![Chunk::ToolCall {
                id: "p1".into(),
                name: "list_dir".into(),
                arguments: json!({ "path": "." }).to_string(),
                parts: 1,
            }],
            usage: Some(spool::llm::Usage {
                input_tokens: 40,
                output_tokens: 20,
                ..Default::default()
            }),
            delay_ms: 0,
        }],
    );
    let mut e = agent_env(&fake).await;
    e.settings.subagents.running_per_parent = 2;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s).await;
    let turn_id = send_turn(&s, session, "CAPPED run").await;
    let job = s.wait(turn_id, 40).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    // At no child's start were more than 2 children running.
    let most = scalar(
        &e,
        &format!(
            "SELECT max((SELECT count(*) FROM jobs b WHERE b.parent_id = a.parent_id
                         AND b.started_at <= a.started_at AND b.finished_at > a.started_at))
             FROM jobs a WHERE a.parent_id = '{turn_id}'"
        ),
    )
    .await;
    assert!(most <= 2, "{most} children ran at once under a cap of 2");
    let subs = subagents(&s, session).await;
    assert_eq!(subs.len(), 5);
    let poor = subs.iter().find(|x| x["label"] == "poor").expect("poor");
    assert_eq!(poor["status"], "budget_exhausted", "{poor}");
    assert!(
        poor["output"]
            .as_str()
            .is_some_and(|o| o.starts_with("budget exhausted: 60 tokens used of 50")),
        "{poor}"
    );
    assert_eq!(
        subs.iter().filter(|x| x["status"] == "succeeded").count(),
        4
    );
    // Usage rolls up: the turn's result counts the subagents' tokens.
    assert!(
        job["result"]["subagents"]["input_tokens"]
            .as_i64()
            .unwrap_or(0)
            >= 40,
        "{job}"
    );
    // The REST tree names all five under the turn.
    let (st, tree) = s.get(&format!("/api/v1/jobs/{turn_id}/children")).await;
    assert_eq!(st, 200, "{tree}");
    let kids = tree["children"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        kids.iter()
            .filter(|k| k["kind"] == "agent.subagent" && k["depth"] == 1)
            .count(),
        5,
        "{tree}"
    );
}
