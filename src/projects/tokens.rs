//! API tokens: `spool_` plus 43 random URL-safe characters, shown once; only a SHA-256 is kept.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown scope `{other}` (expected admin, write or read)"
            )),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub token_id: Uuid,
    pub project_id: Uuid,
    pub scope: Scope,
}

/// A freshly created token; `secret` is never retrievable again.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: Uuid,
    pub secret: String,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates a token for `project_id` with `scope`.
pub async fn create(
    pool: &PgPool,
    project_id: Uuid,
    scope: Scope,
) -> Result<NewToken, sqlx::Error> {
    let bytes: [u8; 32] = rand::random();
    let secret = format!("spool_{}", URL_SAFE_NO_PAD.encode(bytes));
    let id = Uuid::now_v7();
    sqlx::query!(
        "INSERT INTO api_tokens (id, project_id, scope, token_hash, prefix) VALUES ($1, $2, $3, $4, $5)",
        id,
        project_id,
        scope.as_str(),
        hash(&secret),
        &secret[..12]
    )
    .execute(pool)
    .await?;
    Ok(NewToken { id, secret })
}

/// Resolves a presented token; `None` for unknown or revoked ones. Checked on every request, so a
/// revocation takes effect at once.
pub async fn verify(pool: &PgPool, secret: &str) -> Result<Option<Principal>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT id, project_id, scope FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        hash(secret)
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|r| {
        Some(Principal {
            token_id: r.id,
            project_id: r.project_id,
            scope: r.scope.parse().ok()?,
        })
    }))
}

/// Revokes a token named by its secret or by its id. Returns whether one was revoked.
pub async fn revoke(pool: &PgPool, token_or_id: &str) -> Result<bool, sqlx::Error> {
    let id = Uuid::parse_str(token_or_id).ok();
    let r = sqlx::query!(
        "UPDATE api_tokens SET revoked_at = now()
         WHERE revoked_at IS NULL AND (token_hash = $1 OR id = $2)",
        hash(token_or_id),
        id
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}
