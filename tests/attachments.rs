//! Attachments: uploads checked by their bytes, named in turns, sent to the model as images
//! (OpenAI data URLs, Anthropic image blocks) or inlined text, refused cleanly, and deleted with
//! their session. Real Postgres, the real blob store on disk, the fake provider over HTTP.

mod common;

use base64::Engine;
use common::fake_llm::{FakeLlm, Reply};
use common::files::{elf, multipart, png, upload, zip};
use common::{Env, Server, env, fast_worker};
use serde_json::{Value, json};
use spool::llm::config::Models;
use uuid::Uuid;

/// An env whose default model `eyes` (of `provider`) accepts images and whose model `blind`
/// does not, both served by `fake`.
async fn vision_env(fake: &FakeLlm, provider: &str) -> Env {
    let mut e = env().await;
    let table: toml::Table = toml::from_str(&format!(
        "default_model = \"eyes\"\n\
         [[models]]\nname = \"eyes\"\nprovider = \"{provider}\"\nbase_url = \"{url}\"\nvision = true\n\
         [[models]]\nname = \"blind\"\nprovider = \"openai\"\nbase_url = \"{url}\"\n",
        url = fake.base_url
    ))
    .expect("toml");
    e.settings.models = Models::from_toml(&table).expect("models");
    e
}

async fn new_session(s: &Server, model: &str) -> String {
    let (st, b) = s.post("/api/v1/sessions", json!({ "model": model })).await;
    assert_eq!(st, 201, "{b}");
    b["id"].as_str().expect("session id").to_owned()
}

async fn attach(s: &Server, session: &str, name: &str, bytes: &[u8]) -> String {
    let (st, b) = upload(s, session, name, bytes).await;
    assert_eq!(st, 201, "{b}");
    b["attachment_id"]
        .as_str()
        .expect("attachment id")
        .to_owned()
}

/// (attachment rows, blob rows, files under the blob directory)
async fn stored(e: &Env) -> (i64, i64, usize) {
    let (a, b): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM attachments), (SELECT count(*) FROM blobs)")
            .fetch_one(&e.svc.pool)
            .await
            .expect("counts");
    (a, b, files_under(&e.settings.data_dir.join("blobs")))
}

fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// Sends `input` as a turn and waits for it to finish.
async fn run_turn(s: &Server, session: &str, input: Value) -> Value {
    let (st, b) = s
        .post(
            &format!("/api/v1/sessions/{session}/turns"),
            json!({ "input": input }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let turn: Uuid = b["turn_id"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("turn");
    let job = s.wait(turn, 30).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    job
}

fn decode(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64")
}

/// The first request's user message (the turn's; the title job asks later).
fn user_message(fake: &FakeLlm) -> Value {
    let first = fake.requests().into_iter().next().expect("a request");
    first["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user").cloned())
        .expect("a user message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_and_a_text_file_reach_an_openai_model_byte_for_byte() {
    let fake = FakeLlm::start().await;
    fake.push_all([Reply::text("A chart and some notes."), Reply::text("Title")]);
    let e = vision_env(&fake, "openai").await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s, "eyes").await;
    let image = png();
    let (st, b) = upload(&s, &session, "chart.png", &image).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["name"], "chart.png");
    assert_eq!(b["media_type"], "image/png");
    assert_eq!(b["size"], image.len());
    let img = b["attachment_id"].as_str().expect("id").to_owned();
    let notes = "# Notes\nThe build is green.\n";
    let txt = attach(&s, &session, "notes.md", notes.as_bytes()).await;

    run_turn(
        &s,
        &session,
        json!([
            { "type": "text", "text": "What do these show?" },
            { "type": "image", "attachment_id": img },
            { "type": "file", "attachment_id": txt },
        ]),
    )
    .await;
    let user = user_message(&fake);
    let parts = user["content"].as_array().expect("content parts");
    let url = parts
        .iter()
        .find(|p| p["type"] == "image_url")
        .and_then(|p| p["image_url"]["url"].as_str())
        .expect("an image_url part");
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    assert_eq!(decode(b64), image, "the model got the uploaded bytes");
    let text = parts
        .iter()
        .find(|p| p["type"] == "text")
        .and_then(|p| p["text"].as_str())
        .expect("a text part");
    assert!(text.starts_with("What do these show?"), "{text}");
    assert!(
        text.contains(&format!("<file name=\"notes.md\">\n{notes}\n</file>")),
        "the text file is inlined with its name: {text}"
    );

    // The transcript records the files by name; the API streams their bytes back.
    let (_, m) = s.get(&format!("/api/v1/sessions/{session}/messages")).await;
    let names: Vec<&str> = m["messages"][0]["content"]["attachments"]
        .as_array()
        .expect("attachments on the user message")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["chart.png", "notes.md"]);
    let r = s
        .req(
            reqwest::Method::GET,
            &format!("/api/v1/sessions/{session}/attachments/{img}"),
        )
        .send()
        .await
        .expect("download");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.expect("bytes").to_vec(), image);
    w.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_model_gets_an_image_block() {
    let fake = FakeLlm::start().await;
    fake.push_all([Reply::text("A small gradient."), Reply::text("Title")]);
    let e = vision_env(&fake, "anthropic").await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s, "eyes").await;
    let image = png();
    let img = attach(&s, &session, "gradient.png", &image).await;
    run_turn(
        &s,
        &session,
        json!([{ "type": "image", "attachment_id": img }, { "type": "text", "text": "Describe it." }]),
    )
    .await;
    let user = user_message(&fake);
    let blocks = user["content"].as_array().expect("content blocks");
    let block = blocks
        .iter()
        .find(|b| b["type"] == "image")
        .expect("an image block");
    assert_eq!(block["source"]["type"], "base64");
    assert_eq!(block["source"]["media_type"], "image/png");
    let data = block["source"]["data"].as_str().expect("data");
    assert_eq!(decode(data), image);
    assert!(
        blocks
            .iter()
            .any(|b| b["type"] == "text" && b["text"] == "Describe it."),
        "{user}"
    );
    w.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_and_a_model_without_vision_are_refused_at_send() {
    let fake = FakeLlm::start().await;
    let e = vision_env(&fake, "openai").await;
    let s = e.serve(e.registry()).await;
    let blind = new_session(&s, "blind").await;
    let other = new_session(&s, "eyes").await;
    let img = attach(&s, &blind, "shot.png", &png()).await;
    let txt = attach(&s, &blind, "main.rs", b"fn main() {}\n").await;
    let elsewhere = attach(&s, &other, "theirs.png", &png()).await;
    let cases = [
        (
            json!([{ "type": "image", "attachment_id": img }]),
            422,
            "model_without_vision",
        ),
        (
            json!([{ "type": "image", "attachment_id": txt }]),
            422,
            "not_an_image",
        ),
        (
            json!([{ "type": "file", "attachment_id": Uuid::now_v7() }]),
            422,
            "unknown_attachment",
        ),
        (
            json!([{ "type": "file", "attachment_id": elsewhere }]),
            422,
            "unknown_attachment",
        ),
        (
            json!([{ "type": "file", "attachment_id": "not-an-id" }]),
            400,
            "bad_request",
        ),
        (
            json!([{ "type": "file", "attachment_id": txt, "x": 1 }]),
            400,
            "bad_request",
        ),
    ];
    for (i, (input, status, code)) in cases.into_iter().enumerate() {
        let (st, b) = s
            .post(
                &format!("/api/v1/sessions/{blind}/turns"),
                json!({ "input": input }),
            )
            .await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (status, Some(code)),
            "case {i}: {b}"
        );
        assert!(
            b["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (jobs, msgs): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM messages)")
            .fetch_one(&e.svc.pool)
            .await
            .expect("counts");
    assert_eq!((jobs, msgs), (0, 0), "a refused turn stores nothing");
    // A text file needs no vision, and naming a model that has it makes the image fine.
    let (st, b) = s
        .post(
            &format!("/api/v1/sessions/{blind}/turns"),
            json!({ "input": [{ "type": "file", "attachment_id": txt }] }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let (st, b) = s
        .post(
            &format!("/api/v1/sessions/{blind}/turns"),
            json!({ "input": [{ "type": "image", "attachment_id": img }], "model": "eyes" }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_the_right_4xx_and_store_nothing() {
    let mut e = env().await;
    e.settings.max_upload_bytes = 4096;
    let s = e.serve(e.registry()).await;
    let session = new_session(&s, "mock").await;
    let kept = attach(&s, &session, "ok.txt", b"fine\n").await;
    let before = stored(&e).await;
    assert_eq!(
        before,
        (1, 1, 1),
        "one good upload: a row, a registration, a file"
    );
    let mut text_as_png = b"just text, not a picture\n".to_vec();
    text_as_png.extend_from_slice(b"more text\n");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("tool.bin", elf(), 415, "unsupported_media_type"),
        ("shot.png", elf(), 415, "unsupported_media_type"),
        ("diagram.png", zip(), 415, "unsupported_media_type"),
        ("fake.png", text_as_png, 415, "unsupported_media_type"),
        (
            "latin1.txt",
            b"caf\xe9 cr\xe8me\n".to_vec(),
            415,
            "unsupported_media_type",
        ),
        ("big.txt", vec![b'a'; 5000], 413, "payload_too_large"),
        ("huge.txt", vec![b'a'; 200_000], 413, "payload_too_large"),
        ("empty.txt", Vec::new(), 400, "bad_request"),
    ];
    for (name, bytes, status, code) in cases {
        let (st, b) = upload(&s, &session, name, &bytes).await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}: {b}"
        );
        assert_eq!(b["error"]["field"], "file", "{name}: {b}");
        assert_eq!(stored(&e).await, before, "{name} stored nothing");
    }
    let (st, b) = upload(&s, &Uuid::now_v7().to_string(), "a.txt", b"hello").await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{b}"
    );
    // No `file` field, and no multipart at all.
    let (ct, body) = multipart("other", "a.txt", b"hello");
    let path = format!("/api/v1/sessions/{session}/attachments");
    let r = s
        .req(reqwest::Method::POST, &path)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let (st, b) = s.post(&path, json!({ "file": "x" })).await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{b}"
    );
    assert_eq!(
        stored(&e).await,
        before,
        "nothing was stored by any refused upload"
    );
    let (st, _) = s
        .get(&format!("/api/v1/sessions/{session}/attachments/{kept}"))
        .await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_deletes_its_attachments_and_their_bytes() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let gone = new_session(&s, "mock").await;
    let stays = new_session(&s, "mock").await;
    attach(&s, &gone, "a.png", &png()).await;
    attach(&s, &gone, "b.txt", b"bee\n").await;
    let kept = attach(&s, &stays, "c.txt", b"sea\n").await;
    assert_eq!(stored(&e).await, (3, 3, 3));
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT blob_key FROM attachments WHERE session_id = $1::uuid")
            .bind(&gone)
            .fetch_all(&e.svc.pool)
            .await
            .expect("keys");
    let r = s
        .req(reqwest::Method::DELETE, &format!("/api/v1/sessions/{gone}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        stored(&e).await,
        (1, 1, 1),
        "only the other session's file is left"
    );
    for key in keys {
        assert!(
            !e.settings.blobs.exists(&key).await.expect("head"),
            "{key} is gone"
        );
    }
    let (st, _) = s
        .get(&format!("/api/v1/sessions/{stays}/attachments/{kept}"))
        .await;
    assert_eq!(st, 200);
}
