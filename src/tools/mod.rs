//! Owns the tools a model may call and their sandboxing rules; knows nothing of sessions,
//! jobs or the database.
//!
//! File tools (`read_file`, `list_dir`, `grep`, `find_files`) and `run_command` act inside a
//! [`Workspace`]. Every path argument is taken relative to the workspace root; an absolute
//! path is accepted only when it resolves inside the root. Paths are resolved with
//! `canonicalize` and must stay under the canonical root, which refuses `..` escapes and
//! symlinks that point outside. Recursive walks never follow symlinks. `http_fetch` is always
//! offered and refuses private, loopback and link-local destinations unless the context
//! allows them.
//!
//! Note that when a workspace allows commands, `run_command` can read anything the spool
//! process can (no chroot/namespace); the file sandbox only stops accidental and prompt-driven
//! escapes through the file tools.

pub mod types;
pub use types::*;

mod command;
mod fetch;
mod fs;
mod search;

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

const NO_WORKSPACE: &str = "no workspace is attached to this session";

/// The tools offered for `workspace`, sorted by name (stable prefix for provider prompt caches). File tools only when a workspace is set; run_command only when it allows commands; http_fetch always.
pub fn specs(workspace: Option<&Workspace>) -> Vec<ToolSpec> {
    let mut out = vec![fetch::spec()];
    if let Some(ws) = workspace {
        out.extend([fs::read_file_spec(), fs::list_dir_spec()]);
        out.extend([search::grep_spec(), search::find_files_spec()]);
        if ws.allow_commands {
            out.push(command::spec());
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Runs one call. Never panics and never returns Err: bad arguments, unknown tools, escapes and failures are `ToolOutput::error` with a clear message for the model.
pub async fn run(name: &str, arguments: &str, ctx: &ToolContext) -> ToolOutput {
    // A bug in one tool must not take the agent turn down with it; the model gets an error.
    match AssertUnwindSafe(dispatch(name, arguments, ctx))
        .catch_unwind()
        .await
    {
        Ok(out) => out,
        Err(_) => ToolOutput::error(format!("tool {name} failed with an internal error")),
    }
}

async fn dispatch(name: &str, arguments: &str, ctx: &ToolContext) -> ToolOutput {
    match name {
        "http_fetch" => match parse_args(name, arguments) {
            Ok(args) => fetch::http_fetch(args, ctx).await,
            Err(e) => e,
        },
        "run_command" => {
            let Some(ws) = &ctx.workspace else {
                return ToolOutput::error(NO_WORKSPACE);
            };
            if !ws.allow_commands {
                return ToolOutput::error(format!(
                    "run_command is not enabled for workspace {:?}",
                    ws.name
                ));
            }
            match parse_args(name, arguments) {
                Ok(args) => command::run_command(args, ws, &ctx.cancel).await,
                Err(e) => e,
            }
        }
        "read_file" | "list_dir" | "grep" | "find_files" => {
            let Some(ws) = ctx.workspace.clone() else {
                return ToolOutput::error(NO_WORKSPACE);
            };
            let (tool, arguments) = (name.to_owned(), arguments.to_owned());
            let cancel = ctx.cancel.clone();
            // Walks and reads are blocking filesystem work; keep them off the async workers.
            let job = tokio::task::spawn_blocking(move || {
                let root = match fs::Root::open(&ws) {
                    Ok(root) => root,
                    Err(e) => return ToolOutput::error(e),
                };
                let out = match tool.as_str() {
                    "read_file" => parse_args(&tool, &arguments).map(|a| fs::read_file(&root, a)),
                    "list_dir" => parse_args(&tool, &arguments).map(|a| fs::list_dir(&root, a)),
                    "grep" => {
                        parse_args(&tool, &arguments).map(|a| search::grep(&root, a, &cancel))
                    }
                    _ => {
                        parse_args(&tool, &arguments).map(|a| search::find_files(&root, a, &cancel))
                    }
                };
                out.unwrap_or_else(|e| e)
            });
            match job.await {
                Ok(out) => out,
                Err(_) => ToolOutput::error(format!("tool {name} failed with an internal error")),
            }
        }
        _ => {
            let offered = specs(ctx.workspace.as_ref());
            let names: Vec<&str> = offered.iter().map(|s| s.name.as_str()).collect();
            ToolOutput::error(format!(
                "unknown tool {name:?}; available tools: {}",
                names.join(", ")
            ))
        }
    }
}

/// Arguments as the tool's struct; an empty string counts as `{}` because some providers send
/// that for calls without arguments.
fn parse_args<T: DeserializeOwned>(tool: &str, arguments: &str) -> Result<T, ToolOutput> {
    let raw = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| ToolOutput::error(format!("arguments for {tool} are not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ToolOutput::error(format!(
            "arguments for {tool} must be a JSON object"
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| ToolOutput::error(format!("invalid arguments for {tool}: {e}")))
}

/// A successful answer.
fn ok(content: String, truncated: bool, data: Value) -> ToolOutput {
    ToolOutput {
        content,
        is_error: false,
        truncated,
        data,
    }
}

/// A tool spec with a closed object schema (`additionalProperties: false`).
fn spec(name: &str, description: &str, properties: Value, required: &[&str]) -> ToolSpec {
    ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters: serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        }),
    }
}

/// Bytes as text. When `cut` (the bytes were truncated), a UTF-8 sequence split at the end is
/// dropped rather than shown as a replacement character.
fn lossy_text(buf: &[u8], cut: bool) -> String {
    let end = match std::str::from_utf8(buf) {
        Err(e) if cut && e.error_len().is_none() => e.valid_up_to(),
        _ => buf.len(),
    };
    String::from_utf8_lossy(buf.get(..end).unwrap_or(buf)).into_owned()
}

/// The first `max` characters of `s`, and whether anything was cut.
fn first_chars(s: &str, max: usize) -> (&str, bool) {
    match s.char_indices().nth(max) {
        Some((i, _)) => (s.get(..i).unwrap_or(s), true),
        None => (s, false),
    }
}
