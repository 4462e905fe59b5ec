//! Retention of finished jobs, and the round claim that lets a fleet run each periodic duty once
//! per interval. Deletions come in short batches chosen by id, so no statement holds locks on
//! more than a batch of rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The smallest UUIDv7 of `t`'s millisecond: job ids are v7, so every job created before `t`
/// sorts below it, and a range scan of the primary key finds old jobs without another index.
pub fn first_id_at(t: DateTime<Utc>) -> Uuid {
    let ms = t.timestamp_millis().max(0) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70;
    b[8] = 0x80;
    Uuid::from_bytes(b)
}

/// Up to `limit` ids of jobs that finished (succeeded, failed, cancelled) before `cutoff`, in id
/// order after `after`.
pub async fn finished_before(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    // A job finishes after it is created, so one that finished before the cutoff has an id below
    // the cutoff's.
    sqlx::query_scalar!(
        "SELECT id FROM jobs
         WHERE id < $1 AND ($2::uuid IS NULL OR id > $2)
           AND state IN ('succeeded', 'failed', 'cancelled') AND finished_at < $3
         ORDER BY id LIMIT $4",
        first_id_at(cutoff),
        after,
        cutoff,
        limit
    )
    .fetch_all(pool)
    .await
}

/// Deletes those of `ids` that are still finished before `cutoff` (a retry in between keeps its
/// job). Returns how many went.
pub async fn delete_finished(
    pool: &PgPool,
    ids: &[Uuid],
    cutoff: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "DELETE FROM jobs WHERE id = ANY($1)
           AND state IN ('succeeded', 'failed', 'cancelled') AND finished_at < $2",
        ids,
        cutoff
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Which of `keys` the results of `jobs` refer to (offloaded results; see `store::offload`).
pub async fn referenced_results(
    pool: &PgPool,
    jobs: &[Uuid],
    keys: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT result #>> '{$blob,key}' AS "key!" FROM jobs
           WHERE id = ANY($1) AND result #>> '{$blob,key}' = ANY($2)"#,
        jobs,
        keys
    )
    .fetch_all(pool)
    .await
}

/// Claims this round of the periodic duty `task`: `true` for the one caller that moves its next
/// run `every` into the future, `false` while the current round is someone else's.
pub async fn claim_round(pool: &PgPool, task: &str, every: Duration) -> Result<bool, sqlx::Error> {
    let won = sqlx::query_scalar!(
        r#"INSERT INTO housekeeping (task, next_at) VALUES ($1, now() + make_interval(secs => $2))
           ON CONFLICT (task) DO UPDATE SET next_at = EXCLUDED.next_at
           WHERE housekeeping.next_at <= now()
           RETURNING 1 AS "won!""#,
        task,
        every.as_secs_f64()
    )
    .fetch_optional(pool)
    .await?;
    Ok(won.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_id_sorts_between_the_milliseconds() {
        let t = Utc::now();
        let before = Uuid::now_v7();
        let bound = first_id_at(t + chrono::TimeDelta::milliseconds(2));
        assert!(before < bound);
        assert_eq!(bound.get_version_num(), 7);
        let later = first_id_at(t + chrono::TimeDelta::seconds(5));
        assert!(bound < later);
    }
}
