//! One typed configuration. Each setting comes from its command-line flag, else its environment
//! variable, else `spool.toml`, else the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::queue::backoff::Backoff;
use crate::worker::WorkerConfig;

/// Settings as read from `spool.toml`; every key is optional.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
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
    /// Sections later features read (models, workspaces); kept so the file may carry them.
    #[serde(flatten)]
    pub other: toml::Table,
}

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
        let cfg: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        for key in cfg.other.keys() {
            if !matches!(key.as_str(), "models" | "workspaces" | "default_model") {
                tracing::warn!(%key, path = %path.display(), "unknown setting in config file; ignored");
            }
        }
        Ok(cfg)
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
}

/// Values given on the command line or in the environment (clap merges the two).
#[derive(Debug, Default, Clone)]
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
}

impl Settings {
    /// Layers `over` (flags and env) on `file` on the defaults, and checks the result.
    pub fn resolve(over: Overrides, file: FileConfig) -> Result<Self, ConfigError> {
        let listen_raw = over
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_raw.parse().map_err(|e| ConfigError::Invalid {
            key: "listen",
            message: format!("`{listen_raw}` is not host:port ({e})"),
        })?;
        let concurrency = over.concurrency.or(file.concurrency).unwrap_or(16);
        if concurrency == 0 {
            return Err(ConfigError::Invalid {
                key: "concurrency",
                message: "must be at least 1".into(),
            });
        }
        let lease = Duration::from_secs(over.lease_s.or(file.lease_s).unwrap_or(30).max(1));
        Ok(Self {
            database_url: over
                .database_url
                .or(file.database_url)
                .filter(|u| !u.is_empty()),
            data_dir: over
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(".spool")),
            listen,
            concurrency,
            queues: over
                .queues
                .or(file.queues)
                .unwrap_or_else(|| vec!["default".into()]),
            lease,
            shutdown_grace: Duration::from_secs(
                over.shutdown_grace_s
                    .or(file.shutdown_grace_s)
                    .unwrap_or(30),
            ),
            max_args_bytes: over
                .max_args_bytes
                .or(file.max_args_bytes)
                .unwrap_or(1024 * 1024),
            db_pool: over.db_pool.or(file.db_pool).unwrap_or(20).max(2),
            http_allow_loopback: over
                .http_allow_loopback
                .or(file.http_allow_loopback)
                .unwrap_or(false),
            http_allow_private: over
                .http_allow_private
                .or(file.http_allow_private)
                .unwrap_or(false),
            backoff: Backoff {
                base: Duration::from_millis(
                    over.retry_base_ms.or(file.retry_base_ms).unwrap_or(1000),
                ),
                max: Duration::from_secs(over.retry_max_s.or(file.retry_max_s).unwrap_or(3600)),
            },
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
            ..WorkerConfig::default()
        }
    }
}
