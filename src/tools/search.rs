//! `grep` and `find_files`: recursive, sorted walks that never follow symlinks.

use std::fs::{File, FileType};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::fs::{MAX_READ_BYTES, Root, is_binary};
use super::{ToolOutput, ToolSpec, first_chars, lossy_text, ok, spec};

const MAX_MATCHES: usize = 200;
const MAX_FOUND: usize = 1000;
/// A matched line is shown up to this many characters (minified files have huge lines).
const MAX_LINE_CHARS: usize = 500;
/// Lines are searched up to this many bytes; the rest of a longer line is skipped.
const MAX_LINE_BYTES: u64 = 1024 * 1024;
/// Walks stop after this many entries so a huge tree cannot pin a thread for long.
const MAX_WALK: usize = 200_000;

/// Why a walk ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The visitor has enough.
    Done,
    Cancelled,
    TooManyEntries,
}

/// Visits `start` (a file, or a directory walked depth-first in name order), skipping `.git`
/// and unreadable directories and never following symlinks. `visit` returns false to stop.
fn walk(
    start: &Path,
    cancel: &CancellationToken,
    mut visit: impl FnMut(&Path, FileType) -> bool,
) -> Option<Stop> {
    let mut stack: Vec<(PathBuf, FileType)> = Vec::new();
    match std::fs::symlink_metadata(start) {
        Ok(m) => stack.push((start.to_path_buf(), m.file_type())),
        Err(_) => return None,
    }
    let mut seen = 0usize;
    while let Some((path, kind)) = stack.pop() {
        if cancel.is_cancelled() {
            return Some(Stop::Cancelled);
        }
        seen += 1;
        if seen > MAX_WALK {
            return Some(Stop::TooManyEntries);
        }
        if !kind.is_dir() {
            if !visit(&path, kind) {
                return Some(Stop::Done);
            }
            continue;
        }
        let Ok(dir) = std::fs::read_dir(&path) else {
            continue;
        };
        let mut children: Vec<(PathBuf, FileType)> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != ".git")
            .filter_map(|e| Some((e.path(), e.file_type().ok()?)))
            .collect();
        // Reverse order on a stack pops in name order.
        children.sort_by(|a, b| b.0.cmp(&a.0));
        stack.extend(children);
    }
    None
}

/// Arguments of `grep`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrepArgs {
    pattern: String,
    path: Option<String>,
    max_matches: Option<u64>,
}

/// The `grep` spec.
pub(super) fn grep_spec() -> ToolSpec {
    spec(
        "grep",
        "Search text files in the workspace for a plain, case-sensitive substring (not a regex). \
         Recursive; skips .git, symlinks and binary files. Prints 'file:line: text' with paths \
         relative to the workspace root. At most 200 matches or 64 KiB.",
        json!({
            "pattern": {"type": "string", "minLength": 1, "description": "Exact text to find."},
            "path": {"type": "string", "description": "File or directory to search, relative to the workspace root. Default: the root."},
            "max_matches": {"type": "integer", "minimum": 1, "maximum": MAX_MATCHES, "description": "Stop after this many matches. Default 200."},
        }),
        &["pattern"],
    )
}

/// Finds lines containing a substring.
pub(super) fn grep(root: &Root, args: GrepArgs, cancel: &CancellationToken) -> ToolOutput {
    if args.pattern.is_empty() {
        return ToolOutput::error("pattern must not be empty");
    }
    let start = match root.resolve(args.path.as_deref().unwrap_or(".")) {
        Ok(p) => p,
        Err(e) => return ToolOutput::error(e),
    };
    let max = args.max_matches.unwrap_or(MAX_MATCHES as u64);
    let max = usize::try_from(max)
        .unwrap_or(MAX_MATCHES)
        .clamp(1, MAX_MATCHES);
    let (mut out, mut matches, mut truncated) = (String::new(), 0usize, false);
    let (mut searched, mut binary) = (0usize, 0usize);
    let stop = walk(&start, cancel, |path, kind| {
        if !kind.is_file() {
            return true;
        }
        let Ok(mut file) = File::open(path) else {
            return true;
        };
        match is_binary(&mut file) {
            Ok(false) => {}
            Ok(true) => {
                binary += 1;
                return true;
            }
            Err(_) => return true,
        }
        searched += 1;
        let shown = root.display(path);
        let mut reader = BufReader::new(file);
        let (mut buf, mut line_no) = (Vec::new(), 0u64);
        loop {
            buf.clear();
            let Ok(n) = reader
                .by_ref()
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut buf)
            else {
                return true;
            };
            if n == 0 {
                return true;
            }
            line_no += 1;
            if buf.last() != Some(&b'\n') && n as u64 == MAX_LINE_BYTES {
                // Skip what is left of an over-long line so line numbers stay right.
                if reader.skip_until(b'\n').is_err() {
                    return true;
                }
            }
            let text = lossy_text(&buf, true);
            if !text.contains(&args.pattern) {
                continue;
            }
            // One match past the cap proves there is more, so `truncated` is exact.
            if matches == max {
                truncated = true;
                return false;
            }
            let text = text.trim_end_matches(['\n', '\r']);
            let (text, cut) = first_chars(text, MAX_LINE_CHARS);
            let ellipsis = if cut { "…" } else { "" };
            let line = format!("{shown}:{line_no}: {text}{ellipsis}\n");
            if out.len() + line.len() > MAX_READ_BYTES {
                truncated = true;
                return false;
            }
            out.push_str(&line);
            matches += 1;
        }
    });
    if stop == Some(Stop::Cancelled) {
        return ToolOutput::error("grep was cancelled");
    }
    let walk_cut = stop == Some(Stop::TooManyEntries);
    if matches == 0 {
        out = format!(
            "no matches for {:?} in {}\n",
            args.pattern,
            root.display(&start)
        );
    }
    if truncated || walk_cut {
        out.push_str(&format!(
            "[stopped after {matches} matches; narrow the path or pattern]\n"
        ));
    }
    let data = json!({
        "matches": matches,
        "files_searched": searched,
        "binary_skipped": binary,
        "truncated": truncated || walk_cut,
    });
    ok(out, truncated || walk_cut, data)
}

/// Arguments of `find_files`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FindFilesArgs {
    pattern: String,
    path: Option<String>,
}

/// The `find_files` spec.
pub(super) fn find_files_spec() -> ToolSpec {
    spec(
        "find_files",
        "Find files in the workspace whose name matches a glob: '*' matches any run of \
         characters, '?' exactly one; everything else is literal. Matches file names only (not \
         directories, not paths). Recursive; skips .git; does not follow symlinks. Paths are \
         relative to the workspace root, sorted. At most 1000 results.",
        json!({
            "pattern": {"type": "string", "minLength": 1, "description": "Glob for the file name, e.g. '*.rs' or 'Cargo.???'."},
            "path": {"type": "string", "description": "Directory to search, relative to the workspace root. Default: the root."},
        }),
        &["pattern"],
    )
}

/// Lists files whose name matches a `*`/`?` glob.
pub(super) fn find_files(
    root: &Root,
    args: FindFilesArgs,
    cancel: &CancellationToken,
) -> ToolOutput {
    if args.pattern.is_empty() {
        return ToolOutput::error("pattern must not be empty");
    }
    if args.pattern.contains('/') {
        return ToolOutput::error(
            "pattern matches file names only and cannot contain '/'; use path to pick a directory",
        );
    }
    let start = match root.resolve(args.path.as_deref().unwrap_or(".")) {
        Ok(p) => p,
        Err(e) => return ToolOutput::error(e),
    };
    let pattern: Vec<char> = args.pattern.chars().collect();
    let (mut found, mut truncated) = (Vec::new(), false);
    let stop = walk(&start, cancel, |path, _kind| {
        let Some(name) = path.file_name() else {
            return true;
        };
        let name: Vec<char> = name.to_string_lossy().chars().collect();
        if glob_match(&pattern, &name) {
            if found.len() == MAX_FOUND {
                truncated = true;
                return false;
            }
            found.push(root.display(path));
        }
        true
    });
    if stop == Some(Stop::Cancelled) {
        return ToolOutput::error("find_files was cancelled");
    }
    let truncated = truncated || stop == Some(Stop::TooManyEntries);
    let mut content = found.join("\n");
    if found.is_empty() {
        content = format!(
            "no files named {:?} under {}",
            args.pattern,
            root.display(&start)
        );
    }
    if truncated {
        content.push_str(&format!("\n[stopped after {} files]", found.len()));
    }
    let data = json!({"files": found, "truncated": truncated});
    ok(content, truncated, data)
}

/// Whether `name` matches `pattern`, where `*` is any run and `?` any one character.
fn glob_match(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was and which name position it is currently standing in for.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry.
                Some((sp, sn)) => {
                    star = Some((sp, sn + 1));
                    p = sp + 1;
                    n = sn + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    fn m(p: &str, n: &str) -> bool {
        let p: Vec<char> = p.chars().collect();
        let n: Vec<char> = n.chars().collect();
        glob_match(&p, &n)
    }

    #[test]
    fn glob_wildcards() {
        assert!(m("*.rs", "main.rs"));
        assert!(!m("*.rs", "main.rsx"));
        assert!(m("Cargo.???", "Cargo.tom") && !m("Cargo.???", "Cargo.toml"));
        assert!(m("*a*b*", "xxaxxbxx") && !m("*a*b*", "xxbxxaxx"));
        assert!(m("*", "") && !m("?", ""));
        assert!(m("é?", "éx"));
    }
}
