//! Spawns throwaway PostgreSQL clusters on free ports so integration tests run against a real database.
//!
//! Each [`PgServer`] owns one cluster in its own temporary directory, listening
//! only on 127.0.0.1 (never on 5432, where a system cluster may live) with
//! durability off. `initdb` runs once per test process into a template data
//! directory; every server starts from a copy of it, so only the first server
//! pays for `initdb`. Dropping a server stops it (`pg_ctl stop -m immediate`);
//! if the test is panicking, the server log is printed first. Tests can stop
//! and start a server again to exercise the cache's failure handling.
//!
//! The binaries come from `$MDCACHE_PG_BIN` (a directory) if set, else from
//! the directory of `initdb` on `PATH`, else from the newest
//! `/usr/lib/postgresql/*/bin` (where Debian keeps them). There is deliberately
//! no "skip if missing": `make deps` installs PostgreSQL. `initdb` and
//! `postgres` refuse to run as root, so when the tests run as root every
//! PostgreSQL binary runs through `runuser -u postgres` (or `nobody`).
//!
//! A watchdog shell process per test process stops whatever is left and
//! removes the files once the test process has exited: statics such as
//! [`shared`] are never dropped, and a killed test process drops nothing.

// Every test binary includes this module with `mod support;`, and none uses all of it.
#![allow(dead_code)]

use std::env;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal;
use nix::unistd::{self, Pid, User};
use tempfile::TempDir;

/// How many fresh ports [`PgServer::start`] tries. Another process can grab
/// the port between our probe listener closing and postgres binding it.
const START_ATTEMPTS: usize = 5;

/// Seconds `pg_ctl -w` waits for a start or stop. Generous because CI machines
/// can be slow; a healthy server starts in a few hundred milliseconds.
const PG_CTL_TIMEOUT_SECS: &str = "30";

/// The port of a system cluster on developer machines; never touch it.
const STANDARD_PORT: u16 = 5432;

/// A PostgreSQL cluster on 127.0.0.1 with trust authentication for the
/// `postgres` superuser, stopped and deleted on drop.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    /// Holds `data/`, `sock/` (the Unix socket, kept out of the system's
    /// `/var/run/postgresql`) and `postgres.log`; removed on drop, after the
    /// server has stopped.
    dir: TempDir,
    /// Extra `postgres` options (TLS), kept for [`PgServer::start_again`].
    extra: String,
}

impl PgServer {
    /// Starts a new cluster on a free ephemeral port and waits until it accepts
    /// connections. Panics if it cannot (the server log follows the panic).
    pub fn start() -> PgServer {
        Self::start_inner(None)
    }

    /// [`start`](Self::start) with TLS on (`ssl=on`), serving `cert` (PEM, its chain) with
    /// `key`, both copied into the server's directory for the user postgres runs as.
    pub fn start_with_tls(cert: &Path, key: &Path) -> PgServer {
        Self::start_inner(Some((cert, key)))
    }

    fn start_inner(tls: Option<(&Path, &Path)>) -> PgServer {
        let process = process_state();
        let dir = tempfile::Builder::new()
            .prefix("server-")
            .tempdir_in(process.root.path())
            .expect("create temp dir for postgres");
        // The server runs as `owner` but the directory is ours: let it in.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod server dir");
        let sock = dir.path().join("sock");
        fs::create_dir(&sock).expect("create socket dir");
        process.toolchain.give_to_owner(&sock);
        let log = dir.path().join("postgres.log");
        File::create(&log).expect("create postgres.log");
        process.toolchain.give_to_owner(&log);
        // `cp -a` keeps the owner as well as the 0700 mode postgres insists on.
        run(Command::new("cp")
            .arg("-a")
            .arg(&process.template)
            .arg(dir.path().join("data")))
        .unwrap_or_else(|e| panic!("copy the template data directory: {e}"));

        let extra = match tls {
            None => String::new(),
            Some((cert, key)) => {
                let (c, k) = (dir.path().join("server.pem"), dir.path().join("server.key"));
                fs::copy(cert, &c).expect("copy the server certificate");
                fs::copy(key, &k).expect("copy the server key");
                // postgres refuses a key others can read.
                fs::set_permissions(&k, fs::Permissions::from_mode(0o600)).expect("chmod key");
                process.toolchain.give_to_owner(&c);
                process.toolchain.give_to_owner(&k);
                format!(
                    " -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                    c.display(),
                    k.display()
                )
            }
        };
        let mut server = PgServer {
            port: 0,
            dir,
            extra,
        };
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        // Dropping `server` while panicking prints its log.
        panic!("postgres did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    /// The connection URL of the `postgres` database,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The TCP port the server listens on (stable across [`PgServer::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a new empty database and returns its URL, so tests sharing one
    /// server need not see each other's tables. `name` must be ASCII letters,
    /// digits and underscores (it goes into the URL unescaped) and not exist yet.
    pub async fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "database name {name:?} must be ASCII letters, digits and underscores"
        );
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to test postgres on port {}: {e}", self.port));
        // The connection task ends by itself once `client` is dropped below.
        tokio::spawn(connection);
        // Quoted, so the name keeps its case exactly as it appears in the URL.
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on port {}: {e}", self.port));
        self.database_url(name)
    }

    /// Stops the server like a crash (`pg_ctl stop -m immediate`) and waits
    /// until it has exited; connections are then refused until
    /// [`PgServer::start_again`]. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        if let Err(e) = self.pg_ctl_stop() {
            panic!("postgres on port {} did not stop: {e}", self.port);
        }
    }

    /// Starts the stopped server again on the same port with the same data
    /// (after crash recovery, if [`PgServer::stop`] interrupted anything).
    /// Panics if it is running or cannot start.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "postgres on port {} is already running",
            self.port
        );
        let mut last_failure = String::new();
        // The port can briefly be unavailable; unlike `start` we must keep it,
        // so retry it a few times with a short pause instead of picking another.
        for _ in 0..START_ATTEMPTS {
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(failure) => last_failure = failure,
            }
            thread::sleep(Duration::from_millis(200));
        }
        // Dropping `self` while panicking prints the log.
        panic!(
            "postgres did not start again on port {}: {last_failure}",
            self.port
        );
    }

    /// Whether the postmaster process is alive (per its `postmaster.pid`).
    pub fn is_running(&self) -> bool {
        postmaster_pid(&self.data_dir()).is_some_and(|pid| {
            // EPERM: alive, just not ours to signal (it runs as the owner user).
            matches!(signal::kill(pid, None), Ok(()) | Err(Errno::EPERM))
        })
    }

    /// Everything the server (and every start of it) wrote to its log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `pg_ctl start` on `self.port`, waiting until the server accepts
    /// connections. On failure the server is not running and the reason is
    /// returned.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let sock = self.dir.path().join("sock");
        // pg_ctl hands these to postgres through `sh -c`, hence the quotes. No
        // fsync and no full-page writes: a test cluster need not survive a
        // power cut. `synchronous_commit` stays on, unlike the usual test
        // recipe: `stop` is an immediate shutdown, which discards WAL still in
        // shared memory, and a test must see its committed rows after
        // `start_again`. With fsync off a synchronous commit is only a write().
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off{}",
            self.port,
            sock.display(),
            self.extra
        );
        run(process_state()
            .toolchain
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-o")
            .arg(options)
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-t", PG_CTL_TIMEOUT_SECS, "-w", "start"]))
        .map_err(|e| format!("postgres on port {}: {e}", self.port))
    }

    fn pg_ctl_stop(&self) -> Result<(), String> {
        run(process_state()
            .toolchain
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-t", PG_CTL_TIMEOUT_SECS, "-w", "stop"]))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Stop before the TempDir goes, or postgres would lose its files under it.
        if self.is_running() {
            let _ = self.pg_ctl_stop();
        }
        if thread::panicking() {
            eprintln!(
                "--- postgres log (port {}) ---\n{}--- end of postgres log ---",
                self.port,
                self.log()
            );
        }
    }
}

/// One server for the whole test binary, started on first use, for tests that
/// neither stop it nor care about other tests' databases (give each test its
/// own with [`PgServer::create_database`] or [`database_url`]). The watchdog
/// stops it after the test process exits.
pub fn shared() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(PgServer::start)
}

/// `$DATABASE_URL` if set (a database the caller provides, shared by every
/// test), else the URL of a fresh empty database on [`shared`]. For tests that
/// only need *a* database; tests that stop the server use their own
/// [`PgServer::start`]. Callable from sync and async tests alike.
pub fn database_url() -> String {
    if let Some(url) = env::var("DATABASE_URL").ok().filter(|url| !url.is_empty()) {
        return url;
    }
    /// Names the databases created here apart within one server (one per process).
    static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "mdcache_test_{}",
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    let server = shared();
    // A thread of its own because the caller may already be inside a Tokio
    // runtime, where blocking on another one would panic.
    let created = thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a Tokio runtime")
            .block_on(server.create_database(&name))
    })
    .join();
    created.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Where the PostgreSQL binaries are and which user runs them.
#[derive(Debug)]
struct Toolchain {
    /// Holds `initdb` and `pg_ctl` (which finds `postgres` beside itself).
    bin: PathBuf,
    /// The unprivileged user the binaries run as when we are root; `None`
    /// when we are not root and run them as ourselves.
    owner: Option<User>,
    /// util-linux's `runuser`, which switches to `owner` (root's PATH may lack
    /// `/usr/sbin`, where Debian keeps it).
    runuser: PathBuf,
}

impl Toolchain {
    fn find() -> Toolchain {
        let owner = unistd::geteuid().is_root().then(|| {
            // Debian's package creates `postgres`; `nobody` exists everywhere
            // and avoids creating a user on the machine.
            ["postgres", "nobody"]
                .into_iter()
                .find_map(|name| User::from_name(name).ok().flatten())
                .expect("running as root, but neither a `postgres` nor a `nobody` user exists to run postgres as")
        });
        let runuser = match owner {
            Some(_) => on_path("runuser")
                .or_else(|| {
                    ["/usr/sbin/runuser", "/sbin/runuser"]
                        .map(PathBuf::from)
                        .into_iter()
                        .find(|path| path.is_file())
                })
                .expect(
                    "running as root needs `runuser` (util-linux) to run postgres as another user",
                ),
            None => PathBuf::new(),
        };
        Toolchain {
            bin: bin_dir(),
            owner,
            runuser,
        }
    }

    /// A command running `tool` from the toolchain as the owner user.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        let mut command = match &self.owner {
            Some(owner) => {
                let mut command = Command::new(&self.runuser);
                command.arg("-u").arg(&owner.name).arg("--").arg(program);
                command
            }
            None => Command::new(program),
        };
        // Our working directory may be closed to the owner user; `/` is not.
        command.current_dir("/");
        command
    }

    /// Hands `path` to the owner user, so postgres can write there.
    fn give_to_owner(&self, path: &Path) {
        if let Some(owner) = &self.owner {
            unistd::chown(path, Some(owner.uid), Some(owner.gid))
                .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), owner.name));
        }
    }
}

/// What every server of this test process shares, set up on first use.
#[derive(Debug)]
struct ProcessState {
    toolchain: Toolchain,
    /// Holds `template/` and every server's directory. Never dropped (it lives
    /// in a static): the watchdog removes it.
    root: TempDir,
    /// A data directory fresh from `initdb`, never started; servers copy it.
    template: PathBuf,
    /// Kept only so the handle is not dropped unwaited; it outlives us.
    _watchdog: Child,
}

fn process_state() -> &'static ProcessState {
    static STATE: OnceLock<ProcessState> = OnceLock::new();
    STATE.get_or_init(|| {
        let toolchain = Toolchain::find();
        let root = tempfile::Builder::new()
            .prefix("mdcache-pg-")
            .tempdir()
            .expect("create temp dir for postgres");
        // The owner user must traverse it to reach its own files inside.
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod postgres temp dir");
        let watchdog = spawn_watchdog(&toolchain, root.path());
        let template = root.path().join("template");
        fs::create_dir(&template).expect("create template data dir");
        toolchain.give_to_owner(&template);
        run(toolchain
            .command("initdb")
            .arg("-D")
            .arg(&template)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
            // C locale: fast, and the same on every machine whatever LANG says.
            .args(["--locale=C", "--no-sync"])
            // 1 MB WAL segments instead of 16: every server copies pg_wal.
            .arg("--wal-segsize=1"))
        .unwrap_or_else(|e| {
            panic!(
                "initdb as the {} user into {} failed: {e}",
                toolchain
                    .owner
                    .as_ref()
                    .map_or("current", |owner| owner.name.as_str()),
                template.display()
            )
        });
        ProcessState {
            toolchain,
            root,
            template,
            _watchdog: watchdog,
        }
    })
}

/// Waits for this process to exit, then stops every server still running
/// under `$2` and removes it. `$1` is our pid; the rest is the command
/// that runs `pg_ctl`.
const WATCHDOG_SCRIPT: &str = r#"
pid=$1 root=$2
shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
for data in "$root"/*/data; do
    if [ -f "$data/postmaster.pid" ]; then
        "$@" -D "$data" -m immediate -w stop >/dev/null 2>&1
    fi
done
rm -rf "$root"
"#;

fn spawn_watchdog(toolchain: &Toolchain, root: &Path) -> Child {
    let pg_ctl = toolchain.command("pg_ctl");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("mdcache-pg-watchdog")
        .arg(process::id().to_string())
        .arg(root)
        .arg(pg_ctl.get_program())
        .args(pg_ctl.get_args())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a Ctrl-C meant for the tests (which kills
        // them before any Drop runs) does not kill the cleanup too.
        .process_group(0);
    command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn the postgres watchdog (sh): {e}"))
}

/// The directory holding `initdb` and `pg_ctl` (see the module docs).
fn bin_dir() -> PathBuf {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = env::var_os("MDCACHE_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            has_tools(&dir),
            "MDCACHE_PG_BIN={} has no initdb and pg_ctl",
            dir.display()
        );
        return dir;
    }
    if let Some(initdb) = on_path("initdb") {
        // Prefer where a symlink points: that is where `pg_ctl` and
        // `postgres` of the same version live.
        let dirs = [fs::canonicalize(&initdb).ok(), Some(initdb)];
        if let Some(dir) = dirs
            .into_iter()
            .flatten()
            .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
            .find(|dir| has_tools(dir))
        {
            return dir;
        }
    }
    fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| (version_key(&entry.file_name()), entry.path().join("bin")))
        .filter(|(_, dir)| has_tools(dir))
        .max()
        .map(|(_, dir)| dir)
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL found (no initdb on PATH or in /usr/lib/postgresql/*/bin, \
                 MDCACHE_PG_BIN unset); install postgresql: make deps"
            )
        })
}

/// The first `name` in a `PATH` directory.
fn on_path(name: &str) -> Option<PathBuf> {
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// `"9.6"` → `[9, 6]`, `"16"` → `[16]`, so versions sort numerically.
fn version_key(name: &OsStr) -> Vec<u32> {
    name.to_string_lossy()
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// The pid in the first line of `data/postmaster.pid`, if the file exists.
fn postmaster_pid(data: &Path) -> Option<Pid> {
    let contents = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    contents
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .map(Pid::from_raw)
}

/// Runs `command` to completion; on failure, says what ran and what it printed.
fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed ({})\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// A port the kernel just considered free. Racy by nature (see `START_ATTEMPTS`).
fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if port != STANDARD_PORT {
            return port;
        }
    }
}
