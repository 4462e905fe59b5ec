//! What browser sign-in needs from the token store: the shared cookie-signing key, one-time
//! sign-in codes, and resolving a token by id (a session cookie names its token, never its secret).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::tokens::Principal;

/// The key every web node signs session cookies with, created on first use.
pub async fn cookie_key(pool: &PgPool) -> Result<[u8; 32], sqlx::Error> {
    let fresh: [u8; 32] = rand::random();
    let key = sqlx::query_scalar!(
        r#"WITH ins AS (
               INSERT INTO web_keys (id, cookie_key) VALUES (1, $1)
               ON CONFLICT (id) DO NOTHING RETURNING cookie_key
           )
           SELECT cookie_key AS "key!" FROM ins
           UNION ALL
           SELECT cookie_key FROM web_keys WHERE id = 1
           LIMIT 1"#,
        &fresh[..]
    )
    .fetch_one(pool)
    .await?;
    let mut out = [0u8; 32];
    if key.len() == 32 {
        out.copy_from_slice(&key);
    }
    Ok(out)
}

/// The active token with this id.
pub async fn principal(pool: &PgPool, token_id: Uuid) -> Result<Option<Principal>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT id, project_id, scope FROM api_tokens WHERE id = $1 AND revoked_at IS NULL",
        token_id
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

/// Issues a one-time sign-in code for `token_id`, valid until `expires_at`.
pub async fn issue_code(
    pool: &PgPool,
    token_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let bytes: [u8; 24] = rand::random();
    let code = URL_SAFE_NO_PAD.encode(bytes);
    sqlx::query!(
        "INSERT INTO web_login_codes (code_hash, token_id, expires_at) VALUES ($1, $2, $3)",
        Sha256::digest(code.as_bytes()).to_vec(),
        token_id,
        expires_at
    )
    .execute(pool)
    .await?;
    Ok(code)
}

/// Spends a sign-in code: the first use within its lifetime returns its token, any other `None`.
pub async fn redeem_code(pool: &PgPool, code: &str) -> Result<Option<Principal>, sqlx::Error> {
    let token_id = sqlx::query_scalar!(
        "UPDATE web_login_codes SET used_at = now()
         WHERE code_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING token_id",
        Sha256::digest(code.as_bytes()).to_vec()
    )
    .fetch_optional(pool)
    .await?;
    match token_id {
        Some(id) => principal(pool, id).await,
        None => Ok(None),
    }
}
