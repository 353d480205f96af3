//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port, a fresh database per
//! test. Shared by every Postgres suite.
//!
//! Why a real server: the backend's whole point is what PostgreSQL does
//! with concurrent transactions, row locks and `now()`; a fake would test
//! the fake. The binaries come from `SEQSYNC_PG_BIN`, else `pg_config
//! --bindir`, else `/usr/lib/postgresql/*/bin`. Without them the suites say
//! so loudly and skip (CI installs them). PostgreSQL refuses to run as root,
//! so under root the cluster runs as the `postgres` (or `nobody`) user.
//!
//! The cluster lives as long as the test process: a watchdog shell stops it
//! and removes its directory once the process is gone, however it ends.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A running cluster.
pub struct PgCluster {
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    user: Option<String>,
}

static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

impl PgCluster {
    /// The process's cluster, started on first use; `None` (after a loud
    /// message) when PostgreSQL is not installed.
    pub fn shared() -> Option<&'static PgCluster> {
        CLUSTER
            .get_or_init(|| match find_bin() {
                Some(bin) => Some(start(bin)),
                None => {
                    eprintln!(
                        "\n*** PostgreSQL binaries not found (set SEQSYNC_PG_BIN, or install \
                         postgresql): the PostgreSQL tests are SKIPPED ***\n"
                    );
                    None
                }
            })
            .as_ref()
    }

    /// A new empty database; returns its URL.
    pub fn fresh_database(&self) -> String {
        let n = NEXT_DB.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        let status = self
            .command("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "seqsync",
                &name,
            ])
            .status()
            .expect("run createdb");
        assert!(status.success(), "createdb {name} failed");
        self.url(&name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://seqsync@127.0.0.1:{}/{name}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        as_user(&self.bin.join(program), self.user.as_deref())
    }

    /// The data directory (for tests that stop and start the server).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Pauses every process of the cluster (SIGSTOP to the postmaster and
    /// its children): connections stay open and the kernel still accepts
    /// bytes on them, but nothing answers, as when the database host
    /// stalls. Only for a test process of its own: every test of the
    /// process shares the cluster. Panics if a signal cannot be sent.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes what [`PgCluster::pause`] stopped (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let postmaster = self.postmaster().expect("the postmaster's pid");
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        // The shell's own `kill`: `sh` is on every machine, a `kill` binary
        // not necessarily.
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill {signal} {}", pids.join(" ")))
            .status()
            .expect("run sh");
        assert!(status.success(), "kill {signal} {pids:?} failed");
    }

    fn postmaster(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// CPU seconds the cluster has used so far: the postmaster, its live
    /// children (backends, checkpointer, WAL writer) and the children that
    /// exited (a closed connection's backend). From `/proc` (Linux), so a
    /// benchmark can say what the database cost per operation beside what
    /// the nodes cost. `None` if the postmaster cannot be read.
    pub fn cpu_secs(&self) -> Option<f64> {
        let postmaster = self.postmaster()?;
        let mut ticks = proc_ticks(postmaster, true)?;
        for pid in children_of(postmaster) {
            ticks += proc_ticks(pid, false).unwrap_or(0.0);
        }
        Some(ticks / clock_ticks_per_sec())
    }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces, in parentheses).
fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of a process in clock ticks; with `exited_children`, also
/// those of its children that exited and were waited for.
fn proc_ticks(pid: u32, exited_children: bool) -> Option<f64> {
    let fields = proc_stat_fields(pid)?;
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let own = field(11)? + field(12)?;
    Some(if exited_children {
        own + field(13)? + field(14)?
    } else {
        own
    })
}

/// The live children of process `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_parent(pid) == Some(parent))
        .collect()
}

/// A process's parent pid.
fn proc_parent(pid: u32) -> Option<u32> {
    proc_stat_fields(pid)?.get(1)?.parse().ok()
}

/// Linux's `USER_HZ`: 100 on every architecture it runs on.
fn clock_ticks_per_sec() -> f64 {
    100.0
}

fn find_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("SEQSYNC_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program` run as `user` (through `runuser`) when given.
fn as_user(program: &Path, user: Option<&str>) -> Command {
    match user {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

fn start(bin: PathBuf) -> PgCluster {
    let dir = std::env::temp_dir().join(format!(
        "seqsync-pg-{}-{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("cluster dir");
    let user = if running_as_root() {
        let user = if Command::new("id")
            .arg("postgres")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            "postgres"
        } else {
            "nobody"
        };
        let status = Command::new("chown")
            .args(["-R", user])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown the cluster dir to {user}");
        Some(user.to_owned())
    } else {
        None
    };
    let data = dir.join("data");
    let out = as_user(&bin.join("initdb"), user.as_deref())
        .args(["-D"])
        .arg(&data)
        .args(["-U", "seqsync", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let log = dir.join("server.log");
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=300 \
         -c shared_buffers=64MB",
        dir.display()
    );
    let out = as_user(&bin.join("pg_ctl"), user.as_deref())
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(&log)
        .args(["-w", "start"])
        .stdout(Stdio::null())
        .output()
        .expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl start failed: {}; log: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Stop the cluster once this process is gone, however it ends.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {runuser}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        runuser = user
            .as_deref()
            .map(|u| format!("runuser -u {u} -- "))
            .unwrap_or_default(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    // Deliberately not waited for: it outlives this process.
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("sh")
        .args(["-c", &stop])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cluster's watchdog");
    eprintln!(
        "PostgreSQL test cluster on 127.0.0.1:{port} ({})",
        data.display()
    );
    PgCluster {
        port,
        bin,
        data,
        user,
    }
}
