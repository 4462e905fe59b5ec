//! REST v1 against a real server and Postgres: idempotency, errors, SSE resume, the http kind.

mod common;

use std::time::Duration;

use common::{env, fast_worker};
use reqwest::Method;
use serde_json::{Value, json};

async fn rows(pool: &sqlx::PgPool) -> (i64, i64, i64) {
    sqlx::query_as("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM job_events), (SELECT count(*) FROM job_keys)")
        .fetch_one(pool)
        .await
        .expect("counts")
}

#[tokio::test]
async fn idempotency_answers_201_then_200_then_409() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let body = json!({ "kind": "noop", "args": { "a": 1 }, "idempotency_key": "order-7" });
    let (st1, first) = s.post("/api/v1/jobs", body.clone()).await;
    assert_eq!(st1, 201, "{first}");
    let (st2, second) = s.post("/api/v1/jobs", body).await;
    assert_eq!(st2, 200, "{second}");
    assert_eq!(first["id"], second["id"]);
    let before = rows(&e.svc.pool).await;
    let (st3, err) = s
        .post(
            "/api/v1/jobs",
            json!({ "kind": "noop", "args": { "a": 2 }, "idempotency_key": "order-7" }),
        )
        .await;
    assert_eq!(st3, 409, "{err}");
    assert_eq!(err["error"]["code"], "idempotency_conflict");
    assert_eq!(rows(&e.svc.pool).await, before);
    assert_eq!(before.0, 1);
}

#[tokio::test]
async fn every_error_code_answers_json_and_changes_nothing() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let existing = s.enqueue("noop", json!({})).await;
    let (_, other_token) = {
        let p = spool::projects::ensure(&e.svc.pool, "other")
            .await
            .expect("project");
        let t = spool::projects::tokens::create(
            &e.svc.pool,
            p.id,
            spool::projects::tokens::Scope::Admin,
        )
        .await
        .expect("token");
        (p, t.secret)
    };
    let other_job = {
        let r = s
            .http
            .post(s.url("/api/v1/jobs"))
            .bearer_auth(&other_token)
            .json(&json!({ "kind": "noop", "args": {} }))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    let before = rows(&e.svc.pool).await;

    let raw = |body: &'static str| {
        s.req(Method::POST, "/api/v1/jobs")
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str, Option<&str>)> = vec![
        (raw("{not json"), 400, "bad_request", None),
        (
            raw(r#"{"kind":"noop","priority":1000}"#),
            400,
            "bad_request",
            Some("priority"),
        ),
        (
            raw(r#"{"kind":"noop","run_at":"tomorrow"}"#),
            400,
            "bad_request",
            Some("run_at"),
        ),
        (
            raw(r#"{"kind":"noop","surprise":1}"#),
            400,
            "bad_request",
            Some("surprise"),
        ),
        (
            raw(r#"{"kind":"sleep","args":{"ms":"long"}}"#),
            400,
            "bad_request",
            Some("args"),
        ),
        (
            raw(r#"{"kind":"http","args":{"url":"ftp://x"}}"#),
            400,
            "bad_request",
            Some("args"),
        ),
        (
            raw(r#"{"kind":"teleport","args":{}}"#),
            422,
            "unknown_kind",
            Some("kind"),
        ),
        (s.http.get(s.url("/api/v1/jobs")), 401, "unauthorized", None),
        (
            s.http.get(s.url("/api/v1/jobs")).bearer_auth("spool_nope"),
            401,
            "unauthorized",
            None,
        ),
        (
            s.req(
                Method::GET,
                &format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()),
            ),
            404,
            "not_found",
            None,
        ),
        (
            s.req(Method::GET, &format!("/api/v1/jobs/{other_job}")),
            404,
            "not_found",
            None,
        ),
        (
            s.req(Method::POST, &format!("/api/v1/jobs/{other_job}/cancel")),
            404,
            "not_found",
            None,
        ),
        (
            s.req(Method::GET, "/api/v1/jobs/not-a-uuid"),
            404,
            "not_found",
            None,
        ),
        (
            s.req(Method::GET, "/api/v1/jobs?limit=500"),
            400,
            "bad_request",
            Some("limit"),
        ),
        (
            s.req(Method::GET, "/api/v1/jobs?state=sleeping"),
            400,
            "bad_request",
            Some("state"),
        ),
        (
            s.req(
                Method::GET,
                &format!("/api/v1/jobs/{existing}/wait?timeout_s=61"),
            ),
            400,
            "bad_request",
            Some("timeout_s"),
        ),
        (
            s.req(Method::GET, &format!("/api/v1/jobs/{existing}/events"))
                .header("last-event-id", "x"),
            400,
            "bad_request",
            Some("Last-Event-ID"),
        ),
    ];
    for (i, (req, status, code, field)) in cases.into_iter().enumerate() {
        let r = req.send().await.expect("send");
        assert_eq!(r.status().as_u16(), status, "case {i}");
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|_| panic!("case {i}: body is not JSON"));
        assert_eq!(body["error"]["code"], code, "case {i}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "case {i}"
        );
        if let Some(f) = field {
            assert_eq!(body["error"]["field"], f, "case {i}: {body}");
        }
    }
    // 413: args over the 1 MiB default limit.
    let big = "x".repeat(1024 * 1024 + 10);
    let (st, body) = s
        .post(
            "/api/v1/jobs",
            json!({ "kind": "noop", "args": { "blob": big } }),
        )
        .await;
    assert_eq!(st, 413, "{body}");
    assert_eq!(body["error"]["field"], "args");
    let huge = "y".repeat(3 * 1024 * 1024);
    let (st, body) = s
        .post(
            "/api/v1/jobs",
            json!({ "kind": "noop", "args": { "blob": huge } }),
        )
        .await;
    assert_eq!(st, 413, "{body}");
    // 409 on retrying a queued job.
    let (st, body) = s
        .post(&format!("/api/v1/jobs/{existing}/retry"), json!({}))
        .await;
    assert_eq!(st, 409, "{body}");
    assert_eq!(
        rows(&e.svc.pool).await,
        before,
        "a rejected request changed stored rows"
    );
}

async fn read_sse(resp: reqwest::Response, max: usize) -> Vec<common::sse::Frame> {
    common::sse::read(resp, max, |_| false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_after_a_dropped_connection_without_loss_or_duplicates() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let id = s.enqueue("sleep", json!({ "ms": 1500 })).await;
    let path = format!("/api/v1/jobs/{id}/events");
    let first = s
        .req(Method::GET, &path)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("sse");
    assert_eq!(first.status(), 200);
    let head = read_sse(first, 5).await;
    assert_eq!(head.len(), 5);
    let last = head[4].0;
    let rest_resp = s
        .req(Method::GET, &path)
        .header("accept", "text/event-stream")
        .header("last-event-id", last.to_string())
        .send()
        .await
        .expect("sse resume");
    let rest = tokio::time::timeout(Duration::from_secs(20), read_sse(rest_resp, 10_000))
        .await
        .expect("stream did not end after the terminal event");
    w.shutdown(Duration::from_secs(1)).await;
    let all: Vec<i64> = head.iter().chain(rest.iter()).map(|f| f.0).collect();
    let expected: Vec<i64> = (1..=all.len() as i64).collect();
    assert_eq!(
        all, expected,
        "seqs must be contiguous, in order, without duplicates"
    );
    let (_, kind, data) = rest.last().expect("tail");
    assert_eq!(kind, "state");
    assert_eq!(data["state"], "succeeded");
    assert!(
        rest.iter().filter(|f| f.1 == "progress").count()
            + head.iter().filter(|f| f.1 == "progress").count()
            == 10
    );
    // The JSON form of the same log, when asked for explicitly.
    let json_page: Value = s
        .req(
            Method::GET,
            &format!("/api/v1/jobs/{id}/events?after={last}"),
        )
        .header("accept", "application/json")
        .send()
        .await
        .expect("json")
        .json()
        .await
        .expect("json body");
    let json_seqs: Vec<i64> = json_page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_i64().unwrap_or(-1))
        .collect();
    let sse_seqs: Vec<i64> = rest.iter().map(|f| f.0).collect();
    assert_eq!(json_seqs, sse_seqs);
    assert_eq!(json_page["next"], json!(all.last()));
    // A reader that resumes after the end gets nothing and the stream closes.
    let end = s
        .req(Method::GET, &path)
        .header("accept", "text/event-stream")
        .header("last-event-id", all.last().expect("last").to_string())
        .send()
        .await
        .expect("sse");
    let none = tokio::time::timeout(Duration::from_secs(5), read_sse(end, 10))
        .await
        .expect("closed");
    assert!(none.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_kind_signs_requests_honours_retry_after_and_fails_4xx_without_retry() {
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::{Arc, Mutex};
    let e = env().await;
    let secret = spool::projects::signing_secret(&e.svc.pool, e.project)
        .await
        .expect("secret");
    type Call = (std::time::Instant, bool, Option<String>);
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let seen = Arc::clone(&calls);
    let target = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen = Arc::clone(&seen);
                let secret = secret.clone();
                async move {
                    let sig = headers
                        .get("spool-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let t: i64 = sig
                        .split(',')
                        .find_map(|p| p.strip_prefix("t="))
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    let valid = sig == spool::kinds::http::signature(&secret, t, &body);
                    let traceparent = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let n = {
                        let mut calls = seen.lock().expect("lock");
                        calls.push((std::time::Instant::now(), valid, traceparent));
                        calls.len()
                    };
                    if n == 1 {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "1")],
                            "busy".to_owned(),
                        )
                    } else {
                        (
                            StatusCode::OK,
                            [("content-type", "application/json")],
                            String::from_utf8_lossy(&body).into_owned(),
                        )
                    }
                }
            }),
        )
        .route(
            "/missing",
            axum::routing::post(|| async { (StatusCode::NOT_FOUND, "no such hook") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, target).await });
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let ok = s
        .enqueue(
            "http",
            json!({ "url": format!("http://{addr}/hook"), "body": { "order": 42 } }),
        )
        .await;
    let bad = s
        .enqueue(
            "http",
            json!({ "url": format!("http://{addr}/missing"), "body": {} }),
        )
        .await;
    let ok_job = s.wait(ok, 30).await;
    let bad_job = s.wait(bad, 30).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(ok_job["state"], "succeeded", "{ok_job}");
    assert_eq!(ok_job["attempt"], 2);
    assert_eq!(ok_job["result"]["status"], 200);
    assert_eq!(ok_job["result"]["body"], json!({ "order": 42 }));
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2);
    assert!(
        calls.iter().all(|c| c.1),
        "a request carried an invalid signature"
    );
    assert!(
        calls[1].0 - calls[0].0 >= Duration::from_millis(950),
        "Retry-After was not honoured"
    );
    // Each attempt's call carries that attempt's span as its `traceparent`.
    let (st, trace) = s.get(&format!("/api/v1/jobs/{ok}/trace")).await;
    assert_eq!(st, 200, "{trace}");
    for (i, call) in calls.iter().enumerate() {
        let span = trace["spans"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["attempt"] == i as i64 + 1))
            .unwrap_or_else(|| panic!("no span for attempt {}: {trace}", i + 1));
        let want = format!(
            "00-{}-{}-01",
            trace["trace_id"].as_str().expect("trace id"),
            span["span_id"].as_str().expect("span id")
        );
        assert_eq!(call.2.as_deref(), Some(want.as_str()), "attempt {}", i + 1);
    }
    assert_eq!(bad_job["state"], "failed", "{bad_job}");
    assert_eq!(bad_job["attempt"], 1, "a 404 must not be retried");
    assert!(
        bad_job["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("404")
    );
}

#[tokio::test]
async fn scopes_are_enforced_and_a_revoked_token_stops_working_at_once() {
    use spool::projects::tokens::{self, Scope};
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let read = tokens::create(&e.svc.pool, e.project, Scope::Read)
        .await
        .expect("token");
    let get = |t: String| {
        let s = &s;
        async move {
            s.http
                .get(s.url("/api/v1/jobs"))
                .bearer_auth(t)
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(read.secret.clone()).await, 200);
    let r = s
        .http
        .post(s.url("/api/v1/jobs"))
        .bearer_auth(&read.secret)
        .json(&json!({ "kind": "noop" }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 403);
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&e.svc.pool)
        .await
        .expect("count");
    assert_eq!(jobs, 0, "a read token enqueued a job");
    assert!(
        tokens::revoke(&e.svc.pool, &read.secret)
            .await
            .expect("revoke")
    );
    assert_eq!(get(read.secret.clone()).await, 401);
    // Revoking by id works too, and a second revoke finds nothing.
    let other = tokens::create(&e.svc.pool, e.project, Scope::Write)
        .await
        .expect("token");
    assert!(
        tokens::revoke(&e.svc.pool, &other.id.to_string())
            .await
            .expect("revoke")
    );
    assert!(
        !tokens::revoke(&e.svc.pool, &other.id.to_string())
            .await
            .expect("revoke")
    );
    assert_eq!(get(other.secret).await, 401);
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_all(&e.svc.pool)
        .await
        .expect("hashes");
    assert!(
        stored.iter().all(|h| h.len() == 32),
        "tokens must be stored as SHA-256 hashes"
    );
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens WHERE prefix = $1 AND token_hash = convert_to($2, 'UTF8')",
    )
    .bind(&read.secret[..12])
    .bind(&read.secret)
    .fetch_one(&e.svc.pool)
    .await
    .expect("count");
    assert_eq!(plain, 0);
}
