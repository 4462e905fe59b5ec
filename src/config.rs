//! One typed configuration. Each setting comes from its command-line flag, else its environment
//! variable, else `spool.toml`, else the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::housekeeping::{Housekeeping, Retention};
use crate::llm::config::Models;
use crate::logging::LogFormat;
use crate::queue::backoff::Backoff;
use crate::store::Blobs;
use crate::tools::Workspace;
use crate::worker::WorkerConfig;

/// Settings as read from `spool.toml`: the same keys as the flags, every one optional.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    #[serde(flatten)]
    pub values: Overrides,
    /// Every key in the file; unknown ones (neither settings nor later features' sections) are
    /// warned about.
    #[serde(flatten)]
    pub other: toml::Table,
    /// Where the file was read from, for messages.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// Keys a `spool.toml` may hold besides the settings: sections later features read.
const SECTIONS: [&str; 6] = [
    "models",
    "workspaces",
    "default_model",
    "subagents",
    "blob_options",
    "workflows",
];

/// Errors reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl FileConfig {
    /// Loads `explicit` (an error if missing), else the first of `candidates` that exists.
    pub fn load(explicit: Option<&Path>, candidates: &[PathBuf]) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match candidates.iter().find(|p| p.is_file()) {
                Some(p) => p.clone(),
                None => return Ok(Self::default()),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut cfg: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        cfg.path = Some(path);
        Ok(cfg)
    }

    /// Keys that are neither settings nor known sections: the caller warns about them once
    /// logging is set up (the file itself may choose the log format).
    pub fn unknown_keys(&self) -> Vec<String> {
        self.other
            .keys()
            .filter(|k| !Overrides::KEYS.contains(&k.as_str()) && !SECTIONS.contains(&k.as_str()))
            .cloned()
            .collect()
    }
}

/// A configured secret: used, compared, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The resolved settings every role uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub concurrency: usize,
    pub queues: Vec<String>,
    pub lease: Duration,
    pub shutdown_grace: Duration,
    pub max_args_bytes: usize,
    pub db_pool: u32,
    pub http_allow_loopback: bool,
    pub http_allow_private: bool,
    pub backoff: Backoff,
    /// Models sessions may use (`default_model`, `[[models]]`); only `mock` when none are set.
    pub models: Models,
    /// Roots file tools may read (`[[workspaces]]`).
    pub workspaces: Vec<Workspace>,
    /// Limits on subagents (`[subagents]`).
    pub subagents: crate::agent::subagents::Limits,
    /// Workflow scripts: their directory, sandbox limits, default budget, cache TTL (`[workflows]`).
    pub workflows: crate::workflow::Settings,
    /// Share of a model's context window the last prompt may fill before compaction.
    pub compaction_share: f64,
    /// Bearer token `/metrics` requires; without one, only loopback may scrape.
    pub metrics_token: Option<Secret>,
    /// Extra address serving only `/metrics` (how a `spool worker` is scraped).
    pub metrics_listen: Option<SocketAddr>,
    /// Text or JSON lines on stderr.
    pub log_format: LogFormat,
    /// Where blobs go: `<data_dir>/blobs`, or the store `blob_url` names.
    pub blobs: Blobs,
    /// Largest accepted attachment, in bytes.
    pub max_upload_bytes: usize,
    /// The orphan sweep and retention pruning every worker takes part in.
    pub housekeeping: Housekeeping,
    /// Each running job's events are written at most once per this long.
    pub event_window: Duration,
}

/// One layer of settings: the command line and environment (clap merges the two), or the file.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub concurrency: Option<usize>,
    pub queues: Option<Vec<String>>,
    pub lease_s: Option<u64>,
    pub shutdown_grace_s: Option<u64>,
    pub max_args_bytes: Option<usize>,
    pub db_pool: Option<u32>,
    pub http_allow_loopback: Option<bool>,
    pub http_allow_private: Option<bool>,
    pub retry_base_ms: Option<u64>,
    pub retry_max_s: Option<u64>,
    pub compaction_share: Option<f64>,
    pub metrics_token: Option<String>,
    pub metrics_listen: Option<String>,
    pub log_format: Option<String>,
    pub blob_url: Option<String>,
    pub max_upload_bytes: Option<usize>,
    pub offload_bytes: Option<usize>,
    pub orphan_grace_s: Option<u64>,
    pub retain_days: Option<u32>,
    pub retain_events_days: Option<u32>,
    pub retain_spans_days: Option<u32>,
    pub housekeeping_interval_s: Option<u64>,
    pub event_window_ms: Option<u64>,
}

impl Overrides {
    /// The setting names, as written in `spool.toml`.
    pub const KEYS: [&str; 26] = [
        "compaction_share",
        "database_url",
        "data_dir",
        "listen",
        "concurrency",
        "queues",
        "lease_s",
        "shutdown_grace_s",
        "max_args_bytes",
        "db_pool",
        "http_allow_loopback",
        "http_allow_private",
        "retry_base_ms",
        "retry_max_s",
        "metrics_token",
        "metrics_listen",
        "log_format",
        "blob_url",
        "max_upload_bytes",
        "offload_bytes",
        "orphan_grace_s",
        "retain_days",
        "retain_events_days",
        "retain_spans_days",
        "housekeeping_interval_s",
        "event_window_ms",
    ];

    /// This layer, with gaps filled from `below`.
    pub fn or(self, below: Self) -> Self {
        Self {
            database_url: self.database_url.or(below.database_url),
            data_dir: self.data_dir.or(below.data_dir),
            listen: self.listen.or(below.listen),
            concurrency: self.concurrency.or(below.concurrency),
            queues: self.queues.or(below.queues),
            lease_s: self.lease_s.or(below.lease_s),
            shutdown_grace_s: self.shutdown_grace_s.or(below.shutdown_grace_s),
            max_args_bytes: self.max_args_bytes.or(below.max_args_bytes),
            db_pool: self.db_pool.or(below.db_pool),
            http_allow_loopback: self.http_allow_loopback.or(below.http_allow_loopback),
            http_allow_private: self.http_allow_private.or(below.http_allow_private),
            retry_base_ms: self.retry_base_ms.or(below.retry_base_ms),
            retry_max_s: self.retry_max_s.or(below.retry_max_s),
            compaction_share: self.compaction_share.or(below.compaction_share),
            metrics_token: self.metrics_token.or(below.metrics_token),
            metrics_listen: self.metrics_listen.or(below.metrics_listen),
            log_format: self.log_format.or(below.log_format),
            blob_url: self.blob_url.or(below.blob_url),
            max_upload_bytes: self.max_upload_bytes.or(below.max_upload_bytes),
            offload_bytes: self.offload_bytes.or(below.offload_bytes),
            orphan_grace_s: self.orphan_grace_s.or(below.orphan_grace_s),
            retain_days: self.retain_days.or(below.retain_days),
            retain_events_days: self.retain_events_days.or(below.retain_events_days),
            retain_spans_days: self.retain_spans_days.or(below.retain_spans_days),
            housekeeping_interval_s: self
                .housekeeping_interval_s
                .or(below.housekeeping_interval_s),
            event_window_ms: self.event_window_ms.or(below.event_window_ms),
        }
    }
}

impl Settings {
    /// Layers `over` (flags and env) on `file` on the defaults, and checks the result.
    pub fn resolve(over: Overrides, file: FileConfig) -> Result<Self, ConfigError> {
        let v = over.or(file.values);
        let models = Models::from_toml(&file.other).map_err(|message| ConfigError::Invalid {
            key: "models",
            message,
        })?;
        let workspaces: Vec<Workspace> = match file.other.get("workspaces") {
            Some(w) => w
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    key: "workspaces",
                    message: e.to_string(),
                })?,
            None => Vec::new(),
        };
        let subagents = match file.other.get("subagents") {
            Some(t) => t
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    key: "subagents",
                    message: e.to_string(),
                })?,
            None => Default::default(),
        };
        let workflows = match file.other.get("workflows") {
            Some(t) => t
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    key: "workflows",
                    message: e.to_string(),
                })?,
            None => Default::default(),
        };
        let listen_raw = v.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_raw.parse().map_err(|e| ConfigError::Invalid {
            key: "listen",
            message: format!("`{listen_raw}` is not host:port ({e})"),
        })?;
        let event_window = Duration::from_millis(v.event_window_ms.unwrap_or(30));
        if !(Duration::from_millis(15)..=Duration::from_secs(1)).contains(&event_window) {
            return Err(ConfigError::Invalid {
                key: "event_window_ms",
                message: "must be between 15 and 1000".into(),
            });
        }
        let concurrency = v.concurrency.unwrap_or(16);
        if concurrency == 0 {
            return Err(ConfigError::Invalid {
                key: "concurrency",
                message: "must be at least 1".into(),
            });
        }
        let metrics_listen = match v.metrics_listen.filter(|l| !l.is_empty()) {
            Some(raw) => Some(raw.parse().map_err(|e| ConfigError::Invalid {
                key: "metrics_listen",
                message: format!("`{raw}` is not host:port ({e})"),
            })?),
            None => None,
        };
        let log_format = match v.log_format {
            Some(raw) => raw.parse().map_err(|message| ConfigError::Invalid {
                key: "log_format",
                message,
            })?,
            None => LogFormat::default(),
        };
        let data_dir = v.data_dir.unwrap_or_else(|| PathBuf::from(".spool"));
        let blobs = blob_store(
            v.blob_url.as_deref(),
            &data_dir,
            &file.other,
            v.offload_bytes,
        )?;
        let days = |d: Option<u32>| {
            d.filter(|d| *d > 0)
                .map(|d| Duration::from_secs(u64::from(d) * 86_400))
        };
        let jobs = days(v.retain_days);
        let housekeeping = Housekeeping {
            interval: Duration::from_secs(v.housekeeping_interval_s.unwrap_or(600).max(1)),
            orphan_grace: Duration::from_secs(v.orphan_grace_s.unwrap_or(3600)),
            retain: Retention {
                jobs,
                events: days(v.retain_events_days).or(jobs),
                spans: days(v.retain_spans_days).or(jobs),
            },
        };
        Ok(Self {
            database_url: v.database_url.filter(|u| !u.is_empty()),
            data_dir,
            listen,
            concurrency,
            queues: v.queues.unwrap_or_else(|| vec!["default".into()]),
            lease: Duration::from_secs(v.lease_s.unwrap_or(30).max(1)),
            shutdown_grace: Duration::from_secs(v.shutdown_grace_s.unwrap_or(30)),
            max_args_bytes: v.max_args_bytes.unwrap_or(1024 * 1024),
            db_pool: v.db_pool.unwrap_or(20).max(2),
            http_allow_loopback: v.http_allow_loopback.unwrap_or(false),
            http_allow_private: v.http_allow_private.unwrap_or(false),
            backoff: Backoff {
                base: Duration::from_millis(v.retry_base_ms.unwrap_or(1000)),
                max: Duration::from_secs(v.retry_max_s.unwrap_or(3600)),
            },
            models,
            workspaces,
            subagents,
            workflows,
            compaction_share: v.compaction_share.unwrap_or(0.5).clamp(0.05, 0.95),
            // An empty token (e.g. `SPOOL_METRICS_TOKEN=`) means none, not "any empty bearer".
            metrics_token: v
                .metrics_token
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .map(Secret),
            metrics_listen,
            log_format,
            blobs,
            max_upload_bytes: v.max_upload_bytes.unwrap_or(20 * 1024 * 1024).max(1),
            housekeeping,
            event_window,
        })
    }

    /// The worker runtime settings these imply.
    pub fn worker(&self) -> WorkerConfig {
        WorkerConfig {
            queues: self.queues.clone(),
            concurrency: self.concurrency,
            lease: self.lease,
            heartbeat: self.lease / 3,
            // Rescue soon after a lease can have lapsed, but never hammer the database.
            rescue_interval: (self.lease / 2).clamp(Duration::from_secs(1), Duration::from_secs(5)),
            backoff: self.backoff,
            blobs: Some(self.blobs.clone()),
            event_window: self.event_window,
            ..WorkerConfig::default()
        }
    }
}

/// The blob store: `blob_url` (or `<data_dir>/blobs`), with `[blob_options]` for its builder.
fn blob_store(
    url: Option<&str>,
    data_dir: &Path,
    file: &toml::Table,
    offload_bytes: Option<usize>,
) -> Result<Blobs, ConfigError> {
    let invalid = |key, message| ConfigError::Invalid { key, message };
    let options: Vec<(String, String)> = match file.get("blob_options") {
        None => Vec::new(),
        Some(toml::Value::Table(t)) => t
            .iter()
            .map(|(k, v)| match v {
                toml::Value::String(s) => Ok((k.clone(), s.clone())),
                toml::Value::Boolean(b) => Ok((k.clone(), b.to_string())),
                toml::Value::Integer(i) => Ok((k.clone(), i.to_string())),
                _ => Err(invalid("blob_options", format!("{k} must be a string"))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("blob_options", "must be a table".into())),
    };
    let offload = offload_bytes.unwrap_or(crate::store::DEFAULT_OFFLOAD_BYTES);
    Blobs::open(url, data_dir, &options, offload.max(1024))
        .map_err(|e| invalid("blob_url", e.to_string()))
}

#[cfg(test)]
mod tests;
