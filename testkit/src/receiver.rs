//! A webhook receiver on loopback for the webhook tests: a real HTTP/1.1
//! server that records every request it reads, fails a seeded share of them
//! (500, 503, or the connection closed unanswered), can go down (its port
//! closed, so connections are refused) and come back on the same port, and
//! can hold an accepted request before answering it, so a test can kill
//! the sender exactly while an accepted delivery is unanswered.
//!
//! Why a hand-written server: the tests need to decide each answer and
//! know exactly what was accepted and when; the sender (ureq) is real, the
//! sockets are real, and what crosses them is plain HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the receiver answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200: the sender must not send these changes again.
    Accepted,
    /// A status of 500 or more.
    Failed(u16),
    /// The connection was closed without an answer.
    Dropped,
}

/// One request as the receiver read it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request body.
    pub body: Vec<u8>,
    /// Request headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// What it was answered.
    pub answer: Answer,
    /// When it was read.
    pub at: Instant,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    received: Mutex<Vec<Received>>,
    down: AtomicBool,
    stop: AtomicBool,
    /// While set, an accepted request is held unanswered until cleared.
    hold_accepted: AtomicBool,
    /// Set while a request is held (accepted, recorded, not answered).
    holding: AtomicBool,
    /// Seeded xorshift state: the failure decisions, in arrival order.
    rng: Mutex<u64>,
    fail_per_mille: u64,
}

/// The receiver; dropping it stops it.
pub struct Receiver {
    /// Where it listens (the same port while it goes down and up).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts on a free loopback port. `fail_per_mille` of the requests
    /// (decided by `seed`, in arrival order) are failed.
    pub fn start(seed: u64, fail_per_mille: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().expect("its address");
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            hold_accepted: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            rng: Mutex::new(seed | 1),
            fail_per_mille,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || serve(listener, addr, &shared))
        };
        Self {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// The URL to configure a hook with.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Closes the port (connections are refused) or opens it again.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// While on, the next accepted request is recorded as accepted and then
    /// held unanswered (see [`Receiver::holding`]) until this is turned off.
    pub fn hold_accepted(&self, on: bool) {
        self.shared.hold_accepted.store(on, Ordering::SeqCst);
    }

    /// Whether an accepted request is being held unanswered now.
    pub fn holding(&self) -> bool {
        self.shared.holding.load(Ordering::SeqCst)
    }

    /// Every request read so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.hold_accepted.store(false, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, addr: SocketAddr, shared: &Shared) {
    let mut listener = Some(listener);
    while !shared.stop.load(Ordering::SeqCst) {
        let down = shared.down.load(Ordering::SeqCst);
        match (&listener, down) {
            (Some(_), true) => listener = None,
            (None, false) => {
                // The same port again (the sender's URL does not change);
                // the old socket may linger briefly.
                listener = TcpListener::bind(addr).ok();
            }
            _ => {}
        }
        let Some(open) = &listener else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = open.set_nonblocking(true);
        match open.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                handle(stream, shared);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Reads one request, records it and answers it (one request per
/// connection: the answer says `connection: close`).
fn handle(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.is_empty() {
            return; // cut off: nothing to record
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return; // the sender died mid-request: it never counted as sent
    }
    let answer = decide(shared);
    if let Ok(mut received) = shared.received.lock() {
        received.push(Received {
            body,
            headers,
            answer,
            at: Instant::now(),
        });
    }
    let mut stream = stream;
    match answer {
        Answer::Dropped => {}
        Answer::Failed(status) => {
            let _ = write!(
                stream,
                "HTTP/1.1 {status} Failed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
        Answer::Accepted => {
            if shared.hold_accepted.load(Ordering::SeqCst) {
                shared.holding.store(true, Ordering::SeqCst);
                while shared.hold_accepted.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                shared.holding.store(false, Ordering::SeqCst);
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    }
    let _ = stream.flush();
}

fn decide(shared: &Shared) -> Answer {
    let Ok(mut state) = shared.rng.lock() else {
        return Answer::Accepted;
    };
    // xorshift64: deterministic from the seed, in arrival order.
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    if x % 1000 >= shared.fail_per_mille {
        return Answer::Accepted;
    }
    match (x / 1000) % 3 {
        0 => Answer::Failed(500),
        1 => Answer::Failed(503),
        _ => Answer::Dropped,
    }
}
