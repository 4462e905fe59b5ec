//! `run_command`: one program, no shell, in the workspace root with a scrubbed environment.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fs::Root;
use super::{ToolOutput, ToolSpec, Workspace, first_chars, lossy_text};

const DEFAULT_TIMEOUT_S: u64 = 30;
const MAX_TIMEOUT_S: u64 = 120;
/// Combined stdout+stderr is cut at this many characters.
const MAX_OUTPUT_CHARS: usize = 32_000;
/// Enough bytes for `MAX_OUTPUT_CHARS` characters of any UTF-8.
const MAX_OUTPUT_BYTES: usize = 4 * MAX_OUTPUT_CHARS;
/// The only PATH a command sees.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// After the program exits, how long to wait for pipes that a stray descendant still holds.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Arguments of `run_command`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunCommandArgs {
    argv: Vec<String>,
    timeout_s: Option<u64>,
}

/// The `run_command` spec.
pub(super) fn spec() -> ToolSpec {
    super::spec(
        "run_command",
        "Run a program in the workspace root. argv[0] is the program (looked up in \
         /usr/local/bin:/usr/bin:/bin), the rest are its arguments; there is NO shell, so pipes, \
         redirects, globs and variables are not interpreted (run e.g. [\"sh\",\"-c\",\"...\"] \
         only if sh is what you mean). The environment is only PATH, HOME (the workspace root) \
         and LANG. Returns combined stdout+stderr (cut at 32000 characters) and the exit code. \
         The program and everything it started are killed at the timeout.",
        json!({
            "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "Program and arguments, e.g. [\"cargo\", \"test\"]."},
            "timeout_s": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_S, "description": "Seconds before the command is killed. Default 30, at most 120."},
        }),
        &["argv"],
    )
}

/// Kills a process group when dropped, so an abandoned call (future dropped) leaves nothing
/// running.
struct GroupKill(Option<i32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
            // process group we created with process_group(0) (pgid == leader pid).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the wait ended.
enum End {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Cancelled,
}

/// Runs the command; see [`spec`] for the contract.
pub(super) async fn run_command(
    args: RunCommandArgs,
    ws: &Workspace,
    cancel: &CancellationToken,
) -> ToolOutput {
    let Some(program) = args.argv.first().filter(|p| !p.is_empty()) else {
        return ToolOutput::error("argv must start with a program name");
    };
    let timeout_s = args.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S);
    if !(1..=MAX_TIMEOUT_S).contains(&timeout_s) {
        return ToolOutput::error(format!(
            "timeout_s must be between 1 and {MAX_TIMEOUT_S} seconds, got {timeout_s}"
        ));
    }
    let root = match Root::open(ws) {
        Ok(root) => root,
        Err(e) => return ToolOutput::error(e),
    };
    if cancel.is_cancelled() {
        return ToolOutput::error("run_command was cancelled before it started");
    }

    let mut cmd = Command::new(program);
    cmd.args(args.argv.iter().skip(1))
        .current_dir(root.path())
        // Nothing of spool's own environment (DATABASE_URL, API keys) may reach the command.
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", root.path())
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own group, so a timeout can kill everything the program started, not just it.
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ToolOutput::error(format!(
                "command not found: {program} (PATH is {PATH}; there is no shell)"
            ));
        }
        Err(e) => return ToolOutput::error(format!("could not start {program}: {e}")),
    };
    let mut group = GroupKill(child.id().and_then(|id| i32::try_from(id).ok()));
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let (mut out, mut total) = (Vec::new(), 0usize);
    let (mut obuf, mut ebuf) = ([0u8; 8192], [0u8; 8192]);
    let deadline = tokio::time::sleep(Duration::from_secs(timeout_s));
    tokio::pin!(deadline);
    // Armed once the program exits; until then it is far away.
    let grace = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(grace);
    let mut status = None;

    let end = loop {
        if stdout.is_none()
            && stderr.is_none()
            && let Some(s) = status.take()
        {
            break End::Exited(s);
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                // A program that already exited keeps its real status.
                break status.take().map_or(End::Cancelled, End::Exited);
            }
            _ = &mut deadline, if status.is_none() => break End::TimedOut,
            _ = &mut grace, if status.is_some() => {
                if let Some(s) = status.take() {
                    break End::Exited(s);
                }
            }
            r = child.wait(), if status.is_none() => {
                // Background processes it left behind go too; their output so far is kept.
                group.kill();
                status = Some(r);
                grace.as_mut().reset(Instant::now() + DRAIN_GRACE);
            }
            n = read_some(&mut stdout, &mut obuf), if stdout.is_some() => {
                keep(&mut stdout, n, &obuf, &mut out, &mut total);
            }
            n = read_some(&mut stderr, &mut ebuf), if stderr.is_some() => {
                keep(&mut stderr, n, &ebuf, &mut out, &mut total);
            }
        }
    };

    let (exit, timed_out, cancelled) = match end {
        End::Exited(r) => (Some(r), false, false),
        End::TimedOut => (None, true, false),
        End::Cancelled => (None, false, true),
    };
    if exit.is_none() {
        group.kill();
        // Reap the leader (it was SIGKILLed, so this is quick) and keep what is still buffered.
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        let drain = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(drain);
        while stdout.is_some() || stderr.is_some() {
            tokio::select! {
                _ = &mut drain => break,
                n = read_some(&mut stdout, &mut obuf), if stdout.is_some() => {
                    keep(&mut stdout, n, &obuf, &mut out, &mut total);
                }
                n = read_some(&mut stderr, &mut ebuf), if stderr.is_some() => {
                    keep(&mut stderr, n, &ebuf, &mut out, &mut total);
                }
            }
        }
    }
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

    let text = lossy_text(&out, total > out.len());
    let (text, cut) = first_chars(&text, MAX_OUTPUT_CHARS);
    let truncated = cut || total > out.len();
    let status = match &exit {
        Some(Ok(s)) => Some(*s),
        _ => None,
    };
    let exit_code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    let summary = match (&exit, exit_code, signal) {
        (Some(Err(e)), _, _) => format!("waiting for the command failed: {e}"),
        (_, Some(code), _) => format!("exit code {code} after {duration_ms} ms"),
        (_, _, Some(sig)) => format!("killed by signal {sig} after {duration_ms} ms"),
        _ if timed_out => format!("timed out after {timeout_s} s; the command was killed"),
        _ if cancelled => format!("cancelled after {duration_ms} ms; the command was killed"),
        _ => format!("ended without an exit status after {duration_ms} ms"),
    };
    let mut content = String::from(text);
    if !content.is_empty() && !content.ends_with('\n') {
        content.push('\n');
    }
    if truncated {
        content.push_str(&format!("[output cut at {MAX_OUTPUT_CHARS} characters]\n"));
    }
    content.push_str(&format!("[{summary}]"));
    ToolOutput {
        content,
        // A non-zero exit is an answer the model reads; not finishing at all is an error.
        is_error: timed_out || cancelled || matches!(exit, Some(Err(_))),
        truncated,
        data: json!({
            "argv": args.argv,
            "exit_code": exit_code,
            "signal": signal,
            "timed_out": timed_out,
            "cancelled": cancelled,
            "duration_ms": duration_ms,
            "truncated": truncated,
            "output": text,
        }),
    }
}

/// Reads from a pipe that is still open; pending forever when it is closed.
async fn read_some<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match pipe {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Appends a read to the capped output (reading on past the cap so the program never blocks
/// on a full pipe); closes the pipe at EOF or error.
fn keep<R>(
    pipe: &mut Option<R>,
    n: std::io::Result<usize>,
    buf: &[u8],
    out: &mut Vec<u8>,
    total: &mut usize,
) {
    match n {
        Ok(0) | Err(_) => *pipe = None,
        Ok(n) => {
            let chunk = buf.get(..n).unwrap_or(buf);
            let room = MAX_OUTPUT_BYTES.saturating_sub(out.len());
            out.extend_from_slice(chunk.get(..room.min(n)).unwrap_or(chunk));
            *total = total.saturating_add(n);
        }
    }
}
