//! The workflow pages: the catalog with a run form per workflow (`/workflows`), and one run's
//! page (`/workflow-runs/{id}`) with its phases, steps, log, budget and a cancel button.
//!
//! `catalog` serves the list and the run form (starting runs through `workflow::run::start`, as
//! the REST API does); `run` serves the run page, its live part and cancel, and `log` words
//! the run's events as log lines. The live part is one fragment that asks for itself again a
//! second later while the run (or a step of it) is unfinished (htmx `load delay:1s`), so the
//! polling stops by itself when the run ends; without JavaScript the page shows the same content
//! and a refresh link, and the forms work as plain forms.

mod catalog;
mod log;
mod run;

use axum::Router;
use axum::routing::{get, post};

use super::WebState;

/// Read-only routes.
pub fn pages() -> Router<WebState> {
    Router::new()
        .route("/workflows", get(catalog::page))
        .route("/workflow-runs/{id}", get(run::page))
        .route("/workflow-runs/{id}/live", get(run::live))
}

/// State-changing routes (behind the CSRF check).
pub fn actions() -> Router<WebState> {
    Router::new()
        .route("/workflows/{name}/runs", post(catalog::start))
        .route("/workflow-runs/{id}/cancel", post(run::cancel))
}

/// How a catalog origin reads on the page.
fn origin_label(origin: &str) -> &'static str {
    match origin {
        "builtin" => "built-in",
        "directory" => "directory",
        "upload" => "uploaded",
        _ => "other",
    }
}
