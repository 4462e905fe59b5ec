//! Where workflows come from, in order: the built-in catalog, the project's `workflows/`
//! directory, then scripts uploaded over REST; a later source's script replaces an earlier one of
//! the same name. Every file is validated when listed (its metadata read without running its
//! default export); an invalid one is listed with its error, logged once, and cannot be run.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::engine::{self, Meta, Sandbox};
use super::{Settings, store};

/// The built-in scripts.
const BUILTINS: [(&str, &str); 3] = [
    ("deep-research", include_str!("builtins/deep-research.js")),
    ("review-code", include_str!("builtins/review-code.js")),
    ("find-issues", include_str!("builtins/find-issues.js")),
];

/// One workflow of the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    /// `builtin`, `directory` or `upload`.
    pub origin: &'static str,
    pub meta: Option<Meta>,
    /// Why the file cannot be run.
    pub error: Option<String>,
    #[serde(skip)]
    pub source: String,
}

/// Whether `name` may name a workflow: 1–64 of a–z, 0–9, `-` and `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Validation results by the SHA-256 of the source.
type Seen = Mutex<HashMap<[u8; 32], Result<Meta, String>>>;

/// Checks a script: `Ok(meta)` or the reason it is invalid. Results are remembered by content.
pub async fn validate(source: &str, sandbox: Sandbox) -> Result<Meta, String> {
    static SEEN: OnceLock<Seen> = OnceLock::new();
    let hash: [u8; 32] = Sha256::digest(source.as_bytes()).into();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(r) = seen.lock().ok().and_then(|m| m.get(&hash).cloned()) {
        return r;
    }
    // Loading runs the file's top-level code: short limits, on a blocking thread.
    let limits = Sandbox {
        memory_bytes: sandbox.memory_bytes,
        cpu: sandbox.cpu.min(std::time::Duration::from_secs(1)),
    };
    let owned = source.to_owned();
    let r = tokio::task::spawn_blocking(move || engine::inspect(&owned, limits))
        .await
        .unwrap_or_else(|e| Err(format!("validation stopped: {e}")));
    if let Ok(mut m) = seen.lock() {
        m.insert(hash, r.clone());
    }
    r
}

async fn entry(name: String, origin: &'static str, source: String, s: &Settings) -> Entry {
    let (meta, error) = match validate(&source, s.sandbox()).await {
        Ok(m) => (Some(m), None),
        Err(e) => {
            tracing::warn!(workflow = %name, origin, error = %e, "invalid workflow skipped");
            (None, Some(e))
        }
    };
    Entry {
        name,
        origin,
        meta,
        error,
        source,
    }
}

/// Every workflow the project can see, by name.
pub async fn list(
    pool: &PgPool,
    project_id: Uuid,
    s: &Settings,
) -> Result<Vec<Entry>, sqlx::Error> {
    let mut sources: Vec<(String, &'static str, String)> = BUILTINS
        .iter()
        .map(|(n, src)| ((*n).to_owned(), "builtin", (*src).to_owned()))
        .collect();
    if let Ok(dir) = std::fs::read_dir(&s.dir) {
        let mut files: Vec<_> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for path in files {
            let Some(name) = path
                .extension()
                .filter(|x| *x == "js")
                .and_then(|_| path.file_stem())
                .and_then(|n| n.to_str())
            else {
                continue;
            };
            match std::fs::read_to_string(&path) {
                Ok(src) => sources.push((name.to_owned(), "directory", src)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable workflow file")
                }
            }
        }
    }
    for (name, src) in store::files(pool, project_id).await? {
        sources.push((name, "upload", src));
    }
    let mut out: Vec<Entry> = Vec::new();
    for (name, origin, src) in sources {
        let mut e = entry(name, origin, src, s).await;
        if !valid_name(&e.name) && e.error.is_none() {
            e.error = Some("the file name must be 1–64 of a–z, 0–9, - and _".into());
            e.meta = None;
        }
        out.retain(|x| x.name != e.name);
        out.push(e);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The workflow named `name`, valid or not.
pub async fn find(
    pool: &PgPool,
    project_id: Uuid,
    s: &Settings,
    name: &str,
) -> Result<Option<Entry>, sqlx::Error> {
    Ok(list(pool, project_id, s)
        .await?
        .into_iter()
        .find(|e| e.name == name))
}
