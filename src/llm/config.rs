//! Which models a process knows: `default_model` and `[[models]]` in `spool.toml`.

use serde::Deserialize;

use super::types::Usage;

/// The OpenAI endpoint used when an `openai` model names no `base_url`.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The Anthropic endpoint used when an `anthropic` model names no `base_url`.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";

fn default_context() -> u64 {
    128_000
}

/// One `[[models]]` entry: how to reach a model and what it costs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name sessions and requests use to pick this model.
    pub name: String,
    pub provider: Provider,
    /// The API root, e.g. `https://api.openai.com/v1`; the provider's own when unset.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable holding the API key; no key is sent when unset.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The provider-side model id; defaults to `name`.
    #[serde(default)]
    pub model: Option<String>,
    /// Tokens the model accepts in one call.
    #[serde(default = "default_context")]
    pub context_window: u64,
    /// Whether the model accepts images.
    #[serde(default)]
    pub vision: bool,
    /// USD per million input tokens.
    #[serde(default)]
    pub input_price_per_mtok: f64,
    /// USD per million output tokens.
    #[serde(default)]
    pub output_price_per_mtok: f64,
}

/// The wire protocol a model speaks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI-compatible Chat Completions (OpenAI, vLLM, llama.cpp, Ollama, DeepSeek, …).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// The built-in offline model.
    Mock,
}

impl ModelConfig {
    /// The built-in offline model `mock`.
    pub fn mock() -> Self {
        Self {
            name: "mock".to_owned(),
            provider: Provider::Mock,
            base_url: None,
            api_key_env: None,
            model: None,
            context_window: 32_000,
            vision: false,
            input_price_per_mtok: 0.0,
            output_price_per_mtok: 0.0,
        }
    }

    /// The model id sent to the provider: `model`, else `name`.
    pub fn wire_model(&self) -> &str {
        self.model.as_deref().unwrap_or(&self.name)
    }

    /// The cost in USD of a usage.
    pub fn cost(&self, u: &Usage) -> f64 {
        (u.input_tokens as f64 * self.input_price_per_mtok
            + u.output_tokens as f64 * self.output_price_per_mtok)
            / 1_000_000.0
    }

    /// Reads the API key from the env var named by `api_key_env` (None when unset or empty).
    pub fn api_key(&self) -> Option<String> {
        let var = self.api_key_env.as_deref()?;
        std::env::var(var).ok().filter(|k| !k.trim().is_empty())
    }
}

/// The models a process knows, and the default. Built from spool.toml's `default_model` and `[[models]]`.
#[derive(Debug, Clone)]
pub struct Models {
    models: Vec<ModelConfig>,
    /// Index into `models`, always in range.
    default: usize,
}

impl Default for Models {
    /// Only `mock`, which is the default.
    fn default() -> Self {
        Self {
            models: vec![ModelConfig::mock()],
            default: 0,
        }
    }
}

impl Models {
    /// Reads `models` and `default_model` from a parsed `spool.toml`; other keys are ignored.
    ///
    /// No models configured means only `mock`; without `default_model` the first model is the
    /// default.
    pub fn from_toml(table: &toml::Table) -> Result<Self, String> {
        let default_name = match table.get("default_model") {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("default_model must be a string".to_owned()),
        };
        let models = match table.get("models") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.clone()
                        .try_into::<ModelConfig>()
                        .map_err(|e| format!("models[{i}]: {}", e.message()))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("models must be an array of [[models]] tables".to_owned()),
        };
        let models = if models.is_empty() {
            vec![ModelConfig::mock()]
        } else {
            models
        };
        for (i, m) in models.iter().enumerate() {
            if m.name.trim().is_empty() {
                return Err(format!("models[{i}]: name must not be empty"));
            }
            if models[..i].iter().any(|o| o.name == m.name) {
                return Err(format!("model {:?} is configured twice", m.name));
            }
        }
        let default = match default_name {
            None => 0,
            Some(name) => models.iter().position(|m| m.name == name).ok_or_else(|| {
                format!(
                    "default_model {name:?} is not a configured model (known: {})",
                    names(&models).join(", ")
                )
            })?,
        };
        Ok(Self { models, default })
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The model used when a request names none.
    pub fn default_model(&self) -> &ModelConfig {
        // In range: `from_toml` and `default` only build it from a position in `models`.
        &self.models[self.default]
    }

    /// Every model name, in configuration order.
    pub fn names(&self) -> Vec<String> {
        names(&self.models)
    }

    /// True when no real model is configured (only providers of kind `mock`).
    pub fn is_mock_only(&self) -> bool {
        self.models.iter().all(|m| m.provider == Provider::Mock)
    }
}

fn names(models: &[ModelConfig]) -> Vec<String> {
    models.iter().map(|m| m.name.clone()).collect()
}
