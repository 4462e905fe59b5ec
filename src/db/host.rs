//! The operating-system side of the embedded launcher: finding the server binaries, the
//! unprivileged account to run them as, directory ownership, and the death signal.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::embedded::{LaunchError, io_err};

/// The account the server runs as when we are root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// First directory holding both `initdb` and `postgres`: PATH, then the highest Debian version.
pub(crate) fn find_binaries() -> Option<PathBuf> {
    let has_both =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"));
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Some(dir);
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// initdb and postgres both refuse to run as root, so root hands the cluster to `postgres`.
pub(crate) fn run_as() -> Result<Option<RunAs>, LaunchError> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: the name is a valid C string; the returned record is copied out before any other
    // getpw* call could overwrite it.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return Err(LaunchError::NoPostgresUser);
    }
    // SAFETY: non-null pointer returned by getpwnam points at a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

/// Creates `dir` (0700, owned by the server's user) and checks that user can reach it.
pub(crate) fn prepare_dir(dir: &Path, run_as: Option<RunAs>) -> Result<PathBuf, LaunchError> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    // Absolute, because the server runs with its own working directory.
    let dir = fs::canonicalize(dir).map_err(io_err(format!("resolving {}", dir.display())))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("setting permissions on {}", dir.display())))?;
    let Some(run_as) = run_as else {
        return Ok(dir);
    };
    std::os::unix::fs::chown(&dir, Some(run_as.uid), Some(run_as.gid)).map_err(io_err(format!(
        "handing {} to the postgres user",
        dir.display()
    )))?;
    for ancestor in dir.ancestors().skip(1) {
        let meta =
            fs::metadata(ancestor).map_err(io_err(format!("inspecting {}", ancestor.display())))?;
        // Approximation: supplementary groups of `postgres` are not considered.
        let shift = match (meta.uid() == run_as.uid, meta.gid() == run_as.gid) {
            (true, _) => 6,
            (false, true) => 3,
            (false, false) => 0,
        };
        if (meta.mode() >> shift) & 0o1 == 0 {
            return Err(LaunchError::Permission(format!(
                "{} is not traversable by the `postgres` user (uid {}), which runs PostgreSQL because spool runs as root: \
                 put the cluster directory elsewhere (e.g. under /var/tmp) or run spool as a non-root user",
                ancestor.display(),
                run_as.uid
            )));
        }
    }
    Ok(dir)
}

pub(crate) fn apply_run_as(cmd: &mut Command, run_as: Option<RunAs>) {
    if let Some(RunAs { uid, gid }) = run_as {
        cmd.uid(uid).gid(gid);
    }
}

/// Makes the kernel send SIGINT (fast shutdown) to the server if our spawning thread dies.
pub(crate) fn arm_death_signal(cmd: &mut Command) {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure only calls async-signal-safe functions and does not allocate. std runs
    // pre_exec closures after setgid/setuid, which matters: a credential change clears the death
    // signal, so arming it earlier would be silently undone.
    unsafe {
        cmd.pre_exec(move || {
            let signal = libc::SIGINT as libc::c_ulong;
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl; then nobody would ever stop us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
