//! OTLP export of stored spans: a tiny OTLP/HTTP receiver in the test decodes what the exporter
//! sends and checks ids and parent links against Postgres; a failing collector is retried with
//! nothing lost or sent twice; a refused batch is narrowed down to the refused span; a stalled
//! collector holds up no job; the environment rules.

mod common;
#[path = "otlp/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::chat::agent_env;
use common::fake_llm::{FakeLlm, Reply};
use common::{env, eventually, fast_worker};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as Code;
use serde_json::json;
use spool::queue::claim;
use spool::trace::otlp;
use spool::worker::WorkerConfig;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use harness::{Got, Receiver, Row, drained, fast, once_each, settled, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_once_with_their_ids_and_parent_links() {
    let fake = FakeLlm::start().await;
    fake.push_all([Reply::text("Hello from spool."), Reply::text("A title")]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let (st, b) = s
        .post("/api/v1/sessions", json!({ "workspace": "demo" }))
        .await;
    assert_eq!(st, 201, "{b}");
    let session = b["id"].as_str().expect("id").to_owned();
    let (st, b) = s
        .post(
            &format!("/api/v1/sessions/{session}/turns"),
            json!({ "input": "Hi" }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let turn: Uuid = b["turn_id"].as_str().expect("turn").parse().expect("uuid");
    assert_eq!(s.wait(turn, 30).await["state"], "succeeded");
    // A job under a caller's span.
    let (caller_trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let r = s
        .req(reqwest::Method::POST, "/api/v1/jobs")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({ "kind": "noop", "args": {} }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    let noop: serde_json::Value = r.json().await.expect("json");
    let noop: Uuid = noop["id"].as_str().expect("id").parse().expect("uuid");
    assert_eq!(s.wait(noop, 10).await["state"], "succeeded");
    settled(&e.svc.pool).await;
    w.shutdown(Duration::from_secs(1)).await;

    // Two exporters, as two processes would run them: they split the spans, never share one.
    let (rx, url) = Receiver::start().await;
    let stop = CancellationToken::new();
    let a = otlp::start(e.svc.pool.clone(), fast(&url), stop.clone()).expect("exporter a");
    let b = otlp::start(e.svc.pool.clone(), fast(&url), stop.clone()).expect("exporter b");
    drained(&e.svc.pool, 15).await;
    stop.cancel();
    a.await.expect("exporter a ended");
    b.await.expect("exporter b ended");

    let rows = stored(&e.svc.pool).await;
    assert!(
        rows.iter().all(|r| r.6),
        "exported_at is set on every span: {rows:?}"
    );
    let got = once_each(&rx.accepted(), &rows);
    for (trace, span, parent, kind, name, _, _) in &rows {
        let g = &got[span];
        assert_eq!(&g.trace_id, trace, "{name}");
        assert_eq!(g.parent, parent.clone().unwrap_or_default(), "{name}");
        assert_eq!(&g.name, name);
        assert_eq!(
            g.attrs.get("spool.span.kind"),
            Some(&Any::StringValue(kind.clone()))
        );
        assert!(g.start > 0 && g.end >= g.start, "{g:?}");
        assert_eq!(g.service, "spool");
        assert_eq!(g.scope, "spool");
    }

    // The turn: its job span is a root, its LLM span hangs under it.
    let job = rows
        .iter()
        .find(|r| r.3 == "job" && r.5 == Some(turn))
        .expect("the turn's job span");
    let job_span = &got[&job.1];
    assert_eq!(job_span.parent, "");
    assert_eq!(job_span.kind, SpanKind::Internal as i32);
    assert_eq!(job_span.code, Code::Ok as i32);
    assert_eq!(
        job_span.attrs.get("spool.job.id"),
        Some(&Any::StringValue(turn.to_string()))
    );
    let llm = rows
        .iter()
        .find(|r| r.3 == "llm" && r.2.as_deref() == Some(job.1.as_str()))
        .expect("an LLM span under the turn's job span");
    let llm = &got[&llm.1];
    assert_eq!(llm.trace_id, job_span.trace_id);
    assert_eq!(
        llm.parent, job_span.span_id,
        "the LLM span's parent is its job span"
    );
    assert_eq!(llm.kind, SpanKind::Client as i32);
    assert_eq!(llm.code, Code::Ok as i32);
    assert_eq!(llm.flags & 0x300, 0x100, "a local parent");
    assert_eq!(
        llm.attrs["gen_ai.request.model"],
        Any::StringValue("fake".into())
    );
    assert_eq!(llm.attrs["gen_ai.usage.input_tokens"], Any::IntValue(10));
    match &llm.attrs["gen_ai.response.finish_reasons"] {
        Any::ArrayValue(a) => assert!(
            a.values
                .iter()
                .all(|v| matches!(v.value, Some(Any::StringValue(_)))),
            "{a:?}"
        ),
        other => panic!("finish reasons: {other:?}"),
    }

    // The noop job joins the caller's trace under the caller's (remote) span.
    let noop_row = rows.iter().find(|r| r.5 == Some(noop)).expect("noop span");
    let n = &got[&noop_row.1];
    assert_eq!(n.trace_id, caller_trace);
    assert_eq!(n.parent, caller_span);
    assert_eq!(n.flags & 0x300, 0x300, "a remote parent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_collector_is_retried_and_nothing_is_lost_or_sent_twice() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let (rx, url) = Receiver::start().await;
    rx.fail_next.store(2, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let task = otlp::start(e.svc.pool.clone(), fast(&url), stop.clone()).expect("exporter");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s.enqueue("noop", json!({})).await);
    }
    // One attempt "crashes" (a 1 s lease never renewed), so an abandoned span goes out too.
    let stale = claim::claim(&e.svc.pool, "default", "crashed", 1, Duration::from_secs(1))
        .await
        .expect("claim");
    assert_eq!(stale.len(), 1);
    let cfg = WorkerConfig {
        rescue_interval: Duration::from_millis(200),
        ..fast_worker()
    };
    let w = e.worker(e.registry(), cfg).await;
    for id in &ids {
        assert_eq!(s.wait(*id, 10).await["state"], "succeeded");
    }
    settled(&e.svc.pool).await;
    drained(&e.svc.pool, 15).await;
    w.shutdown(Duration::from_secs(1)).await;
    stop.cancel();
    task.await.expect("exporter ended");

    assert_eq!(
        rx.fail_next.load(Ordering::SeqCst),
        0,
        "both 503s were answered"
    );
    let rows = stored(&e.svc.pool).await;
    assert_eq!(
        rows.len(),
        4,
        "three attempts and an abandoned one: {rows:?}"
    );
    assert!(rows.iter().all(|r| r.6));
    let got = once_each(&rx.accepted(), &rows);
    let abandoned = &got[&stale[0].span_id];
    assert_eq!(abandoned.code, Code::Error as i32);
    assert_eq!(
        abandoned.message,
        "abandoned: worker stopped renewing the lease"
    );
    assert_eq!(
        abandoned.attrs.get("spool.span.status"),
        Some(&Any::StringValue("abandoned".into()))
    );
    let refused = rx.refused();
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (status, spans) in refused {
        assert_eq!(status, 503);
        assert!(!spans.is_empty());
        for g in spans {
            assert!(
                got.contains_key(&g.span_id),
                "a refused span was sent again: {g:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_halved_until_only_the_refused_span_is_left_out() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    for _ in 0..5 {
        let id = s.enqueue("noop", json!({})).await;
        assert_eq!(s.wait(id, 10).await["state"], "succeeded");
    }
    settled(&e.svc.pool).await;
    w.shutdown(Duration::from_secs(1)).await;
    let rows = stored(&e.svc.pool).await;
    assert_eq!(rows.len(), 5);
    // A collector that takes at most two spans a request (413 above) and never one of them (400).
    let poison = rows[2].1.clone();
    let (rx, url) = Receiver::start().await;
    let bad = poison.clone();
    *rx.refuse.lock().expect("lock") = Some(Box::new(move |spans: &[Got]| {
        if spans.len() > 2 {
            Some(413)
        } else {
            spans.iter().any(|g| g.span_id == bad).then_some(400)
        }
    }));
    let stop = CancellationToken::new();
    let task = otlp::start(e.svc.pool.clone(), fast(&url), stop.clone()).expect("exporter");
    drained(&e.svc.pool, 15).await;
    stop.cancel();
    task.await.expect("exporter ended");

    let rows = stored(&e.svc.pool).await;
    assert!(rows.iter().all(|r| r.6), "every span is settled: {rows:?}");
    let sent: Vec<Row> = rows.into_iter().filter(|r| r.1 != poison).collect();
    let got = once_each(&rx.accepted(), &sent);
    assert!(!got.contains_key(&poison));
    let refused = rx.refused();
    assert!(
        refused
            .iter()
            .any(|(s, spans)| *s == 413 && spans.len() == 5),
        "{refused:?}"
    );
    let alone =
        |(s, spans): &(u16, Vec<Got>)| *s == 400 && spans.len() == 1 && spans[0].span_id == poison;
    assert!(
        refused.iter().any(alone),
        "the refused span went alone: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_holds_up_no_job() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let first = s.enqueue("noop", json!({})).await;
    assert_eq!(s.wait(first, 10).await["state"], "succeeded");
    settled(&e.svc.pool).await;
    let (rx, url) = Receiver::start().await;
    rx.stall.store(true, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let cfg = otlp::OtlpConfig {
        timeout: Duration::from_secs(30),
        ..fast(&url)
    };
    let task = otlp::start(e.svc.pool.clone(), cfg, stop.clone()).expect("exporter");
    let stalled = eventually(Duration::from_secs(10), || async {
        (rx.stalled.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    assert!(stalled.is_some(), "the exporter never called");
    // The exporter now holds the first span's row lock and a connection, waiting on the
    // collector; jobs still run and finish (and their spans end) as usual.
    let started = std::time::Instant::now();
    let more: Vec<Uuid> =
        futures::future::join_all((0..3).map(|_| s.enqueue("noop", json!({})))).await;
    for id in &more {
        assert_eq!(s.wait(*id, 10).await["state"], "succeeded");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(rx.accepted().is_empty(), "still stalled");
    rx.stall.store(false, Ordering::SeqCst);
    rx.release.cancel();
    settled(&e.svc.pool).await;
    drained(&e.svc.pool, 15).await;
    w.shutdown(Duration::from_secs(1)).await;
    stop.cancel();
    task.await.expect("exporter ended");
    once_each(&rx.accepted(), &stored(&e.svc.pool).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_flushes_what_has_ended() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let id = s.enqueue("noop", json!({})).await;
    assert_eq!(s.wait(id, 10).await["state"], "succeeded");
    settled(&e.svc.pool).await;
    w.shutdown(Duration::from_secs(1)).await;
    let (rx, url) = Receiver::start().await;
    // No round would run for an hour: only the shutdown's flush can send the span.
    let cfg = otlp::OtlpConfig {
        interval: Duration::from_secs(3600),
        ..otlp::OtlpConfig::new(&url)
    };
    let stop = CancellationToken::new();
    let task = otlp::start(e.svc.pool.clone(), cfg, stop.clone()).expect("exporter");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the exporter stopped in time")
        .expect("exporter ended");
    once_each(&rx.accepted(), &stored(&e.svc.pool).await);
    drained(&e.svc.pool, 1).await;
}

/// The lifecycle helper the CLI uses: nothing runs unless the environment asks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_helper_starts_only_when_configured() {
    let e = env().await;
    let exporter = otlp::Exporter::from_env(&e.svc.pool).expect("environment");
    assert_eq!(
        exporter.is_some(),
        otlp::from_env().expect("environment").is_some()
    );
    if let Some(x) = exporter {
        x.shutdown().await;
    }
}

#[test]
fn the_environment_follows_the_otlp_rules() {
    let cfg = |vars: &[(&str, &str)]| {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        otlp::from_vars(|k| vars.get(k).cloned())
    };
    assert!(cfg(&[]).expect("ok").is_none(), "no endpoint, no export");
    let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])
        .expect("ok")
        .expect("some");
    assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(c.service_name, "spool");
    assert_eq!(c.timeout, Duration::from_secs(10));
    let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c.example/otlp/")])
        .expect("ok")
        .expect("some");
    assert_eq!(c.endpoint, "https://c.example/otlp/v1/traces");
    // The per-signal URL wins and is used as is.
    let c = cfg(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://traces:4318/custom",
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod,service.name=from-attrs",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
    ])
    .expect("ok")
    .expect("some");
    assert_eq!(c.endpoint, "http://traces:4318/custom");
    assert_eq!(c.service_name, "from-attrs");
    assert_eq!(c.timeout, Duration::from_millis(2500));
    let c = cfg(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
        ("OTEL_SERVICE_NAME", "spool-eu"),
    ])
    .expect("ok")
    .expect("some");
    assert_eq!(c.service_name, "spool-eu");
    for off in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"), off]).expect("ok");
        assert!(c.is_none(), "{off:?}");
    }
    let bad = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]);
    assert!(bad.is_err(), "{bad:?}");
}
