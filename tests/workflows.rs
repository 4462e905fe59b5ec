//! Workflow scripts end to end: replayed runs whose steps are child jobs, against the fake model.

mod common;

use std::time::Duration;

use common::eventually;
use common::fake_llm::{FakeLlm, Reply};
use common::workflows::{
    calls_with, finished, max_open_steps, running, slow, start, step_jobs, upload,
};
use serde_json::json;

const FANOUT: &str = r#"
export const meta = { name: "fanout", description: "two sequential steps, then four in parallel" };
export default async function (args) {
  phase("sequential");
  const a = await agent(`SEQ-A about ${args.topic}`, { label: "a" });
  const b = await agent(`SEQ-B after ${a.output}`, { label: "b" });
  phase("parallel");
  const rs = await parallel([1, 2, 3, 4].map((i) => () => agent(`PAR-${i} with ${b.output}`)));
  log("parallel done", rs.length);
  return { a: a.output, b: b.output, par: rs.map((r) => r.output) };
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_then_parallel_runs_at_most_three_steps_at_once() {
    let fake = FakeLlm::start().await;
    fake.route("SEQ-A", [Reply::text("alpha")]);
    fake.route("SEQ-B", [Reply::text("beta")]);
    for i in 1..=4 {
        fake.route(&format!("PAR-{i}"), [slow(&format!("p{i}"), 400)]);
    }
    let (e, s, _w) = running(&fake).await;
    upload(&s, "fanout", FANOUT).await;
    let id = start(&s, "fanout", json!({ "args": { "topic": "x" } })).await;
    let run = finished(&s, id, 60).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(
        run["output"],
        json!({ "a": "alpha", "b": "beta", "par": ["p1", "p2", "p3", "p4"] })
    );
    assert_eq!(fake.request_count(), 6);
    assert_eq!(run["steps_total"], 6);
    assert_eq!(run["cache_summary"], "0 of 6 steps cached");
    // Three at once, never four.
    assert_eq!(max_open_steps(&e, id).await, 3);
    assert_eq!(step_jobs(&e, id, Some("succeeded")).await, 6);
}

const TWO_ARGS: &str = r#"
export const meta = { name: "two", description: "one step per argument" };
export default async function (args) {
  const x = await agent(`STEP-X ${args.x}`);
  const y = await agent(`STEP-Y ${args.y}`);
  return [x.output, y.output, x.cached, y.cached];
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reruns_reuse_steps_and_a_changed_argument_reruns_only_its_steps() {
    let fake = FakeLlm::start().await;
    let (_e, s, _w) = running(&fake).await;
    upload(&s, "two", TWO_ARGS).await;
    let first = start(&s, "two", json!({ "args": { "x": 1, "y": 1 } })).await;
    let run = finished(&s, first, 60).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(fake.request_count(), 2);
    let again = start(&s, "two", json!({ "args": { "x": 1, "y": 1 } })).await;
    let run = finished(&s, again, 60).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(
        fake.request_count(),
        2,
        "a rerun with the same args calls no model"
    );
    assert_eq!(run["cache_summary"], "2 of 2 steps cached");
    assert_eq!(run["output"], json!(["ok", "ok", true, true]));
    let changed = start(&s, "two", json!({ "args": { "x": 1, "y": 2 } })).await;
    let run = finished(&s, changed, 60).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(
        fake.request_count(),
        3,
        "only the step of the changed argument ran"
    );
    assert_eq!(calls_with(&fake, "STEP-Y 2"), 1);
    assert_eq!(calls_with(&fake, "STEP-X 1"), 1);
    assert_eq!(run["cache_summary"], "1 of 2 steps cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_over_the_budget_fails_the_run() {
    let fake = FakeLlm::start().await;
    let (_e, s, _w) = running(&fake).await;
    upload(
        &s,
        "spender",
        r#"export const meta = { description: "spends" };
export default async function () {
  for (let i = 0; i < 5; i++) await agent(`SPEND ${i}`);
  return "never";
}"#,
    )
    .await;
    let id = start(&s, "spender", json!({ "args": {}, "budget_tokens": 25 })).await;
    let run = finished(&s, id, 60).await;
    assert_eq!(run["state"], "failed", "{run}");
    // Each reply costs 10 input + 1 output tokens: the third step takes it to 33 of 25.
    assert_eq!(run["error"], "budget exhausted (33/25)");
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_reaches_another_step_is_non_deterministic() {
    let fake = FakeLlm::start().await;
    let (_e, s, _w) = running(&fake).await;
    upload(
        &s,
        "clock",
        r#"export const meta = { description: "depends on the clock" };
export default async function () {
  await agent(`at ${Date.now()}`);
  return "done";
}"#,
    )
    .await;
    let id = start(&s, "clock", json!({})).await;
    let run = finished(&s, id, 60).await;
    assert_eq!(run["state"], "failed", "{run}");
    let error = run["error"].as_str().unwrap_or("");
    assert!(error.starts_with("non-deterministic workflow"), "{error}");
    let recorded = run["steps"][0]["key"].as_str().unwrap_or("?");
    assert!(error.contains(recorded), "{error} names the recorded key");
    assert_eq!(error.matches("step ").count(), 2, "{error} names both keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_mid_parallel_stops_the_steps() {
    let fake = FakeLlm::start().await;
    for i in 1..=3 {
        fake.route(&format!("LONG-{i}"), [slow("late", 20_000)]);
    }
    let (e, s, _w) = running(&fake).await;
    upload(
        &s,
        "long",
        r#"export const meta = { description: "three long steps" };
export default async function () {
  const rs = await parallel([1, 2, 3].map((i) => () => agent(`LONG-${i}`)));
  await agent("AFTER");
  return rs;
}"#,
    )
    .await;
    let id = start(&s, "long", json!({})).await;
    let running = eventually(Duration::from_secs(30), || async {
        (step_jobs(&e, id, Some("running")).await == 3).then_some(())
    })
    .await;
    assert!(running.is_some(), "three steps run");
    let (st, b) = s
        .post(&format!("/api/v1/workflow-runs/{id}/cancel"), json!({}))
        .await;
    assert!(st == 200 || st == 202, "{b}");
    let run = finished(&s, id, 30).await;
    assert_eq!(run["state"], "cancelled", "{run}");
    let stopped = eventually(Duration::from_secs(30), || async {
        (step_jobs(&e, id, Some("cancelled")).await == 3).then_some(())
    })
    .await;
    assert!(stopped.is_some(), "every running step was cancelled");
    assert_eq!(
        step_jobs(&e, id, None).await,
        3,
        "the script went no further"
    );
    assert_eq!(calls_with(&fake, "AFTER"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_pipeline_schema_and_one_level_of_nesting() {
    let fake = FakeLlm::start().await;
    fake.route("TYPED", [Reply::text("```json\n{\"n\": 3}\n```")]);
    fake.route("BADJSON", [Reply::text("not json")]);
    let (_e, s, _w) = running(&fake).await;
    upload(
        &s,
        "child",
        "export const meta = { description: \"child\" };\nexport default async (args) => (await agent(`CHILD ${args.v}`)).output;",
    )
    .await;
    upload(
        &s,
        "deeper",
        "export const meta = { description: \"nests\" };\nexport default async () => workflow(\"child\", { v: 9 });",
    )
    .await;
    upload(
        &s,
        "combo",
        r#"export const meta = { description: "sleep, pipeline, schema, nesting" };
export default async function () {
  await sleep(200);
  const piped = await pipeline([1, 2], (n) => agent(`PIPE-${n}`), (r, i) => agent(`PIPE2-${i} ${r.output}`));
  const typed = await agent("TYPED", { schema: { type: "object", required: ["n"], properties: { n: { type: "integer" } } } });
  const bad = await agent("BADJSON", { schema: { type: "object" } });
  const nested = await workflow("child", { v: 2 });
  const deep = await workflow("deeper", {});
  return { piped: piped.map((p) => p.output), typed: typed.output, bad: bad.ok, nested: [nested.ok, nested.output], deep: [deep.ok, deep.error] };
}"#,
    )
    .await;
    let id = start(&s, "combo", json!({})).await;
    let run = finished(&s, id, 60).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let out = &run["output"];
    assert_eq!(out["piped"], json!(["ok", "ok"]));
    assert_eq!(out["typed"], json!({ "n": 3 }));
    assert_eq!(out["bad"], false);
    assert_eq!(out["nested"], json!([true, "ok"]));
    assert_eq!(out["deep"][0], false);
    let deep_error = out["deep"][1].as_str().unwrap_or("");
    assert!(deep_error.contains("nest one level deep"), "{deep_error}");
    assert_eq!(calls_with(&fake, "PIPE2-"), 2);
    assert_eq!(calls_with(&fake, "CHILD 2"), 1);
    assert_eq!(
        calls_with(&fake, "CHILD 9"),
        0,
        "the second level never ran"
    );
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    let sleep = steps.iter().find(|s| s["kind"] == "sleep").cloned();
    assert_eq!(sleep.map(|s| s["status"].clone()), Some(json!("done")));
    // sleep + 4 pipeline steps + 2 schema steps + 2 nested runs.
    assert_eq!(run["steps_total"], 9);
}
