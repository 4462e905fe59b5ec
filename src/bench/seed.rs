//! `spool bench --seed N`: fills project `default` with N jobs spread over states, kinds and
//! queues (see [`spool::queue::seed`]), a small fake fleet, then vacuums and analyzes, so the
//! pages can be measured against a realistic table.

use std::time::Instant;

use serde_json::{Value, json};
use spool::app;
use uuid::Uuid;

use super::round;

/// The project the seeder fills and the pages bench signs in to.
pub const PROJECT: &str = "default";

/// What a seeding run did.
#[derive(Debug, Clone, Copy)]
pub struct Seeded {
    pub jobs: i64,
    /// The insert alone.
    pub insert_s: f64,
    /// VACUUM (ANALYZE) afterwards.
    pub vacuum_s: f64,
}

impl Seeded {
    /// The figures as JSON fields.
    pub fn json(&self) -> Value {
        json!({ "seeded": self.jobs, "seed_s": round(self.insert_s), "vacuum_s": round(self.vacuum_s) })
    }
}

/// Seeds `n` jobs into `project`, registers the fake fleet, then vacuums and analyzes.
pub async fn fill(svc: &app::Services, project: Uuid, n: u64) -> anyhow::Result<Seeded> {
    // One statement per million rows: the inserted rows feed the events insert through a CTE,
    // which Postgres holds (spilling to disk) until the statement ends; batches bound that.
    const BATCH: u64 = 1_000_000;
    let start = Instant::now();
    let mut jobs = 0;
    let mut left = n;
    while left > 0 {
        let take = left.min(BATCH);
        jobs += spool::queue::seed::jobs(&svc.pool, project, i64::try_from(take)?).await?;
        left -= take;
    }
    spool::queue::seed::workers(&svc.pool).await?;
    let insert_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    spool::queue::seed::vacuum(&svc.pool).await?;
    Ok(Seeded {
        jobs,
        insert_s,
        vacuum_s: start.elapsed().as_secs_f64(),
    })
}

/// `spool bench --seed N` without a mode: seeds and reports.
pub async fn run(svc: &app::Services, n: u64) -> anyhow::Result<Value> {
    let project = spool::projects::ensure(&svc.pool, PROJECT).await?;
    let seeded = fill(svc, project.id, n).await?;
    let mut line = json!({ "mode": "seed", "project": PROJECT });
    merge(&mut line, seeded.json());
    Ok(line)
}

/// Copies the fields of `extra` into `line`.
pub fn merge(line: &mut Value, extra: Value) {
    if let (Some(l), Value::Object(e)) = (line.as_object_mut(), extra) {
        l.extend(e);
    }
}
