//! The agent's tools: specs and gating, workspace path safety, file tools, run_command and
//! http_fetch. No database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spool::tools::{self, ToolContext, ToolOutput, Workspace};
use tokio_util::sync::CancellationToken;

/// A throwaway workspace directory, removed on drop.
struct TempWs {
    dir: PathBuf,
}

impl Drop for TempWs {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks, so link_out's target is safe.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TempWs {
    fn workspace(&self, allow_commands: bool) -> Workspace {
        Workspace {
            name: "test".into(),
            root: self.dir.clone(),
            allow_commands,
        }
    }
}

/// hello.txt, sub/inner.rs, sub/deep/x.rs, big.txt (> 64 KiB), bin.dat (has a NUL),
/// .git/config, link_out -> /etc, link_in -> hello.txt.
fn temp_ws() -> TempWs {
    let dir = std::env::temp_dir().join(format!("spool-tools-{}", uuid::Uuid::new_v4()));
    let w = |rel: &str, bytes: &[u8]| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    };
    w("hello.txt", b"line one\nline two\nneedle here\n");
    w("sub/inner.rs", b"fn main() {\n    needle();\n}\n");
    w("sub/deep/x.rs", b"// nothing to see\n");
    let big: String = (1..=20_000).map(|i| format!("line {i}\n")).collect();
    w("big.txt", big.as_bytes());
    w("bin.dat", b"needle\0\x01\x02needle\n");
    w(".git/config", b"needle in git\n");
    std::os::unix::fs::symlink("/etc", dir.join("link_out")).expect("symlink out");
    std::os::unix::fs::symlink("hello.txt", dir.join("link_in")).expect("symlink in");
    TempWs { dir }
}

fn ctx(workspace: Option<Workspace>) -> ToolContext {
    ToolContext {
        workspace,
        cancel: CancellationToken::new(),
        http: reqwest::Client::new(),
        allow_loopback: false,
        allow_private: false,
    }
}

async fn call(ctx: &ToolContext, name: &str, args: Value) -> ToolOutput {
    tools::run(name, &args.to_string(), ctx).await
}

fn assert_error(out: &ToolOutput, needle: &str) {
    assert!(out.is_error, "expected an error, got {out:?}");
    assert!(
        out.content.contains(needle),
        "error {:?} should mention {needle:?}",
        out.content
    );
}

fn assert_ok(out: &ToolOutput) {
    assert!(!out.is_error, "expected success, got {out:?}");
}

/// Calls a tool and asserts it answers with an error mentioning `needle`.
async fn err(ctx: &ToolContext, name: &str, args: Value, needle: &str) {
    assert_error(&call(ctx, name, args).await, needle);
}

fn names(ws: Option<&Workspace>) -> Vec<String> {
    tools::specs(ws).into_iter().map(|s| s.name).collect()
}

#[test]
fn specs_are_sorted_and_gated() {
    let t = temp_ws();
    assert_eq!(names(None), ["http_fetch"]);
    let plain = t.workspace(false);
    assert_eq!(
        names(Some(&plain)),
        ["find_files", "grep", "http_fetch", "list_dir", "read_file"]
    );
    let cmds = t.workspace(true);
    let all = tools::specs(Some(&cmds));
    let all_names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        all_names,
        [
            "find_files",
            "grep",
            "http_fetch",
            "list_dir",
            "read_file",
            "run_command"
        ]
    );
    for s in &all {
        assert_eq!(s.parameters["type"], "object", "{}", s.name);
        assert_eq!(s.parameters["additionalProperties"], false, "{}", s.name);
        assert!(!s.description.is_empty(), "{}", s.name);
        for r in s.parameters["required"].as_array().expect("required") {
            let r = r.as_str().expect("name");
            assert!(
                s.parameters["properties"].get(r).is_some(),
                "{}.{r}",
                s.name
            );
        }
    }
}

#[tokio::test]
async fn read_file_reads_windows_and_truncates_at_64_kib() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(false)));
    let out = call(&c, "read_file", json!({"path": "hello.txt"})).await;
    assert_ok(&out);
    assert_eq!(out.content, "line one\nline two\nneedle here\n");
    assert!(!out.truncated);

    let out = call(
        &c,
        "read_file",
        json!({"path": "hello.txt", "offset_line": 2, "max_lines": 1}),
    )
    .await;
    assert_ok(&out);
    assert!(out.content.starts_with("line two\n\n["), "{}", out.content);
    assert_eq!(out.data["next_offset_line"], 3);
    assert!(!out.truncated);

    let out = call(&c, "read_file", json!({"path": "big.txt"})).await;
    assert_ok(&out);
    assert!(out.truncated && out.data["truncated"] == true);
    let text = out.content.split("\n[").next().expect("text");
    assert!(
        text.len() <= 64 * 1024 && text.len() > 60 * 1024,
        "{}",
        text.len()
    );
    assert!(text.starts_with("line 1\n") && text.ends_with('\n'));
    let next = out.data["next_offset_line"].as_u64().expect("next");
    let last = text.lines().last().expect("last line");
    assert_eq!(last, format!("line {}", next - 1));
    let more = call(
        &c,
        "read_file",
        json!({"path": "big.txt", "offset_line": next}),
    )
    .await;
    assert!(more.content.starts_with(&format!("line {next}\n")));

    err(
        &c,
        "read_file",
        json!({"path": "bin.dat"}),
        "not a text file",
    )
    .await;
    err(&c, "read_file", json!({"path": "nope.txt"}), "no such file").await;
    err(&c, "read_file", json!({"path": "sub"}), "is a directory").await;
}

#[tokio::test]
async fn paths_cannot_escape_the_workspace() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(false)));
    let escapes = "path escapes the workspace";
    for path in ["../", "..", "sub/../../x", "/etc/passwd", "link_out/passwd"] {
        let out = call(&c, "read_file", json!({"path": path})).await;
        assert_error(&out, escapes);
    }
    err(&c, "list_dir", json!({"path": "link_out"}), escapes).await;
    err(
        &c,
        "grep",
        json!({"pattern": "root", "path": "link_out"}),
        escapes,
    )
    .await;
    err(
        &c,
        "find_files",
        json!({"pattern": "*", "path": "/etc"}),
        escapes,
    )
    .await;

    // A symlink to a file inside is fine, and so is an absolute path inside the root.
    let out = call(&c, "read_file", json!({"path": "link_in"})).await;
    assert_ok(&out);
    assert!(out.content.starts_with("line one"));
    let abs = t.dir.canonicalize().expect("root").join("sub/inner.rs");
    let out = call(
        &c,
        "read_file",
        json!({"path": abs.to_str().expect("utf8")}),
    )
    .await;
    assert_ok(&out);
    assert!(out.content.contains("needle();"));
}

#[tokio::test]
async fn list_dir_reports_sorted_typed_entries() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(false)));
    let out = call(&c, "list_dir", json!({})).await;
    assert_ok(&out);
    let entries = out.data["entries"].as_array().expect("entries");
    let got: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("n"),
                e["type"].as_str().expect("t"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (".git", "dir"),
            ("big.txt", "file"),
            ("bin.dat", "file"),
            ("hello.txt", "file"),
            ("link_in", "symlink"),
            ("link_out", "symlink"),
            ("sub", "dir"),
        ]
    );
    assert_eq!(entries[3]["size"], 30);
    assert!(out.content.contains("sub/\n") && out.content.contains("link_out@\n"));
    assert!(!out.truncated);

    let out = call(&c, "list_dir", json!({"path": "sub"})).await;
    assert_eq!(out.content, "deep/\ninner.rs  (28 bytes)\n");
    err(
        &c,
        "list_dir",
        json!({"path": "hello.txt"}),
        "not a directory",
    )
    .await;

    let many = temp_ws();
    for i in 0..1005 {
        std::fs::write(many.dir.join(format!("f{i:04}")), b"").expect("write");
    }
    let out = call(&ctx(Some(many.workspace(false))), "list_dir", json!({})).await;
    assert!(out.truncated);
    assert_eq!(out.data["entries"].as_array().expect("entries").len(), 1000);
}

#[tokio::test]
async fn grep_finds_lines_and_skips_binary_git_and_symlinks() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(false)));
    let out = call(&c, "grep", json!({"pattern": "needle"})).await;
    assert_ok(&out);
    assert_eq!(
        out.content,
        "hello.txt:3: needle here\nsub/inner.rs:2:     needle();\n"
    );
    assert_eq!(out.data["matches"], 2);
    assert_eq!(out.data["binary_skipped"], 1);
    assert!(!out.truncated);

    let out = call(&c, "grep", json!({"pattern": "needle", "max_matches": 1})).await;
    assert_eq!(out.content.lines().next(), Some("hello.txt:3: needle here"));
    assert!(out.truncated);

    let out = call(&c, "grep", json!({"pattern": "Needle"})).await;
    assert_ok(&out);
    assert_eq!(out.data["matches"], 0, "case-sensitive");
    let out = call(&c, "grep", json!({"pattern": "line", "path": "sub"})).await;
    assert_eq!(out.data["matches"], 0);
    err(&c, "grep", json!({"pattern": ""}), "empty").await;
}

#[tokio::test]
async fn find_files_matches_names_with_wildcards() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(false)));
    let out = call(&c, "find_files", json!({"pattern": "*.rs"})).await;
    assert_ok(&out);
    assert_eq!(out.content, "sub/deep/x.rs\nsub/inner.rs");
    let out = call(&c, "find_files", json!({"pattern": "hello.???"})).await;
    assert_eq!(out.data["files"], json!(["hello.txt"]));
    let out = call(&c, "find_files", json!({"pattern": "config"})).await;
    assert_eq!(out.data["files"], json!([]), ".git is skipped");
    let out = call(
        &c,
        "find_files",
        json!({"pattern": "*", "path": "sub/deep"}),
    )
    .await;
    assert_eq!(out.data["files"], json!(["sub/deep/x.rs"]));
}

#[tokio::test]
async fn without_a_workspace_file_tools_and_commands_are_refused() {
    let c = ctx(None);
    for (name, args) in [
        ("read_file", json!({"path": "x"})),
        ("list_dir", json!({})),
        ("grep", json!({"pattern": "x"})),
        ("find_files", json!({"pattern": "x"})),
        ("run_command", json!({"argv": ["true"]})),
    ] {
        let out = call(&c, name, args).await;
        assert_error(&out, "no workspace is attached to this session");
    }
    let t = temp_ws();
    let out = call(
        &ctx(Some(t.workspace(false))),
        "run_command",
        json!({"argv": ["true"]}),
    )
    .await;
    assert_error(&out, "not enabled");
}

#[tokio::test]
async fn unknown_tools_and_bad_arguments_are_tool_errors() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(false)));
    assert_error(&tools::run("rm_rf", "{}", &c).await, "unknown tool");
    assert_error(
        &tools::run("read_file", "{\"path\": ", &c).await,
        "not valid JSON",
    );
    assert_error(
        &tools::run("read_file", "[1]", &c).await,
        "must be a JSON object",
    );
    err(
        &c,
        "read_file",
        json!({"path": "hello.txt", "mode": "x"}),
        "unknown field",
    )
    .await;
    err(&c, "read_file", json!({}), "missing field `path`").await;
    // An empty string means "no arguments".
    assert_ok(&tools::run("list_dir", "", &c).await);
}

#[tokio::test]
async fn run_command_runs_argv_in_the_root_without_a_shell() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(true)));
    let out = call(&c, "run_command", json!({"argv": ["echo", "hi"]})).await;
    assert_ok(&out);
    assert_eq!(out.data["exit_code"], 0);
    assert_eq!(out.data["timed_out"], false);
    assert_eq!(out.data["output"], "hi\n");
    assert!(out.content.starts_with("hi\n") && out.content.contains("exit code 0"));
    assert!(out.data["duration_ms"].is_u64());

    let out = call(&c, "run_command", json!({"argv": ["pwd"]})).await;
    let root = t.dir.canonicalize().expect("root");
    assert_eq!(out.data["output"], format!("{}\n", root.display()));

    // No shell: `$HOME` and `;` are plain arguments.
    let out = call(&c, "run_command", json!({"argv": ["echo", "$HOME;", "x"]})).await;
    assert_eq!(out.data["output"], "$HOME; x\n");

    let out = call(&c, "run_command", json!({"argv": ["false"]})).await;
    assert_ok(&out);
    assert_eq!(out.data["exit_code"], 1);
    err(
        &c,
        "run_command",
        json!({"argv": ["no-such-program-xyz"]}),
        "command not found",
    )
    .await;
    err(&c, "run_command", json!({"argv": []}), "argv").await;
}

#[tokio::test]
async fn run_command_scrubs_the_environment() {
    // A variable only this test sets, so other tests are not disturbed.
    // SAFETY: set once, before any command runs in this test; std serialises its own env
    // access, and no test calls libc getenv directly.
    unsafe { std::env::set_var("SPOOL_TEST_SECRET", "hunter2") };
    assert_eq!(std::env::var("SPOOL_TEST_SECRET").as_deref(), Ok("hunter2"));
    let t = temp_ws();
    let c = ctx(Some(t.workspace(true)));
    let out = call(&c, "run_command", json!({"argv": ["env"]})).await;
    assert_ok(&out);
    let output = out.data["output"].as_str().expect("output");
    assert!(!output.contains("SPOOL_TEST_SECRET") && !output.contains("hunter2"));
    assert!(!output.contains("DATABASE_URL"));
    let mut keys: Vec<&str> = output.lines().filter_map(|l| l.split('=').next()).collect();
    keys.sort();
    assert_eq!(keys, ["HOME", "LANG", "PATH"], "{output}");
    let root = t.dir.canonicalize().expect("root");
    assert!(output.contains(&format!("HOME={}\n", root.display())));
    assert!(output.contains("PATH=/usr/local/bin:/usr/bin:/bin\n"));
    assert!(output.contains("LANG=C.UTF-8\n"));
}

/// Whether a process is still running (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The pid printed on the first line of a command's output.
fn first_pid(out: &ToolOutput) -> u32 {
    let output = out.data["output"].as_str().expect("output");
    output
        .lines()
        .next()
        .expect("a line")
        .trim()
        .parse()
        .expect("pid")
}

async fn wait_gone(pid: u32) -> bool {
    for _ in 0..50 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn run_command_times_out_and_kills_the_group() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(true)));
    let started = Instant::now();
    let out = call(
        &c,
        "run_command",
        json!({"argv": ["sleep", "5"], "timeout_s": 1}),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(out.is_error);
    assert_eq!(out.data["timed_out"], true);
    assert_eq!(out.data["exit_code"], Value::Null);
    assert!(out.content.contains("timed out"));

    // A background grandchild is in the same group and dies with it.
    let argv = json!(["sh", "-c", "sleep 30 & echo $!; wait"]);
    let out = call(&c, "run_command", json!({"argv": argv, "timeout_s": 1})).await;
    assert_eq!(out.data["timed_out"], true);
    assert!(
        wait_gone(first_pid(&out)).await,
        "background sleep survived"
    );

    err(
        &c,
        "run_command",
        json!({"argv": ["true"], "timeout_s": 500}),
        "timeout_s",
    )
    .await;
}

#[tokio::test]
async fn run_command_caps_output() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(true)));
    let out = call(&c, "run_command", json!({"argv": ["seq", "1", "100000"]})).await;
    assert_ok(&out);
    assert_eq!(out.data["exit_code"], 0);
    assert!(out.truncated && out.data["truncated"] == true);
    let output = out.data["output"].as_str().expect("output");
    assert_eq!(output.chars().count(), 32_000);
    assert!(output.starts_with("1\n2\n3\n"));
    assert!(out.content.contains("output cut at 32000 characters"));
}

#[tokio::test]
async fn run_command_stops_on_cancel() {
    let t = temp_ws();
    let c = ctx(Some(t.workspace(true)));
    let cancel = c.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let argv = json!(["sh", "-c", "sleep 30 & echo $!; wait"]);
    let out = call(&c, "run_command", json!({"argv": argv})).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(out.is_error);
    assert_eq!(out.data["cancelled"], true);
    assert_eq!(out.data["exit_code"], Value::Null);
    assert!(
        wait_gone(first_pid(&out)).await,
        "sleep survived the cancel"
    );
}

async fn server() -> SocketAddr {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/hello", get(|| async { "hello from axum" }))
        .route("/big", get(|| async { "x".repeat(5000) }))
        .route(
            "/redirect",
            get(|| async { axum::response::Redirect::temporary("http://example.com/next") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn http_fetch_respects_the_network_policy() {
    let addr = server().await;
    let c = ctx(None);
    let url = format!("http://{addr}/hello");
    let out = call(&c, "http_fetch", json!({"url": url})).await;
    assert_error(&out, "loopback");
    let out = call(&c, "http_fetch", json!({"url": "http://169.254.169.254/"})).await;
    assert_error(&out, "link-local");
    let out = call(&c, "http_fetch", json!({"url": "file:///etc/passwd"})).await;
    assert_error(&out, "http or https");

    let c = ToolContext {
        allow_loopback: true,
        ..ctx(None)
    };
    let out = call(&c, "http_fetch", json!({"url": url})).await;
    assert_ok(&out);
    assert!(out.content.starts_with("HTTP 200 OK\n"), "{}", out.content);
    assert!(out.content.ends_with("\n\nhello from axum"));
    assert_eq!(out.data["status"], 200);
    assert!(!out.truncated);

    let out = call(
        &c,
        "http_fetch",
        json!({"url": format!("http://{addr}/big"), "max_bytes": 100}),
    )
    .await;
    assert!(out.truncated);
    assert_eq!(out.data["bytes"], 100);

    let out = call(
        &c,
        "http_fetch",
        json!({"url": format!("http://{addr}/redirect")}),
    )
    .await;
    assert_ok(&out);
    assert_eq!(out.data["status"], 307);
    assert!(
        out.content.contains("http://example.com/next") && out.content.contains("not followed")
    );
}
