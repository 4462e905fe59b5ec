//! Blobs: bytes that do not belong in a table row — chat attachments, and job results, tool
//! outputs and event payloads over the offload limit — kept in an object store through the
//! `object_store` crate: the local filesystem under the data directory by default, or S3, GCS or
//! Azure when `blob_url` names one (`s3://bucket/prefix`), with credentials from the environment.
//!
//! Owns the object store's contents and the `blobs` registry table, which records every blob
//! before its bytes are written, so that a blob nothing refers to can be found and removed (see
//! [`registry`]). It knows nothing of sessions, jobs or HTTP and must not touch their tables:
//! callers keep references in their own rows, and say which references they still hold when the
//! orphan sweep asks.
//!
//! Every blob is written before the row that refers to it, so a reference never points at
//! nothing; a crash in between leaves an unreferenced blob, which the sweep removes after a grace
//! period.

pub mod media;
pub mod offload;
pub mod registry;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload};
use sqlx::PgPool;
use uuid::Uuid;

pub use offload::{is_reference, json_len_over, reference_key};

/// Payloads whose JSON is larger than this many bytes are offloaded, unless configured.
pub const DEFAULT_OFFLOAD_BYTES: usize = 64 * 1024;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob URL `{url}`: {message}")]
    Config { url: String, message: String },
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    #[error("blob payload is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A handle on the process's blob store. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Where the blobs live, for messages: a URL without credentials.
    location: Arc<str>,
    /// JSON payloads over this many bytes are stored as blobs.
    offload_bytes: usize,
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Blobs({}, offload over {} B)",
            self.location, self.offload_bytes
        )
    }
}

/// Environment variables the cloud builders read (credentials, region, endpoint).
const ENV_PREFIXES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];

impl Blobs {
    /// Opens the store `url` names, or `<data_dir>/blobs` on the local filesystem without one.
    ///
    /// Cloud stores take their settings from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`),
    /// then from `options` (e.g. `aws_endpoint`, `aws_allow_http`), which win. Nothing is
    /// contacted or created until the first write.
    pub fn open(
        url: Option<&str>,
        data_dir: &Path,
        options: &[(String, String)],
        offload_bytes: usize,
    ) -> Result<Self, BlobError> {
        let Some(raw) = url.filter(|u| !u.trim().is_empty()) else {
            return Self::local(&data_dir.join("blobs"), offload_bytes);
        };
        let bad = |message: String| BlobError::Config {
            url: raw.to_owned(),
            message,
        };
        let parsed = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
        let (scheme, _) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                return Self::local(Path::new(parsed.path()), offload_bytes);
            }
            ObjectStoreScheme::Memory => Arc::new(InMemory::new()),
            ObjectStoreScheme::AmazonS3
            | ObjectStoreScheme::GoogleCloudStorage
            | ObjectStoreScheme::MicrosoftAzure => {
                let env =
                    std::env::vars().filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p)));
                let opts = env.chain(options.iter().cloned());
                let (store, prefix) =
                    object_store::parse_url_opts(&parsed, opts).map_err(|e| bad(e.to_string()))?;
                if prefix.as_ref().is_empty() {
                    Arc::from(store)
                } else {
                    Arc::new(PrefixStore::new(store, prefix))
                }
            }
            other => return Err(bad(format!("{other:?} is not a supported blob store"))),
        };
        let mut location = parsed.clone();
        let _ = location.set_password(None);
        let _ = location.set_username("");
        Ok(Self {
            store,
            location: Arc::from(location.as_str()),
            offload_bytes,
        })
    }

    /// A store under `dir`, created on the first write.
    fn local(dir: &Path, offload_bytes: usize) -> Result<Self, BlobError> {
        let abs = std::path::absolute(dir).map_err(|e| BlobError::Config {
            url: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let prefix =
            object_store::path::Path::from_absolute_path(&abs).map_err(|e| BlobError::Config {
                url: abs.display().to_string(),
                message: e.to_string(),
            })?;
        // Empty directories left by deletes are removed, so a swept store leaves no husks.
        let fs = LocalFileSystem::new().with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(PrefixStore::new(fs, prefix)),
            location: Arc::from(format!("file://{}", abs.display()).as_str()),
            offload_bytes,
        })
    }

    /// Where the blobs live (a URL without credentials).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// JSON payloads over this many bytes are offloaded.
    pub fn offload_bytes(&self) -> usize {
        self.offload_bytes
    }

    /// Registers `key` for `project_id` (and the job whose rows will refer to it), then writes
    /// the bytes. On a failed write the registration is withdrawn again.
    pub async fn put(
        &self,
        pool: &PgPool,
        key: &str,
        project_id: Uuid,
        job_id: Option<Uuid>,
        bytes: Bytes,
    ) -> Result<(), BlobError> {
        registry::register(pool, key, project_id, job_id, bytes.len() as i64).await?;
        let path = object_store::path::Path::from(key);
        if let Err(e) = self.store.put(&path, PutPayload::from(bytes)).await {
            if let Err(undo) = registry::unregister(pool, &[key.to_owned()]).await {
                tracing::warn!(error = %undo, key, "withdrawing a failed blob's registration failed; the sweep will");
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// The whole blob.
    pub async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let path = object_store::path::Path::from(key);
        match self.store.get(&path).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound(key.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// The blob as a stream of chunks, with its size, for downloads that should not be buffered.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, BlobError>>), BlobError> {
        let path = object_store::path::Path::from(key);
        match self.store.get(&path).await {
            Ok(r) => {
                let size = r.meta.size;
                Ok((
                    size,
                    r.into_stream().map(|c| c.map_err(BlobError::from)).boxed(),
                ))
            }
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound(key.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the blob's bytes exist.
    pub async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        let path = object_store::path::Path::from(key);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes blobs: the bytes first, then their registrations, so a crash in between leaves a
    /// registration the sweep retries rather than bytes nothing knows about. Bytes already gone
    /// count as deleted. Returns how many registrations were removed.
    pub async fn delete(&self, pool: &PgPool, keys: &[String]) -> Result<u64, BlobError> {
        for key in keys {
            let path = object_store::path::Path::from(key.as_str());
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(registry::unregister(pool, keys).await?)
    }
}

/// The key of a chat attachment's bytes.
pub fn attachment_key(project_id: Uuid, attachment_id: Uuid) -> String {
    format!("{project_id}/attachments/{attachment_id}")
}

/// The key of a new offloaded payload of `job_id`.
pub fn payload_key(project_id: Uuid, job_id: Uuid) -> String {
    format!("{project_id}/payloads/{job_id}/{}", Uuid::now_v7())
}
