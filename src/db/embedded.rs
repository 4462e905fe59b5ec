//! The embedded PostgreSQL launcher: finds the server binaries on the machine, creates a private
//! cluster (initdb), runs the postmaster as a child process and stops it again.
//! It owns only the cluster's lifecycle and the existence of the requested database; it never
//! touches schema or migrations (see `db::pool`).
//!
//! The postmaster is armed with `PR_SET_PDEATHSIG` so it shuts down if we are killed. The kernel
//! fires that signal when the *thread* that spawned the child exits, so [`EmbeddedPostgres::start`]
//! must be polled on a thread that outlives the cluster (the main thread, a runtime worker, or a
//! dedicated thread) and never from `spawn_blocking`, whose threads are reaped when idle.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::host::{RunAs, apply_run_as, arm_death_signal, find_binaries, prepare_dir, run_as};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// Superuser role created by initdb; trust auth makes it password-less on 127.0.0.1.
const ROLE: &str = "spool";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TAIL_LINES: usize = 20;
/// Server settings on the command line, so they win over whatever `postgresql.conf` says.
/// Durability stays on (`fsync=on`, default `synchronous_commit`): jobs must survive a crash.
const SERVER_SETTINGS: [&str; 4] = [
    "listen_addresses=127.0.0.1",
    "max_connections=300",
    "fsync=on",
    "shared_buffers=128MB",
];

/// Where and how to run the private cluster.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Directory holding `data/`, `run/` (socket) and the default log; created if missing.
    pub cluster_dir: PathBuf,
    /// TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// Database created if missing, used by [`EmbeddedPostgres::database_url`].
    pub database: String,
    /// Server log; defaults to `<cluster_dir>/server.log`.
    pub log_file: Option<PathBuf>,
}

/// Why the private cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No directory with both `initdb` and `postgres` was found.
    #[error(
        "no PostgreSQL server binaries found (looked in PATH and /usr/lib/postgresql/*/bin): \
         install them with `apt-get install postgresql`, or set DATABASE_URL to use an existing server"
    )]
    NoBinaries,
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// Running as root, PostgreSQL must run as another user, and `postgres` does not exist.
    #[error(
        "running as root, but there is no `postgres` system user to run PostgreSQL as: \
         create one (`apt-get install postgresql` does) or run spool as a non-root user"
    )]
    NoPostgresUser,
    /// The user PostgreSQL runs as cannot reach the cluster directory.
    #[error("{0}")]
    Permission(String),
    /// initdb failed; carries its output.
    #[error("initdb failed: {0}")]
    InitDb(String),
    /// The server exited or never accepted connections; carries the log tail.
    #[error("PostgreSQL did not start: {0}")]
    Start(String),
    /// Creating the requested database failed.
    #[error("could not create database {name:?}: {source}")]
    CreateDatabase { name: String, source: sqlx::Error },
    /// The server did not shut down.
    #[error("PostgreSQL did not stop: {0}")]
    Stop(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> LaunchError {
    let context = context.into();
    move |source| LaunchError::Io { context, source }
}

/// A running private cluster; stopped on drop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    child: Option<Child>,
    port: u16,
    database: String,
}

impl EmbeddedPostgres {
    /// Starts (initdb first when needed), waits until it accepts connections, ensures the database exists.
    pub async fn start(opts: LaunchOptions) -> Result<Self, LaunchError> {
        let bin = find_binaries().ok_or(LaunchError::NoBinaries)?;
        let run_as = run_as()?;
        let cluster_dir = prepare_dir(&opts.cluster_dir, run_as)?;
        let data_dir = cluster_dir.join("data");
        let run_dir = cluster_dir.join("run");
        prepare_dir(&run_dir, run_as)?;

        if !data_dir.join("PG_VERSION").exists() {
            init_db(&bin, &cluster_dir, run_as)?;
        }
        remove_stale_pid_file(&data_dir)?;

        let port = match opts.port {
            Some(port) => port,
            None => free_port()?,
        };
        let log_path = opts
            .log_file
            .unwrap_or_else(|| cluster_dir.join("server.log"));
        let log = open_log(&log_path)?;
        // Only this run's output belongs in a startup error, not an older run's.
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicating the log handle"))?;

        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(&data_dir).arg("-p").arg(port.to_string());
        cmd.arg("-c")
            .arg(format!("unix_socket_directories={}", run_dir.display()));
        for setting in SERVER_SETTINGS {
            cmd.arg("-c").arg(setting);
        }
        cmd.current_dir(&cluster_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: a terminal Ctrl-C must reach only spool, which then stops the
            // server after draining; otherwise the database would vanish mid-drain.
            .process_group(0);
        apply_run_as(&mut cmd, run_as);
        arm_death_signal(&mut cmd);
        let child = cmd.spawn().map_err(io_err("spawning postgres"))?;
        tracing::info!(port, dir = %cluster_dir.display(), pid = child.id(), "started embedded PostgreSQL");

        // From here on, Drop stops the server if anything below fails.
        let mut pg = Self {
            child: Some(child),
            port,
            database: opts.database,
        };
        let mut conn = pg.wait_ready(&log_path, log_start).await?;
        ensure_database(&mut conn, &pg.database)
            .await
            .map_err(|source| LaunchError::CreateDatabase {
                name: pg.database.clone(),
                source,
            })?;
        let _ = conn.close().await;
        Ok(pg)
    }

    /// postgres://spool@127.0.0.1:PORT/DATABASE (superuser role, trust auth on 127.0.0.1 only).
    pub fn database_url(&self) -> String {
        self.url_for(&self.database)
    }

    /// URL for another database on the same cluster.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Fast shutdown (SIGINT to the postmaster), waits for exit.
    pub fn stop(&mut self) -> Result<(), LaunchError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SIGINT = fast shutdown: end sessions, checkpoint, exit.
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child, so
        // it cannot have been recycled.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            let exited = child.try_wait().map_err(io_err("waiting for postgres"))?;
            if exited.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A wedged server must not hang our exit forever; the next start recovers from WAL.
        let _ = child.kill();
        let _ = child.wait();
        let secs = STOP_TIMEOUT.as_secs();
        Err(LaunchError::Stop(format!(
            "no exit {secs}s after SIGINT; killed it"
        )))
    }

    async fn wait_ready(
        &mut self,
        log_path: &Path,
        log_start: u64,
    ) -> Result<PgConnection, LaunchError> {
        let opts = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(ROLE)
            .database("postgres")
            .application_name("spool-launcher");
        let fail = |why: String| {
            let tail = log_tail(log_path, log_start);
            LaunchError::Start(format!("{why}; log {}:\n{tail}", log_path.display()))
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().map_err(io_err("polling postgres"))?
            {
                self.child = None;
                return Err(fail(format!("server exited with {status}")));
            }
            let last_error =
                match tokio::time::timeout(Duration::from_secs(2), opts.connect()).await {
                    Ok(Ok(conn)) => return Ok(conn),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "connection attempt timed out".to_string(),
                };
            if Instant::now() >= deadline {
                let secs = READY_TIMEOUT.as_secs();
                return Err(fail(format!(
                    "no connection on 127.0.0.1:{} after {secs}s (last error: {last_error})",
                    self.port
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn init_db(bin: &Path, cluster_dir: &Path, run_as: Option<RunAs>) -> Result<(), LaunchError> {
    let data_dir = cluster_dir.join("data");
    let mut failures = Vec::new();
    // C.UTF-8 sorts like C but handles non-ASCII text; some systems lack it, so fall back.
    for locale in ["C.UTF-8", "C"] {
        let mut cmd = Command::new(bin.join("initdb"));
        cmd.args(["-U", ROLE, "--auth=trust", "--encoding=UTF8"])
            .arg(format!("--locale={locale}"))
            .arg("-D")
            .arg(&data_dir)
            // initdb resolves paths from its cwd, which may be unreadable by the postgres user.
            .current_dir(cluster_dir)
            .stdin(Stdio::null());
        apply_run_as(&mut cmd, run_as);
        let out = cmd.output().map_err(io_err("running initdb"))?;
        if out.status.success() {
            return Ok(());
        }
        failures.push(format!(
            "--locale={locale}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        // A failed initdb normally cleans up after itself; make sure the retry starts empty.
        if data_dir.exists() && !data_dir.join("PG_VERSION").exists() {
            let _ = fs::remove_dir_all(&data_dir);
        }
    }
    Err(LaunchError::InitDb(failures.join("\n")))
}

/// A crashed run leaves `postmaster.pid`; remove it unless a postmaster really holds it.
fn remove_stale_pid_file(data_dir: &Path) -> Result<(), LaunchError> {
    let pid_file = data_dir.join("postmaster.pid");
    let Ok(contents) = fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let pid: Option<libc::pid_t> = contents.lines().next().and_then(|l| l.trim().parse().ok());
    if let Some(pid) = pid.filter(|p| *p > 0) {
        // A live pid may have been recycled by an unrelated process; only a postgres counts.
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == "postgres" {
            return Err(LaunchError::Start(format!(
                "{} is already in use by a running postmaster (pid {pid}); stop it or use another directory",
                data_dir.display()
            )));
        }
    }
    fs::remove_file(&pid_file).map_err(io_err(format!("removing stale {}", pid_file.display())))
}

/// Another process may grab the port before the server binds it; startup then fails loudly.
fn free_port() -> Result<u16, LaunchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0");
    let addr = listener.and_then(|l| l.local_addr());
    Ok(addr.map_err(io_err("finding a free port"))?.port())
}

async fn ensure_database(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_some() {
        return Ok(());
    }
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(conn).await {
        // 42P04 duplicate_database: a concurrent starter created it first, which is fine.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        other => other.map(drop),
    }
}

fn open_log(path: &Path) -> Result<File, LaunchError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
    }
    // Opened by us and handed over as stdout/stderr, so the server's user needs no access.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))
}

/// The last lines the server wrote since `from`, for error messages.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        // The tail is all we show, so skip the bulk of a long log.
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(from.max(len.saturating_sub(64 * 1024))))?;
        f.read_to_string(&mut text)
    });
    if let Err(e) = read {
        return format!("(could not read log: {e})");
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
