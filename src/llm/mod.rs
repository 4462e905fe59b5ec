//! Owns talking to model providers; knows nothing of sessions, jobs or the database.
//!
//! [`LlmClient::stream`] makes one streamed call to the model a [`config::ModelConfig`]
//! describes and classifies failures as retryable or fatal. It never retries itself: the caller
//! retries whole steps, because a retry must discard the partial output already streamed.

mod anthropic;
pub mod config;
pub mod mock;
pub mod openai;
pub mod sse;
pub mod types;

pub use types::*;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use config::{ModelConfig, Provider};

/// Talks to providers. Cheap to clone.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    idle_timeout: Duration,
}

impl LlmClient {
    /// A client over `http`; a stream that sends nothing for `idle_timeout` counts as stalled.
    pub fn new(http: reqwest::Client, idle_timeout: Duration) -> Self {
        Self { http, idle_timeout }
    }

    /// Streams one completion from `model`, calling `on_event` for each delta / finished tool call as it arrives.
    ///
    /// Honours `cancel` at once (returns [`LlmError::Cancelled`], dropping the connection so the
    /// provider stops). One attempt only; see [`LlmError`] for what is worth retrying.
    pub async fn stream(
        &self,
        model: &ModelConfig,
        req: &ChatRequest,
        cancel: &CancellationToken,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<Completion, LlmError> {
        let result = match model.provider {
            Provider::OpenAi => {
                openai::stream(&self.http, self.idle_timeout, model, req, cancel, on_event).await
            }
            Provider::Mock => mock::stream(req, cancel, on_event).await,
            Provider::Anthropic => {
                anthropic::stream(&self.http, self.idle_timeout, model, req, cancel, on_event).await
            }
        };
        // Every call of the process passes here (turns, compaction, titles): counted once.
        if let Ok(c) = &result {
            crate::metrics::record_llm(&model.name, &c.usage, model.cost(&c.usage));
        }
        result
    }
}

/// The model's API key, if it has one. A key variable that is configured but unset is an error
/// that names it: sending without the key would only earn a less helpful 401.
fn api_key(model: &ModelConfig) -> Result<Option<String>, LlmError> {
    match (model.api_key(), &model.api_key_env) {
        (Some(key), _) => Ok(Some(key)),
        (None, Some(var)) => Err(LlmError::Fatal(format!(
            "model {:?}: the API key variable {var} is not set",
            model.name
        ))),
        (None, None) => Ok(None),
    }
}
