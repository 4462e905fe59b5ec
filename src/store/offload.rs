//! Payloads over the offload limit: the JSON is stored as a blob and the row keeps a small
//! reference, `{"$blob": {"key", "size"}}`, in place of the whole value. Readers resolve
//! references back to the payload. A payload under the limit is never touched: the writer's cost
//! is one size count that stops at the limit, and the reader's one look at the value's shape.

use std::io;

use bytes::Bytes;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{BlobError, Blobs, payload_key};

/// The one key of a reference object.
const TAG: &str = "$blob";

/// Whether `v` is a reference to an offloaded payload.
pub fn is_reference(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get(TAG).is_some_and(Value::is_object))
}

/// The key a reference names.
pub fn reference_key(v: &Value) -> Option<&str> {
    if !is_reference(v) {
        return None;
    }
    v.get(TAG)?.get("key")?.as_str()
}

/// Counts written bytes and gives up once past `limit`, so sizing a huge value costs no more
/// than sizing one at the limit.
struct Counter {
    n: usize,
    limit: usize,
}

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.n += buf.len();
        if self.n > self.limit {
            return Err(io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `v` serializes to more than `limit` bytes of JSON.
pub fn json_len_over(v: &Value, limit: usize) -> bool {
    let mut c = Counter { n: 0, limit };
    serde_json::to_writer(&mut c, v).is_err()
}

impl Blobs {
    /// `value` as a row should store it: itself when small, else a reference to a new blob of
    /// `job_id`'s holding its JSON. The blob is written before this returns.
    pub async fn offload(
        &self,
        pool: &PgPool,
        project_id: Uuid,
        job_id: Uuid,
        value: Value,
    ) -> Result<Value, BlobError> {
        if !json_len_over(&value, self.offload_bytes) {
            return Ok(value);
        }
        let bytes = serde_json::to_vec(&value)?;
        let size = bytes.len();
        let key = payload_key(project_id, job_id);
        self.put(pool, &key, project_id, Some(job_id), Bytes::from(bytes))
            .await?;
        Ok(json!({ TAG: { "key": key, "size": size } }))
    }

    /// [`Blobs::offload`], but a store that fails keeps the payload inline (and says so in the
    /// log): a large row is better than a lost result.
    pub async fn offload_or_keep(
        &self,
        pool: &PgPool,
        project_id: Uuid,
        job_id: Uuid,
        value: Value,
    ) -> Value {
        if !json_len_over(&value, self.offload_bytes) {
            return value;
        }
        let kept = value.clone();
        match self.offload(pool, project_id, job_id, value).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, job_id = %job_id, "offloading a large payload failed; storing it inline");
                kept
            }
        }
    }

    /// Replaces a reference to one of `project_id`'s payloads with the payload; any other value
    /// stays as it is. A payload that cannot be read (or another project's key) leaves the
    /// reference with an `error` beside it, so the reader sees what is missing.
    pub async fn resolve(&self, project_id: Uuid, v: &mut Value) {
        let Some(key) = reference_key(v).map(str::to_owned) else {
            return;
        };
        // A value shaped like a reference but naming another project's blob is never read: a
        // handler's output must not become a way to read someone else's data.
        let error = if !key.starts_with(&format!("{project_id}/payloads/")) {
            "the reference names a blob of another project".to_owned()
        } else {
            match self.get(&key).await {
                Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(payload) => {
                        *v = payload;
                        return;
                    }
                    Err(e) => format!("the stored payload is not JSON: {e}"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, key, "reading an offloaded payload failed");
                    e.to_string()
                }
            }
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("error".into(), Value::String(error));
        }
    }

    /// [`Blobs::resolve`] for every value. (A collected list, because an iterator adapter's
    /// closure held across the reads would make callers' futures lose `Send`.)
    pub async fn resolve_all(&self, project_id: Uuid, values: Vec<&mut Value>) {
        for v in values {
            self.resolve(project_id, v).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stop_at_the_limit_and_references_are_recognised() {
        let small = json!({ "text": "hi" });
        assert!(!json_len_over(&small, 64));
        let big = json!({ "text": "x".repeat(100) });
        assert!(json_len_over(&big, 64));
        assert!(!json_len_over(&big, 1000));
        let r = json!({ "$blob": { "key": "p/payloads/j/k", "size": 3 } });
        assert!(is_reference(&r));
        assert_eq!(reference_key(&r), Some("p/payloads/j/k"));
        assert!(!is_reference(&json!({ "$blob": "x" })));
        assert!(!is_reference(&json!({ "$blob": {}, "other": 1 })));
    }
}
