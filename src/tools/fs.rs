//! Path safety for the workspace, plus `read_file` and `list_dir`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ToolOutput, ToolSpec, Workspace, lossy_text, ok, spec};

/// `read_file` output is cut at this many bytes of file text.
pub(super) const MAX_READ_BYTES: usize = 64 * 1024;
/// A file is binary when this much of its head holds a NUL byte (git's heuristic).
pub(super) const SNIFF_BYTES: u64 = 8 * 1024;
const MAX_DIR_ENTRIES: usize = 1000;

/// A workspace root, canonicalized once per call.
pub(super) struct Root {
    canon: PathBuf,
}

impl Root {
    /// Canonicalizes the workspace root; fails when it is missing or unreadable.
    pub(super) fn open(ws: &Workspace) -> Result<Root, String> {
        match ws.root.canonicalize() {
            Ok(canon) => Ok(Root { canon }),
            Err(e) => Err(format!(
                "the root of workspace {:?} ({}) is not available: {e}",
                ws.name,
                ws.root.display()
            )),
        }
    }

    /// The canonical root directory.
    pub(super) fn path(&self) -> &Path {
        &self.canon
    }

    /// Resolves a path argument to an existing path inside the workspace.
    ///
    /// Relative paths are joined to the root; absolute paths are accepted only if they land
    /// inside it. The result is canonical (no symlinks, no `..`), so it cannot name anything
    /// outside the root even when the argument goes through a symlink. (A symlink swapped in
    /// between this check and the open is not caught; only `run_command` could do that, and
    /// it can read outside the root anyway.)
    pub(super) fn resolve(&self, raw: &str) -> Result<PathBuf, String> {
        if raw.contains('\0') {
            return Err(format!("invalid path {raw:?}: contains a NUL byte"));
        }
        let joined = self.canon.join(if raw.is_empty() { "." } else { raw });
        match joined.canonicalize() {
            Ok(real) if real.starts_with(&self.canon) => Ok(real),
            Ok(_) => Err(format!("path escapes the workspace: {raw}")),
            // Say "escapes" for `../nope` too, so a model does not probe outside by name.
            Err(_) if !lexically_inside(&joined, &self.canon) => {
                Err(format!("path escapes the workspace: {raw}"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(format!("no such file or directory: {raw}"))
            }
            Err(e) => Err(format!("cannot access {raw}: {e}")),
        }
    }

    /// `path` (canonical, inside the root) as the model should name it: relative, or `.`.
    pub(super) fn display(&self, path: &Path) -> String {
        match path.strip_prefix(&self.canon) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => path.to_string_lossy().into_owned(),
        }
    }
}

/// Whether `path` stays under `root` after removing `.` and `..` without touching the disk.
fn lexically_inside(path: &Path, root: &Path) -> bool {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.starts_with(root)
}

/// Whether the head of `file` contains a NUL byte; leaves the cursor at the start.
pub(super) fn is_binary(file: &mut File) -> std::io::Result<bool> {
    let mut head = Vec::new();
    file.by_ref().take(SNIFF_BYTES).read_to_end(&mut head)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(head.contains(&0))
}

/// Arguments of `read_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadFileArgs {
    path: String,
    offset_line: Option<u64>,
    max_lines: Option<u64>,
}

/// The `read_file` spec.
pub(super) fn read_file_spec() -> ToolSpec {
    spec(
        "read_file",
        "Read a text file in the workspace. Output is cut at 64 KiB; when more remains, the \
         answer says which offset_line to continue from.",
        json!({
            "path": {"type": "string", "description": "File path relative to the workspace root."},
            "offset_line": {"type": "integer", "minimum": 1, "description": "First line to return (1-based). Default 1."},
            "max_lines": {"type": "integer", "minimum": 1, "description": "Return at most this many lines. Default: as many as fit in 64 KiB."},
        }),
        &["path"],
    )
}

/// Reads a window of lines of a text file.
pub(super) fn read_file(root: &Root, args: ReadFileArgs) -> ToolOutput {
    read_file_inner(root, &args).unwrap_or_else(ToolOutput::error)
}

fn read_file_inner(root: &Root, args: &ReadFileArgs) -> Result<ToolOutput, String> {
    let path = root.resolve(&args.path)?;
    let shown = root.display(&path);
    let io = |e: std::io::Error| format!("cannot read {shown}: {e}");
    let meta = std::fs::metadata(&path).map_err(io)?;
    if meta.is_dir() {
        return Err(format!("{shown} is a directory; use list_dir"));
    }
    if !meta.is_file() {
        return Err(format!("not a regular file: {shown}"));
    }
    let mut file = File::open(&path).map_err(io)?;
    if is_binary(&mut file).map_err(io)? {
        return Err(format!("not a text file: {shown}"));
    }
    let start = args.offset_line.unwrap_or(1).max(1);
    let max_lines = args.max_lines.unwrap_or(u64::MAX).max(1);
    let mut reader = BufReader::new(file);

    let mut line = 1;
    while line < start {
        if reader.skip_until(b'\n').map_err(io)? == 0 {
            let total = line - 1;
            let content = format!("(no line {start}: {shown} has {total} lines)");
            return Ok(ok(content, false, json!({"path": shown, "lines": 0})));
        }
        line += 1;
    }

    let (mut out, mut returned, mut truncated, mut next) = (Vec::new(), 0u64, false, None);
    loop {
        if returned == max_lines {
            if !reader.fill_buf().map_err(io)?.is_empty() {
                next = Some(line);
            }
            break;
        }
        let room = MAX_READ_BYTES - out.len();
        let before = out.len();
        // Bounded so one enormous line cannot pull a whole file into memory.
        let limit = room as u64 + 1;
        let n = reader
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut out)
            .map_err(io)?;
        if n == 0 {
            break;
        }
        if n > room {
            truncated = true;
            if returned == 0 {
                // A single line longer than the cap: show its head, continue after it.
                out.truncate(MAX_READ_BYTES);
                returned = 1;
                next = Some(line + 1);
            } else {
                // Stop at a line boundary so offset_line paging never splits a line.
                out.truncate(before);
                next = Some(line);
            }
            break;
        }
        returned += 1;
        line += 1;
    }

    let mut content = lossy_text(&out, truncated);
    if let Some(next) = next {
        let why = if truncated {
            "output cut at 64 KiB"
        } else {
            "more lines follow"
        };
        content.push_str(&format!("\n[{why}; continue with offset_line={next}]"));
    }
    let data = json!({
        "path": shown,
        "offset_line": start,
        "lines": returned,
        "next_offset_line": next,
        "truncated": truncated,
    });
    Ok(ok(content, truncated, data))
}

/// Arguments of `list_dir`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListDirArgs {
    path: Option<String>,
}

/// The `list_dir` spec.
pub(super) fn list_dir_spec() -> ToolSpec {
    spec(
        "list_dir",
        "List a directory in the workspace: one entry per line, sorted by name; directories end \
         in '/', symlinks in '@', files show their size. At most 1000 entries.",
        json!({
            "path": {"type": "string", "description": "Directory relative to the workspace root. Default: the root."},
        }),
        &[],
    )
}

/// Lists one directory, sorted by name.
pub(super) fn list_dir(root: &Root, args: ListDirArgs) -> ToolOutput {
    list_dir_inner(root, &args).unwrap_or_else(ToolOutput::error)
}

fn list_dir_inner(root: &Root, args: &ListDirArgs) -> Result<ToolOutput, String> {
    let dir = root.resolve(args.path.as_deref().unwrap_or("."))?;
    let shown = root.display(&dir);
    if !dir.is_dir() {
        return Err(format!("not a directory: {shown}"));
    }
    let io = |e: std::io::Error| format!("cannot list {shown}: {e}");
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        // DirEntry::file_type/metadata do not follow symlinks, so a link is reported as one.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let kind = match () {
            _ if kind.is_symlink() => "symlink",
            _ if kind.is_dir() => "dir",
            _ => "file",
        };
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        entries.push((entry.file_name().to_string_lossy().into_owned(), kind, size));
    }
    entries.sort();
    let truncated = entries.len() > MAX_DIR_ENTRIES;
    let total = entries.len();
    entries.truncate(MAX_DIR_ENTRIES);

    let mut content = String::new();
    for (name, kind, size) in &entries {
        match *kind {
            "dir" => content.push_str(&format!("{name}/\n")),
            "symlink" => content.push_str(&format!("{name}@\n")),
            _ => content.push_str(&format!("{name}  ({size} bytes)\n")),
        }
    }
    if entries.is_empty() {
        content.push_str(&format!("({shown} is empty)\n"));
    }
    if truncated {
        content.push_str(&format!("[showing {MAX_DIR_ENTRIES} of {total} entries]\n"));
    }
    let listed: Vec<Value> = entries
        .iter()
        .map(|(name, kind, size)| json!({"name": name, "type": kind, "size": size}))
        .collect();
    let data = json!({"path": shown, "entries": listed, "total": total, "truncated": truncated});
    Ok(ok(content, truncated, data))
}
