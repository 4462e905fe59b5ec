//! Files users attach to a chat session: checked by their bytes, kept as blobs, named in a turn's
//! input by `{"type": "image" | "file", "attachment_id"}` blocks, and loaded for the model when
//! the turn runs. Owns the `attachments` table (its SQL is here); the bytes are `store`'s.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::llm::Media;
use crate::store::media::{self, Class};
use crate::store::{BlobError, Blobs, attachment_key};

/// A stored attachment.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    #[serde(rename = "attachment_id")]
    pub id: Uuid,
    #[serde(skip)]
    pub session_id: Uuid,
    pub name: String,
    pub media_type: String,
    pub size: i64,
    #[serde(skip)]
    pub blob_key: String,
    pub created_at: DateTime<Utc>,
}

impl Attachment {
    /// Whether models see it as an image.
    pub fn is_image(&self) -> bool {
        self.media_type.starts_with("image/")
    }

    /// Whether only a model that accepts images (and documents) can be sent it.
    pub fn needs_vision(&self) -> bool {
        self.is_image() || self.media_type == "application/pdf"
    }

    /// What a user message records of it, so pages show it without another read.
    pub fn summary(&self) -> Value {
        json!({ "id": self.id, "name": self.name, "media_type": self.media_type, "size": self.size })
    }
}

/// Why an upload or a reference to an attachment was refused.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the file is {0}; accepted are {accepted}", accepted = media::ACCEPTED)]
    Unsupported(&'static str),
    #[error("the file is named as {named} but its content is {content}")]
    Mismatch {
        named: &'static str,
        content: String,
    },
    #[error("session not found")]
    SessionNotFound,
    #[error("content block {index}: no attachment {id} in this session")]
    Unknown { index: usize, id: Uuid },
    #[error("content block {index}: attachment {id} is {media_type}, not an image")]
    NotImage {
        index: usize,
        id: Uuid,
        media_type: String,
    },
    #[error(
        "content block {index}: model `{model}` does not accept images or documents (set `vision = true` on a model that does)"
    )]
    NoVision { index: usize, model: String },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// An upload's file name as shown and sent: its last path component, without control
/// characters, at most 200 characters; `file` when nothing is left.
pub fn clean_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let name: String = last.chars().filter(|c| !c.is_control()).take(200).collect();
    match name.trim() {
        "" | "." | ".." => "file".to_owned(),
        n => n.to_owned(),
    }
}

/// Checks an upload by its bytes and stores it: the blob first, then the row. Nothing is stored
/// for a refused file.
pub async fn upload(
    pool: &PgPool,
    blobs: &Blobs,
    project_id: Uuid,
    session_id: Uuid,
    name: &str,
    bytes: Bytes,
    limit: usize,
) -> Result<Attachment, AttachmentError> {
    if bytes.is_empty() {
        return Err(AttachmentError::Empty);
    }
    if bytes.len() > limit {
        return Err(AttachmentError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let name = clean_name(name);
    let sniffed =
        media::sniff(&bytes).ok_or(AttachmentError::Unsupported(media::describe(&bytes)))?;
    if let Some(named) = media::promised_by_name(&name)
        && named != sniffed.media_type
    {
        return Err(AttachmentError::Mismatch {
            named,
            content: sniffed.media_type.to_owned(),
        });
    }
    if !session_exists(pool, project_id, session_id).await? {
        return Err(AttachmentError::SessionNotFound);
    }
    let id = Uuid::now_v7();
    let key = attachment_key(project_id, id);
    let size = bytes.len() as i64;
    blobs.put(pool, &key, project_id, None, bytes).await?;
    let row = sqlx::query_as!(
        Attachment,
        "INSERT INTO attachments (id, project_id, session_id, name, media_type, size, blob_key)
         SELECT $1, $2, $3, $4, $5, $6, $7
         WHERE EXISTS (SELECT 1 FROM sessions WHERE id = $3 AND project_id = $2)
         RETURNING id, session_id, name, media_type, size, blob_key, created_at",
        id,
        project_id,
        session_id,
        name,
        sniffed.media_type,
        size,
        key
    )
    .fetch_optional(pool)
    .await;
    match row {
        Ok(Some(a)) => Ok(a),
        // The session went away while the bytes were written: take them back.
        Ok(None) => {
            blobs.delete(pool, &[key]).await?;
            Err(AttachmentError::SessionNotFound)
        }
        Err(e) => {
            if let Err(undo) = blobs.delete(pool, &[key]).await {
                tracing::warn!(error = %undo, "removing an upload's blob failed; the sweep will");
            }
            Err(e.into())
        }
    }
}

async fn session_exists(pool: &PgPool, project_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND project_id = $2) AS "ok!""#,
        id,
        project_id
    )
    .fetch_one(pool)
    .await
}

/// One attachment of a session in `project_id`.
pub async fn one(
    pool: &PgPool,
    project_id: Uuid,
    session_id: Uuid,
    id: Uuid,
) -> Result<Option<Attachment>, sqlx::Error> {
    sqlx::query_as!(
        Attachment,
        "SELECT id, session_id, name, media_type, size, blob_key, created_at FROM attachments
         WHERE id = $1 AND session_id = $2 AND project_id = $3",
        id,
        session_id,
        project_id
    )
    .fetch_optional(pool)
    .await
}

/// The attachments among `ids` that belong to session `session_id`.
pub async fn of_session(
    pool: &PgPool,
    session_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<Attachment>, sqlx::Error> {
    sqlx::query_as!(
        Attachment,
        "SELECT id, session_id, name, media_type, size, blob_key, created_at FROM attachments
         WHERE session_id = $1 AND id = ANY($2)",
        session_id,
        ids
    )
    .fetch_all(pool)
    .await
}

/// The blob keys of every attachment of a session (to delete them with it).
pub async fn keys_of_session(pool: &PgPool, session_id: Uuid) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT blob_key FROM attachments WHERE session_id = $1",
        session_id
    )
    .fetch_all(pool)
    .await
}

/// Which of `keys` an attachment still refers to (for the orphan sweep).
pub async fn referenced(pool: &PgPool, keys: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT blob_key FROM attachments WHERE blob_key = ANY($1)",
        keys
    )
    .fetch_all(pool)
    .await
}

/// The attachment blocks of a turn input: (block index, is an `image` block, attachment id).
pub fn blocks(input: &Value) -> Vec<(usize, bool, Uuid)> {
    input
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, b)| {
            let image = match b.get("type").and_then(Value::as_str)? {
                "image" => true,
                "file" => false,
                _ => return None,
            };
            let id = b.get("attachment_id")?.as_str()?.parse().ok()?;
            Some((i, image, id))
        })
        .collect()
}

/// Checks a turn's attachment blocks against the session and the model that will answer, and
/// returns the summaries its user message keeps, in block order.
pub async fn check_turn(
    pool: &PgPool,
    session_id: Uuid,
    input: &Value,
    model: &str,
    vision: bool,
) -> Result<Vec<Value>, AttachmentError> {
    let named = blocks(input);
    if named.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = named.iter().map(|(_, _, id)| *id).collect();
    let found: HashMap<Uuid, Attachment> = of_session(pool, session_id, &ids)
        .await?
        .into_iter()
        .map(|a| (a.id, a))
        .collect();
    let mut out = Vec::with_capacity(named.len());
    for (index, image, id) in named {
        let a = found
            .get(&id)
            .ok_or(AttachmentError::Unknown { index, id })?;
        if image && !a.is_image() {
            return Err(AttachmentError::NotImage {
                index,
                id,
                media_type: a.media_type.clone(),
            });
        }
        if a.needs_vision() && !vision {
            return Err(AttachmentError::NoVision {
                index,
                model: model.to_owned(),
            });
        }
        out.push(a.summary());
    }
    Ok(out)
}

/// Text files are inlined up to this many bytes; the rest is cut with a note.
pub const MAX_INLINE_TEXT: usize = 200 * 1024;

/// An attachment as a turn sends it.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A text file's content (cut at [`MAX_INLINE_TEXT`]).
    Text { name: String, text: String },
    /// Image or PDF bytes.
    Media(Media),
    /// Gone or unreadable: the model is told so by name.
    Missing { name: String },
}

/// Loads every attachment the user messages among `contents` name, once per turn.
pub async fn load(
    pool: &PgPool,
    blobs: &Blobs,
    session_id: Uuid,
    contents: &[&Value],
) -> Result<HashMap<Uuid, Loaded>, sqlx::Error> {
    let ids: Vec<Uuid> = contents
        .iter()
        .flat_map(|c| blocks(c.get("input").unwrap_or(&Value::Null)))
        .map(|(_, _, id)| id)
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut out = HashMap::new();
    for a in of_session(pool, session_id, &ids).await? {
        let loaded = match blobs.get(&a.blob_key).await {
            Err(e) => {
                tracing::warn!(error = %e, attachment = %a.id, "reading an attachment failed");
                Loaded::Missing { name: a.name }
            }
            Ok(bytes) => match media::sniff(&bytes).map(|s| s.class) {
                Some(Class::Text) => Loaded::Text {
                    text: cut_text(&bytes),
                    name: a.name,
                },
                Some(_) => Loaded::Media(Media {
                    name: a.name,
                    media_type: a.media_type,
                    data: bytes,
                }),
                None => Loaded::Missing { name: a.name },
            },
        };
        out.insert(a.id, loaded);
    }
    for id in ids {
        out.entry(id).or_insert_with(|| Loaded::Missing {
            name: id.to_string(),
        });
    }
    Ok(out)
}

/// UTF-8 text cut at [`MAX_INLINE_TEXT`] bytes on a character boundary, with a note when cut.
fn cut_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= MAX_INLINE_TEXT {
        return text.into_owned();
    }
    let end = (0..=MAX_INLINE_TEXT)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!(
        "{}\n[… cut: {} more bytes not shown]",
        &text[..end],
        text.len() - end
    )
}
