//! Blobs in S3: with `blob_url = s3://bucket/prefix` pointing at a real S3-compatible server
//! (moto, started here), uploads land under the prefix, read back through the API, offloaded
//! results go there too, and deleting the session deletes the objects.

mod common;

use std::time::Duration;

use common::files::{png, upload};
use common::moto::Moto;
use common::{env, fast_worker};
use serde_json::{Value, json};
use spool::config::{FileConfig, Overrides, Settings};
use spool::worker::JobContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_reads_offloads_and_deletes_go_through_s3() {
    let moto = Moto::start().await;
    moto.create_bucket("spool-test").await;
    let mut e = env().await;
    let file: FileConfig = toml::from_str(&format!(
        "blob_url = \"s3://spool-test/blobs/here\"\n\
         [blob_options]\n\
         aws_endpoint = \"{}\"\n\
         aws_allow_http = true\n\
         aws_region = \"us-east-1\"\n\
         aws_access_key_id = \"test\"\n\
         aws_secret_access_key = \"test\"\n",
        moto.endpoint
    ))
    .expect("toml");
    let over = Overrides {
        database_url: Some(e.db.url.clone()),
        data_dir: Some(e.settings.data_dir.clone()),
        ..Overrides::default()
    };
    e.settings = Settings::resolve(over, file).expect("settings");
    assert!(
        e.settings.blobs.location().starts_with("s3://spool-test/"),
        "{:?}",
        e.settings.blobs
    );

    let big = "s".repeat(100_000);
    let registry = e.registry().register("big", move |_ctx: JobContext| {
        let big = big.clone();
        async move { Ok(json!({ "data": big })) }
    });
    let s = e.serve(registry.clone()).await;
    let w = e.worker(registry, fast_worker()).await;
    let (_, b) = s.post("/api/v1/sessions", json!({})).await;
    let session = b["id"].as_str().expect("session").to_owned();
    let image = png();
    let (st, b) = upload(&s, &session, "photo.png", &image).await;
    assert_eq!(st, 201, "{b}");
    let id = b["attachment_id"].as_str().expect("id").to_owned();
    let key: String = sqlx::query_scalar("SELECT blob_key FROM attachments WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&e.svc.pool)
        .await
        .expect("row");
    // The object is in the bucket, under the prefix, and it is the only one.
    let object = format!("blobs/here/{key}");
    assert_eq!(
        moto.objects("spool-test", "").await,
        [(object.clone(), image.len() as u64)]
    );
    let r = s
        .req(
            reqwest::Method::GET,
            &format!("/api/v1/sessions/{session}/attachments/{id}"),
        )
        .send()
        .await
        .expect("download");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.expect("bytes").to_vec(), image);

    // A large result is offloaded to the same bucket and resolved by the API.
    let job = s.enqueue("big", json!({})).await;
    let done = s.wait(job, 30).await;
    assert_eq!(done["result"], json!({ "data": "s".repeat(100_000) }));
    let result: Value = sqlx::query_scalar("SELECT result FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&e.svc.pool)
        .await
        .expect("result");
    let result_key = spool::store::reference_key(&result)
        .expect("offloaded")
        .to_owned();
    let stored = e
        .settings
        .blobs
        .get(&result_key)
        .await
        .expect("the result object");
    assert_eq!(
        serde_json::from_slice::<Value>(&stored).expect("json"),
        done["result"]
    );
    let listed = moto.objects("spool-test", "blobs/here/").await;
    assert!(
        listed.contains(&(format!("blobs/here/{result_key}"), stored.len() as u64)),
        "{listed:?}"
    );

    let r = s
        .req(
            reqwest::Method::DELETE,
            &format!("/api/v1/sessions/{session}"),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        moto.objects("spool-test", "").await,
        [(format!("blobs/here/{result_key}"), stored.len() as u64)],
        "the attachment's object is gone; the job's result stays"
    );
    assert!(!e.settings.blobs.exists(&key).await.expect("head"));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM blobs WHERE key = $1")
        .bind(&key)
        .fetch_one(&e.svc.pool)
        .await
        .expect("count");
    assert_eq!(rows, 0);
    w.shutdown(Duration::from_secs(1)).await;
}
