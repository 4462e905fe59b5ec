//! Attaching an image on the chat page in headless Chromium: the file picker uploads it, the sent
//! message shows its thumbnail (a real, decoded image served by the signed-in route), the link
//! opens the full image, and the model receives the bytes.

mod common;

use std::time::Duration;

use base64::Engine;
use common::browser::{Browser, WAIT, screenshot, sign_in, wait_for, wait_until};
use common::fake_llm::{FakeLlm, Reply};
use common::files::png;
use common::{env, fast_worker};
use fantoccini::Locator;
use fantoccini::key::Key;
use serde_json::{Value, json};
use spool::llm::config::Models;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picked_image_shows_as_a_thumbnail_in_the_sent_message() {
    let fake = FakeLlm::start().await;
    fake.push_all([Reply::text("A gradient."), Reply::text("Title")]);
    let mut e = env().await;
    let table: toml::Table = toml::from_str(&format!(
        "default_model = \"eyes\"\n[[models]]\nname = \"eyes\"\nprovider = \"openai\"\nbase_url = \"{}\"\nvision = true\n",
        fake.base_url
    ))
    .expect("toml");
    e.settings.models = Models::from_toml(&table).expect("models");
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let image = png();
    let path = common::temp_dir("upload").join("gradient.png");
    std::fs::write(&path, &image).expect("image file");

    let b = Browser::start().await;
    sign_in(&b, &s).await;
    b.goto(&s.url("/chats")).await.expect("chats");
    wait_for(&b, "#new-chat", WAIT)
        .await
        .click()
        .await
        .expect("new chat");
    wait_for(&b, "#input", WAIT).await;
    let picker = wait_for(&b, "#file", WAIT).await;
    picker
        .send_keys(&path.display().to_string())
        .await
        .expect("pick the file");
    let chip = wait_for(&b, "#attached .chip[data-id]", WAIT).await;
    assert!(chip.text().await.expect("chip").contains("gradient.png"));
    let input = wait_for(&b, "#input", WAIT).await;
    input.send_keys("What is this?").await.expect("type");
    input
        .send_keys(&Key::Enter.to_string())
        .await
        .expect("send");

    let thumb = wait_for(&b, "#turns .msg-user img.thumb", WAIT).await;
    let loaded = wait_until(&b, WAIT, "the thumbnail to load", |c| async move {
        let w = c
            .execute(
                "return document.querySelector('#turns .msg-user img.thumb').naturalWidth",
                vec![],
            )
            .await
            .ok()?;
        w.as_u64().filter(|w| *w > 0)
    })
    .await;
    assert_eq!(loaded, 24, "the thumbnail is the uploaded 24×24 image");
    assert_eq!(
        thumb.attr("alt").await.expect("alt").as_deref(),
        Some("gradient.png")
    );
    let link = b
        .find(Locator::Css("#turns .msg-user a.thumb-link"))
        .await
        .expect("thumbnail link");
    let href = link.attr("href").await.expect("href").expect("an href");
    assert_eq!(
        link.attr("target").await.expect("target").as_deref(),
        Some("_blank")
    );
    screenshot(&b, "chat_attachment").await;

    // The model got the same bytes.
    let got = wait_until(
        &b,
        Duration::from_secs(20),
        "the model request",
        |_| async { fake.requests().into_iter().next() },
    )
    .await;
    let url = got["messages"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_array())
        .and_then(|parts| parts.iter().find(|p| p["type"] == "image_url"))
        .and_then(|p| p["image_url"]["url"].as_str())
        .map(str::to_owned)
        .expect("an image part");
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .expect("png data url");
    let sent = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("b64");
    assert_eq!(sent, image);

    // Clicking opens the full image: the link's target serves the PNG to this signed-in browser.
    b.goto(&s.url(&href)).await.expect("open the image");
    let kind: Value = b
        .execute("return document.contentType", vec![])
        .await
        .expect("content type");
    assert_eq!(kind, json!("image/png"));
    b.close().await;
    w.shutdown(Duration::from_secs(1)).await;
}
