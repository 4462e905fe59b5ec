//! A real S3-compatible server for blob tests: moto in server mode, on a free port, stopped when
//! dropped. A machine without it fails the test with the command that installs it (`.ci/run`
//! does), never skips.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    child: Child,
}

const INSTALL: &str = "install it with: pip install 'moto[server]' (.ci/run does this)";

impl Moto {
    /// Starts `moto_server` (or `python3 -m moto.server`) and waits until it answers.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
            .to_string();
        let args = ["-H", "127.0.0.1", "-p", port.as_str()];
        let spawn = |program: &str, pre: &[&str]| {
            Command::new(program)
                .args(pre)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let child = spawn("moto_server", &[])
            .or_else(|_| spawn("python3", &["-m", "moto.server"]))
            .unwrap_or_else(|e| panic!("the S3 tests need moto's server mode, which could not be started ({e}); {INSTALL}"));
        let mut moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "the moto server exited at once ({status}); is moto[server] installed? {INSTALL}"
                );
            }
            if http.get(&moto.endpoint).send().await.is_ok() {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "the moto server did not answer on {} within 60 s",
                moto.endpoint
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub async fn create_bucket(&self, name: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .expect("create bucket");
        assert!(
            r.status().is_success(),
            "creating bucket {name}: {}",
            r.status()
        );
    }

    /// Every object in `bucket` under `prefix` with its size, as the server lists them (moto
    /// refuses unsigned reads of private objects, but lists a bucket to anyone).
    pub async fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let r = reqwest::Client::new()
            .get(format!(
                "{}/{bucket}?list-type=2&prefix={}",
                self.endpoint,
                url::form_urlencoded::byte_serialize(prefix.as_bytes()).collect::<String>()
            ))
            .send()
            .await
            .expect("list objects");
        assert!(r.status().is_success(), "listing {bucket}: {}", r.status());
        let xml = r.text().await.expect("listing");
        let field = |item: &str, tag: &str| {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            item.split(&open)
                .nth(1)?
                .split(&close)
                .next()
                .map(str::to_owned)
        };
        xml.split("<Contents>")
            .skip(1)
            .filter_map(|item| {
                let key = field(item, "Key")?;
                let size = field(item, "Size")?.parse().ok()?;
                Some((key, size))
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
