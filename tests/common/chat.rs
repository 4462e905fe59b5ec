//! Chat test fixtures: an environment whose model is the fake OpenAI-compatible server, and
//! replies that stream slowly enough to watch.

use std::path::PathBuf;

use spool::llm::config::Models;
use spool::tools::Workspace;
use uuid::Uuid;

use super::fake_llm::{Chunk, FakeLlm, Reply};
use super::{Env, env};

/// A fresh workspace directory holding `notes.txt`.
pub fn workspace() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spool-ws-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("workspace");
    std::fs::write(dir.join("notes.txt"), "hello spool\n").expect("file");
    dir
}

/// An env whose only model is `fake` (served by `fake`) and with a workspace `demo`.
pub async fn agent_env(fake: &FakeLlm) -> Env {
    let mut e = env().await;
    let table: toml::Table = toml::from_str(&format!(
        "default_model = \"fake\"\n[[models]]\nname = \"fake\"\nprovider = \"openai\"\nbase_url = \"{}\"\ncontext_window = 8000\n",
        fake.base_url
    ))
    .expect("toml");
    e.settings.models = Models::from_toml(&table).expect("models");
    e.settings.workspaces = vec![Workspace {
        name: "demo".into(),
        root: workspace(),
        allow_commands: false,
    }];
    e
}

/// A reply of `words` words (`w0 w1 …`), one chunk every `delay_ms`.
pub fn slow_text(words: usize, delay_ms: u64) -> Reply {
    Reply::Stream {
        chunks: (0..words).map(|i| Chunk::Text(format!("w{i} "))).collect(),
        usage: None,
        delay_ms,
    }
}

/// A `spool worker` process configured for the fake model and the demo workspace.
pub async fn worker_process(e: &Env, fake: &FakeLlm) -> tokio::process::Child {
    let dir = std::env::temp_dir().join(format!("spool-cfg-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let root = e.settings.workspaces[0].root.display().to_string();
    let toml = format!(
        "default_model = \"fake\"\n[[models]]\nname = \"fake\"\nprovider = \"openai\"\nbase_url = \"{}\"\n\n[[workspaces]]\nname = \"demo\"\nroot = \"{root}\"\n",
        fake.base_url
    );
    let cfg = dir.join("spool.toml");
    std::fs::write(&cfg, toml).expect("config");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .arg("worker")
        .arg("--config")
        .arg(&cfg)
        .env("DATABASE_URL", &e.db.url)
        .env("SPOOL_LEASE_S", "2")
        .env("SPOOL_HTTP_ALLOW_LOOPBACK", "true")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker")
}
