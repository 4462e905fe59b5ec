//! Workflow scripts: the sandbox, invalid files, a worker killed mid-run, and the built-ins.

mod common;

use std::time::Duration;

use common::chat::{agent_env, worker_process};
use common::fake_llm::{FakeLlm, Reply};
use common::workflows::{calls_with, finished, running, slow, start, upload};
use common::{eventually, fast_worker, temp_dir};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_runaway_loops_and_memory_bombs_fail_only_their_own_run() {
    let fake = FakeLlm::start().await;
    let mut e = agent_env(&fake).await;
    e.settings.workflows.cpu_ms = 1000;
    let s = e.serve(e.registry()).await;
    let _w = e.worker(e.registry(), fast_worker()).await;
    upload(
        &s,
        "escape",
        r#"export const meta = { description: "tries to get out" };
export default async function () {
  const tries = {};
  const attempt = (name, f) => { try { const v = f(); tries[name] = v === undefined ? "undefined" : typeof v; } catch (e) { tries[name] = "threw"; } };
  attempt("process", () => this.constructor.constructor("return process")());
  attempt("fn_process", () => Function("return process")());
  attempt("require", () => require("fs"));
  attempt("std", () => globalThis.std || globalThis.os || globalThis.process || globalThis.require);
  let imported = "no";
  try { await import("fs"); imported = "yes"; } catch (e) { imported = "threw"; }
  tries.import = imported;
  return tries;
}"#,
    )
    .await;
    upload(
        &s,
        "spin",
        "module.exports = { meta: { description: \"spins\" }, default: async () => { while (true) {} } };",
    )
    .await;
    upload(
        &s,
        "bomb",
        r#"export const meta = { description: "eats memory" };
export default async function () { const a = []; for (;;) a.push(new Array(100000).fill("xxxxxxxx")); }"#,
    )
    .await;
    upload(
        &s,
        "fine",
        r#"module.exports = { meta: { description: "plain" }, default: async (args) => (await agent(`FINE ${args.n}`)).output };"#,
    )
    .await;
    let escape = start(&s, "escape", json!({})).await;
    let spin = start(&s, "spin", json!({})).await;
    let bomb = start(&s, "bomb", json!({})).await;
    let fine = start(&s, "fine", json!({ "args": { "n": 1 } })).await;
    let run = finished(&s, escape, 60).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    for (what, got) in run["output"].as_object().cloned().unwrap_or_default() {
        assert!(
            got == "threw" || got == "undefined",
            "{what} reached something: {got}"
        );
    }
    let run = finished(&s, spin, 60).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["error"],
        "CPU limit: the script ran for more than 1000 ms in one activation"
    );
    let run = finished(&s, bomb, 60).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["error"],
        "memory limit: the script used more than 64 MiB"
    );
    let run = finished(&s, fine, 60).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["output"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_listed_with_its_error_and_skipped() {
    let fake = FakeLlm::start().await;
    let mut e = agent_env(&fake).await;
    let dir = temp_dir("workflows");
    std::fs::write(dir.join("broken.js"), "export default async function ( {").expect("write");
    std::fs::write(dir.join("nometa.js"), "export default async function () {}").expect("write");
    std::fs::write(
        dir.join("good.js"),
        "export const meta = { description: \"good\" };\nexport default async function () { return 7; }",
    )
    .expect("write");
    e.settings.workflows.dir = dir;
    let s = e.serve(e.registry()).await;
    let _w = e.worker(e.registry(), fast_worker()).await;
    let (st, b) = s.get("/api/v1/workflows").await;
    assert_eq!(st, 200, "{b}");
    let all = b["workflows"].as_array().cloned().unwrap_or_default();
    let by = |n: &str| {
        all.iter()
            .find(|w| w["name"] == n)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by("broken")["origin"], "directory");
    assert!(
        by("broken")["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{b}"
    );
    assert_eq!(by("nometa")["error"], "meta.description must be a string");
    assert_eq!(by("good")["error"], Value::Null);
    assert_eq!(by("good")["meta"]["description"], "good");
    for name in ["deep-research", "review-code", "find-issues"] {
        assert_eq!(by(name)["origin"], "builtin", "{b}");
        assert_eq!(by(name)["error"], Value::Null, "{b}");
    }
    let (st, b) = s.post("/api/v1/workflows/broken/runs", json!({})).await;
    assert_eq!(st, 422, "{b}");
    let id = start(&s, "good", json!({})).await;
    let run = finished(&s, id, 60).await;
    assert_eq!(run["output"], 7, "{run}");
    // An invalid upload is refused with its error.
    let r = s
        .req(reqwest::Method::PUT, "/api/v1/workflows/bad")
        .json(&json!({ "source": "module.exports = 1 +" }))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_worker_is_killed_completes_without_repeating_finished_steps() {
    let fake = FakeLlm::start().await;
    fake.route("CRASH-1", [Reply::text("one")]);
    fake.route("CRASH-2", [slow("two", 3000), Reply::text("two")]);
    fake.route("CRASH-3", [Reply::text("three")]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    upload(
        &s,
        "crashy",
        r#"export const meta = { description: "three steps in a row" };
export default async function () {
  const a = await agent("CRASH-1");
  const b = await agent(`CRASH-2 after ${a.output}`);
  const c = await agent(`CRASH-3 after ${b.output}`);
  return [a.output, b.output, c.output];
}"#,
    )
    .await;
    let mut proc = worker_process(&e, &fake).await;
    let id = start(&s, "crashy", json!({})).await;
    let second = eventually(Duration::from_secs(60), || async {
        (calls_with(&fake, "CRASH-2") >= 1).then_some(())
    })
    .await;
    assert!(second.is_some(), "the second step started");
    proc.kill().await.expect("kill worker");
    let _w = e.worker(e.registry(), fast_worker()).await;
    let run = finished(&s, id, 90).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["output"], json!(["one", "two", "three"]));
    assert_eq!(
        calls_with(&fake, "CRASH-1"),
        1,
        "a finished step never runs again"
    );
    assert_eq!(calls_with(&fake, "CRASH-3"), 1);
    assert_eq!(run["steps_total"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_built_ins_run_end_to_end() {
    let fake = FakeLlm::start().await;
    fake.route("Research scope", [Reply::text("first\nsecond\nthird")]);
    let (_e, s, _w) = running(&fake).await;
    let research = start(
        &s,
        "deep-research",
        json!({ "args": { "question": "why?" } }),
    )
    .await;
    let review = start(
        &s,
        "review-code",
        json!({ "args": { "code": "fn main() {}" } }),
    )
    .await;
    let issues = start(&s, "find-issues", json!({ "args": { "target": "a.rs" } })).await;
    let run = finished(&s, research, 90).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["output"]["sources"], 3);
    // scope, three parallel searches, verify, synthesis.
    assert_eq!(run["steps_total"], 6);
    assert_eq!(calls_with(&fake, "Research search"), 3);
    let run = finished(&s, review, 90).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["steps_total"], 4);
    assert_eq!(run["output"]["aspects"].as_array().map(Vec::len), Some(3));
    let run = finished(&s, issues, 90).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    // Every round answers "ok": new in round 1, then two dry rounds.
    assert_eq!(run["output"], json!({ "issues": ["ok"], "rounds": 3 }));
}
