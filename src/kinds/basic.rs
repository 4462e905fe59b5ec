//! `noop` and `sleep`: for demos, tests and benchmarks.

use std::time::Duration;

use serde_json::Value;

use crate::worker::{JobContext, JobError};

/// Succeeds at once with its args as the result.
pub async fn noop(ctx: JobContext) -> Result<Value, JobError> {
    Ok(ctx.args)
}

/// Longest accepted `sleep`.
const MAX_SLEEP_MS: u64 = 24 * 3600 * 1000;

fn sleep_ms(args: &Value) -> Result<u64, String> {
    let ms = args
        .get("ms")
        .and_then(Value::as_u64)
        .ok_or("`ms` must be a non-negative integer")?;
    if ms > MAX_SLEEP_MS {
        return Err(format!("`ms` must be at most {MAX_SLEEP_MS}"));
    }
    Ok(ms)
}

/// Args check for `sleep`: `{"ms": <integer>}`.
pub fn validate_sleep(args: &Value) -> Result<(), String> {
    sleep_ms(args).map(|_| ())
}

/// Sleeps `ms`, reporting progress every 10%; stops at once when cancelled.
pub async fn sleep(ctx: JobContext) -> Result<Value, JobError> {
    let ms = sleep_ms(&ctx.args).map_err(JobError::fail)?;
    let step = Duration::from_millis(ms) / 10;
    for i in 1u32..=10 {
        tokio::select! {
            _ = ctx.cancellation().cancelled() => return Err(JobError::Cancelled),
            _ = tokio::time::sleep(step) => {}
        }
        ctx.progress(
            f64::from(i * 10),
            &format!(
                "slept {}ms of {ms}ms",
                step.as_millis() as u64 * u64::from(i)
            ),
        );
    }
    Ok(serde_json::json!({ "slept_ms": ms }))
}
