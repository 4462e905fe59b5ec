//! `/metrics` against a real server and Postgres: the exposition's families, exact counter deltas
//! after real jobs, queue depth from the database, access control, and JSON log lines that carry
//! the job's fields.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use common::{Server, env, fast_worker, reaches_state};
use reqwest::Method;
use serde_json::{Value, json};
use spool::config::Secret;
use spool::llm::Usage;
use spool::logging::LogFormat;
use spool::worker::{JobContext, JobError, Registry, WorkerConfig};
use spool::{NewJob, enqueue};
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

/// The process's counters are globals: tests that move them run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every family `/metrics` always declares, with its type.
const FAMILIES: [(&str, &str); 18] = [
    ("spool_build_info", "gauge"),
    ("spool_queue_stats_up", "gauge"),
    ("spool_queue_depth", "gauge"),
    ("spool_queue_oldest_ready_age_seconds", "gauge"),
    ("spool_job_attempts_total", "counter"),
    ("spool_job_outcomes_total", "counter"),
    ("spool_job_failures_total", "counter"),
    ("spool_job_rescues_total", "counter"),
    ("spool_job_cancels_total", "counter"),
    ("spool_job_claim_latency_seconds", "histogram"),
    ("spool_job_duration_seconds", "histogram"),
    ("spool_llm_calls_total", "counter"),
    ("spool_llm_tokens_total", "counter"),
    ("spool_llm_cost_usd_total", "counter"),
    ("spool_sse_topics", "gauge"),
    ("spool_sse_subscribers", "gauge"),
    ("spool_db_pool_connections", "gauge"),
    ("spool_db_pool_max_connections", "gauge"),
];

/// GETs `/metrics` with an optional bearer token: (status, content type, body).
async fn get_metrics(s: &Server, token: Option<&str>) -> (u16, String, String) {
    let mut req = s.http.get(s.url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, ctype, r.text().await.unwrap_or_default())
}

/// Every sample of an exposition, keyed by its series (`name{labels}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(s: &Server) -> HashMap<String, f64> {
    let (status, _, body) = get_metrics(s, None).await;
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// Polls `f` until it returns `Some`, or gives up after `limit`.
async fn eventually<T, F: Future<Output = Option<T>>>(
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn loopback_scrape_declares_every_family() {
    // Cancels below move the process-wide cancel counter.
    let _serial = SERIAL.lock().await;
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let usage = Usage {
        input_tokens: 10,
        output_tokens: 4,
        cache_read_tokens: 3,
        cache_write_tokens: 2,
        reasoning_tokens: 1,
    };
    spool::metrics::record_llm("metrics-test-model", &usage, 0.25);
    let (status, ctype, body) = get_metrics(&s, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    for (name, ty) in FAMILIES {
        assert!(
            body.contains(&format!("\n# HELP {name} "))
                || body.starts_with(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert!(
            body.contains(&format!("\n# TYPE {name} {ty}\n")),
            "no TYPE {ty} for {name}"
        );
    }
    let m = samples(&body);
    assert_eq!(value(&m, "spool_queue_stats_up"), 1.0);
    assert_eq!(value(&m, "spool_db_pool_max_connections"), 20.0);
    let open = value(&m, r#"spool_db_pool_connections{state="idle"}"#)
        + value(&m, r#"spool_db_pool_connections{state="in_use"}"#);
    assert!((1.0..=20.0).contains(&open), "{open} connections open");
    let model = r#"model="metrics-test-model""#;
    assert_eq!(value(&m, &format!("spool_llm_calls_total{{{model}}}")), 1.0);
    assert_eq!(
        value(
            &m,
            &format!(r#"spool_llm_tokens_total{{{model},type="input"}}"#)
        ),
        10.0
    );
    assert_eq!(
        value(
            &m,
            &format!(r#"spool_llm_tokens_total{{{model},type="cache_read"}}"#)
        ),
        3.0
    );
    assert_eq!(
        value(&m, &format!("spool_llm_cost_usd_total{{{model}}}")),
        0.25
    );

    // A live SSE reader shows up as one followed job with one subscriber, and leaves with it.
    let id = s.enqueue("noop", json!({})).await;
    let stream = s
        .req(Method::GET, &format!("/api/v1/jobs/{id}/events"))
        .send()
        .await
        .expect("sse");
    let seen = eventually(Duration::from_secs(5), || async {
        let m = scrape(&s).await;
        (value(&m, r#"spool_sse_topics{source="job"}"#) == 1.0
            && value(&m, r#"spool_sse_subscribers{source="job"}"#) == 1.0)
            .then_some(())
    })
    .await;
    assert!(seen.is_some(), "the SSE reader is counted");
    // The stream ends after the job's terminal event, and its subscription with it.
    let (st, body) = s
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(st, 200, "{body}");
    let frames = common::sse::read(stream, 10, |_| false).await;
    assert!(
        frames.iter().any(|f| f.2["state"] == "cancelled"),
        "{frames:?}"
    );
    let gone = eventually(Duration::from_secs(5), || async {
        let m = scrape(&s).await;
        (value(&m, r#"spool_sse_topics{source="job"}"#) == 0.0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "a closed reader is no longer counted");
}

#[tokio::test]
async fn counters_move_by_exactly_what_the_jobs_did() {
    let _serial = SERIAL.lock().await;
    let e = env().await;
    let registry = e
        .registry()
        .register("metrics.boom", |_ctx: JobContext| async {
            Err::<Value, _>(JobError::fail("boom"))
        });
    let s = e.serve(registry.clone()).await;
    let before = scrape(&s).await;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(s.enqueue("noop", json!({ "i": i })).await);
    }
    ids.push(s.enqueue("metrics.boom", json!({})).await);
    // Scheduled far ahead so no worker takes them: one to cancel, one to rescue.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut delayed = Vec::new();
    for _ in 0..2 {
        let (st, body) = s
            .post(
                "/api/v1/jobs",
                json!({ "kind": "noop", "args": {}, "run_at": later }),
            )
            .await;
        assert_eq!(st, 201, "{body}");
        delayed.push(
            body["id"]
                .as_str()
                .and_then(|v| v.parse::<Uuid>().ok())
                .expect("id"),
        );
    }
    let (st, body) = s
        .post(&format!("/api/v1/jobs/{}/cancel", delayed[0]), json!({}))
        .await;
    assert_eq!(st, 200, "{body}");
    // A lease that lapsed on its last attempt: the rescue fails the job.
    sqlx::query(
        "UPDATE jobs SET state = 'running', lease_token = gen_random_uuid(),
                lease_expires_at = now() - interval '1 minute', attempt = max_attempts,
                worker_id = 'gone'
         WHERE id = $1",
    )
    .bind(delayed[1])
    .execute(&e.svc.pool)
    .await
    .expect("expire a lease");

    let w = e
        .worker(
            registry,
            WorkerConfig {
                rescue_interval: Duration::from_millis(100),
                ..fast_worker()
            },
        )
        .await;
    for id in ids.iter().chain([&delayed[1]]) {
        let job = s.wait(*id, 15).await;
        assert!(
            ["succeeded", "failed"].contains(&job["state"].as_str().unwrap_or("")),
            "{job}"
        );
    }
    let delta = |m: &HashMap<String, f64>, series: &str| value(m, series) - value(&before, series);
    let expected: [(&str, f64); 12] = [
        ("spool_job_attempts_total", 4.0),
        (r#"spool_job_outcomes_total{outcome="succeeded"}"#, 3.0),
        (r#"spool_job_outcomes_total{outcome="failed"}"#, 1.0),
        (r#"spool_job_outcomes_total{outcome="retried"}"#, 0.0),
        (r#"spool_job_outcomes_total{outcome="cancelled"}"#, 0.0),
        ("spool_job_failures_total", 1.0),
        ("spool_job_rescues_total", 1.0),
        ("spool_job_cancels_total", 1.0),
        (r#"spool_job_duration_seconds_count{kind="noop"}"#, 3.0),
        (
            r#"spool_job_duration_seconds_count{kind="metrics.boom"}"#,
            1.0,
        ),
        (r#"spool_job_claim_latency_seconds_count{kind="noop"}"#, 3.0),
        (
            r#"spool_job_claim_latency_seconds_count{kind="metrics.boom"}"#,
            1.0,
        ),
    ];
    // The finish commits a moment before the completer counts it.
    let after = eventually(Duration::from_secs(5), || async {
        let m = scrape(&s).await;
        expected
            .iter()
            .all(|(series, want)| delta(&m, series) >= *want)
            .then_some(m)
    })
    .await
    .unwrap_or_else(|| panic!("counters never reached {expected:?}"));
    w.shutdown(Duration::from_secs(2)).await;
    for (series, want) in expected {
        assert_eq!(delta(&after, series), want, "{series}");
    }
    let bucket_inf = r#"spool_job_duration_seconds_bucket{kind="noop",le="+Inf"}"#;
    assert_eq!(delta(&after, bucket_inf), 3.0);
}

#[tokio::test]
async fn queue_depth_counts_unfinished_jobs_by_kind_and_state() {
    // Cancels below move the process-wide cancel counter.
    let _serial = SERIAL.lock().await;
    let e = env().await;
    let s = e.serve(e.registry()).await;
    // Highest priority first, so the claim below takes this one.
    let (st, body) = s
        .post(
            "/api/v1/jobs",
            json!({ "kind": "sleep", "args": { "ms": 10 }, "priority": 10 }),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    for _ in 0..3 {
        s.enqueue("noop", json!({})).await;
    }
    for _ in 0..2 {
        s.enqueue("sleep", json!({ "ms": 10 })).await;
    }
    let cancelled = s.enqueue("noop", json!({})).await;
    let (st, _) = s
        .post(&format!("/api/v1/jobs/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(st, 200);
    let claimed = spool::queue::claim::claim(
        &e.svc.pool,
        "default",
        "metrics-test",
        1,
        Duration::from_secs(60),
    )
    .await
    .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].kind, "sleep");

    let m = scrape(&s).await;
    let depth: HashMap<&String, f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("spool_queue_depth{"))
        .map(|(k, v)| (k, *v))
        .collect();
    assert_eq!(depth.len(), 3, "{depth:?}");
    assert_eq!(
        value(&m, r#"spool_queue_depth{state="queued",kind="noop"}"#),
        3.0
    );
    assert_eq!(
        value(&m, r#"spool_queue_depth{state="queued",kind="sleep"}"#),
        2.0
    );
    assert_eq!(
        value(&m, r#"spool_queue_depth{state="running",kind="sleep"}"#),
        1.0
    );
    let age = m
        .get("spool_queue_oldest_ready_age_seconds")
        .copied()
        .expect("age sample");
    assert!((0.0..60.0).contains(&age), "{age}");
}

#[tokio::test]
async fn a_metrics_token_is_required_once_configured() {
    let mut e = env().await;
    e.settings.metrics_token = Some(Secret::new("s3cret-metrics"));
    let s = e.serve(e.registry()).await;
    let (status, _, body) = get_metrics(&s, None).await;
    assert_eq!(status, 403, "loopback alone no longer suffices: {body}");
    let err: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(err["error"]["code"], "forbidden");
    let (status, _, _) = get_metrics(&s, Some("wrong")).await;
    assert_eq!(status, 403);
    // A project's API token is not the metrics token.
    let (status, _, _) = get_metrics(&s, Some(&s.token)).await;
    assert_eq!(status, 403);
    let (status, _, body) = get_metrics(&s, Some("s3cret-metrics")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE spool_job_attempts_total counter"));
}

#[tokio::test]
async fn without_a_token_only_direct_loopback_may_scrape() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    // Through a proxy on this host the peer is loopback, but the request is not local.
    let r = s
        .http
        .get(s.url("/metrics"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 403);
    let err: Value = r.json().await.expect("JSON error body");
    assert_eq!(err["error"]["code"], "forbidden");

    let check = |peer: &str| {
        spool::api::metrics::check_access(
            None,
            &HeaderMap::new(),
            Some(peer.parse().expect("addr")),
        )
        .map_err(|e| e.status.as_u16())
    };
    assert_eq!(check("10.1.2.3:4000"), Err(403));
    assert_eq!(check("[2001:db8::1]:4000"), Err(403));
    assert_eq!(check("127.0.0.1:4000"), Ok(()));
    assert_eq!(check("[::1]:4000"), Ok(()));
    assert_eq!(check("[::ffff:127.0.0.1]:4000"), Ok(()));
    assert_eq!(
        spool::api::metrics::check_access(None, &HeaderMap::new(), None)
            .map_err(|e| e.status.as_u16()),
        Err(403),
        "an unknown peer is not loopback"
    );
}

#[tokio::test]
async fn the_metrics_listener_serves_only_metrics() {
    let e = env().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(spool::app::serve_metrics(
        spool::app::metrics_state(&e.svc, &e.settings),
        "127.0.0.1:0".parse().expect("addr"),
        move |a| {
            let _ = tx.send(a);
        },
        async move { until.cancelled().await },
    ));
    let addr = rx.await.expect("bound");
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.text()
            .await
            .unwrap_or_default()
            .contains("# TYPE spool_queue_depth gauge")
    );
    let r = http
        .get(format!("http://{addr}/api/v1/jobs"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 404);
    stop.cancel();
}

/// Collects what a subscriber writes.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn json_log_lines_carry_the_running_jobs_fields() {
    let _serial = SERIAL.lock().await;
    let lines = Lines::default();
    let sink = lines.clone();
    let dispatch = spool::logging::dispatch(
        LogFormat::Json,
        EnvFilter::new("info,spool=debug"),
        move || sink.clone(),
    );
    // A current-thread test runtime: every task of the worker logs through this subscriber.
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let e = env().await;
    let registry = Registry::new().register("metrics.logs", |_ctx: JobContext| async {
        tracing::info!(answer = 42, "inside the handler");
        Ok::<_, JobError>(Value::Null)
    });
    let id = {
        let mut conn = e.svc.pool.acquire().await.expect("conn");
        enqueue(
            &mut conn,
            e.project,
            &NewJob::new("metrics.logs", json!({})),
        )
        .await
        .expect("enqueue")
        .job()
        .id
    };
    let w = e.worker(registry, fast_worker()).await;
    let worker_id = w.worker_id().to_owned();
    let done = reaches_state(&e.svc.pool, id, "succeeded", Duration::from_secs(10)).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert!(done, "the job ran");

    let text = lines
        .0
        .lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let parsed: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l}")))
        .collect();
    assert!(
        parsed
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
    let from_handler = parsed
        .iter()
        .find(|l| l["message"] == "inside the handler")
        .unwrap_or_else(|| panic!("no handler line in:\n{text}"));
    assert_eq!(from_handler["job_id"], id.to_string());
    assert_eq!(from_handler["worker_id"], worker_id);
    assert_eq!(from_handler["kind"], "metrics.logs");
    assert_eq!(from_handler["attempt"], 1);
    assert_eq!(from_handler["answer"], 42);
    assert!(from_handler["trace_id"].is_string(), "{from_handler}");
    // The runtime's own lines about the attempt carry them too.
    assert!(
        parsed
            .iter()
            .any(|l| l["message"] == "attempt ended" && l["job_id"] == id.to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn every_llm_call_is_counted_under_its_model() {
    use spool::llm::config::ModelConfig;
    use spool::llm::{ChatMessage, ChatRequest, LlmClient, Role};
    let totals = |model: &str| {
        spool::metrics::llm()
            .into_iter()
            .find(|(m, _)| m == model)
            .map(|(_, t)| t)
            .unwrap_or_default()
    };
    let before = totals("mock");
    let client = LlmClient::new(reqwest::Client::new(), Duration::from_secs(5));
    let req = ChatRequest {
        model: "mock".into(),
        messages: vec![ChatMessage {
            role: Role::User,
            content: Some("count these forty characters, please!!".into()),
            tool_calls: vec![],
            tool_call_id: None,
            media: vec![],
        }],
        tools: vec![],
        max_tokens: None,
    };
    let done = client
        .stream(
            &ModelConfig::mock(),
            &req,
            &tokio_util::sync::CancellationToken::new(),
            &mut |_| {},
        )
        .await
        .expect("mock completion");
    let after = totals("mock");
    // No other test in this binary calls a model, so the deltas are exact.
    assert_eq!(after.calls - before.calls, 1);
    assert_eq!(
        after.input_tokens - before.input_tokens,
        done.usage.input_tokens
    );
    assert!(done.usage.input_tokens > 0);
}
