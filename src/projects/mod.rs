//! Tenants and their credentials: projects, API tokens (stored hashed) and the per-project signing
//! secret. Every other domain scopes its queries by the project id this module resolves.

pub mod signin;
pub mod tokens;

use sqlx::PgPool;
use uuid::Uuid;

/// A tenant.
#[derive(Debug, Clone)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
}

/// Finds the project named `name`, creating it (with a fresh signing secret) when missing.
pub async fn ensure(pool: &PgPool, name: &str) -> Result<Project, sqlx::Error> {
    let secret: [u8; 32] = rand::random();
    let row = sqlx::query!(
        r#"WITH ins AS (
               INSERT INTO projects (id, name, signing_secret) VALUES ($1, $2, $3)
               ON CONFLICT (name) DO NOTHING RETURNING id, name
           )
           SELECT id AS "id!", name AS "name!" FROM ins
           UNION ALL
           SELECT id, name FROM projects WHERE name = $2
           LIMIT 1"#,
        Uuid::now_v7(),
        name,
        &secret[..]
    )
    .fetch_one(pool)
    .await?;
    Ok(Project {
        id: row.id,
        name: row.name,
    })
}

/// The project's secret for signing outbound `http` job requests.
pub async fn signing_secret(pool: &PgPool, project_id: Uuid) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT signing_secret FROM projects WHERE id = $1",
        project_id
    )
    .fetch_one(pool)
    .await
}
