//! A throwaway S3-compatible server for tests: moto's server (`pip install
//! 'moto[server]'`) started on a free loopback port, one per test process.
//!
//! Why a real server: what `s3://` support must get right is what a
//! service does with signed requests, metadata, multipart uploads, missing
//! keys and buckets; a fake would test the fake. moto is the one the
//! project's CI installs (`.ci/run`, pinned). The program comes from
//! `S3_TEST_SERVER_BIN`, else `moto_server` on the `PATH`; without it the
//! suites say so loudly (past the harness's output capture) and skip. With
//! `S3_TEST_SERVER_BIN` set, a server that does not start fails the tests.
//!
//! The server lives as long as the test process: a watchdog shell stops it
//! once the process is gone, however it ends.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running S3-compatible server.
pub struct S3Server {
    addr: SocketAddr,
}

static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();

/// How long the server may take to accept connections.
const START_TIMEOUT_MS: u64 = 60_000;

impl S3Server {
    /// The process's server, started on first use; `None` (after a loud
    /// message) when moto's server is not installed.
    pub fn shared() -> Option<&'static S3Server> {
        SERVER.get_or_init(start).as_ref()
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn program() -> Option<String> {
    if let Ok(program) = std::env::var("S3_TEST_SERVER_BIN") {
        return Some(program);
    }
    Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| "moto_server".to_owned())
}

fn start() -> Option<S3Server> {
    let Some(program) = program() else {
        // Straight to the process's stderr, past the test harness's
        // capture, so the skip shows in a plain `cargo test` run.
        let _ = std::io::stderr().write_all(
            b"\n*** moto_server not found (pip install 'moto[server]', or set \
              S3_TEST_SERVER_BIN): the object-storage tests are SKIPPED ***\n\n",
        );
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let log = std::env::temp_dir().join(format!("seqsync-moto-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).expect("the server's log file");
    // Not waited for: the watchdog stops it when this process is gone.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    // Stop the server once this process is gone, however it ends.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; kill {server} 2>/dev/null; rm -f {log}",
        pid = std::process::id(),
        server = child.id(),
        log = log.display(),
    );
    // Deliberately not waited for: it outlives this process.
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("sh")
        .args(["-c", &stop])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server's watchdog");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            started.elapsed() < Duration::from_millis(START_TIMEOUT_MS),
            "{program} did not listen on {addr} within {START_TIMEOUT_MS} ms; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("S3-compatible test server (moto) on {addr}");
    Some(S3Server { addr })
}
