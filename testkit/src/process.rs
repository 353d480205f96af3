//! A server as a real process: `seqsync serve` (or the server example)
//! started by a test, which learns its address from the first line it
//! prints, `seqsync listening on http://ADDR`.
//!
//! Why from stdout: the tests listen on port 0, so only the process knows
//! its port; the line is printed once the server accepts connections, so a
//! test that has read it can connect at once.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Spawns `command` with stdout piped and waits for its listening line.
/// Returns the child (the caller kills and waits for it) and the address.
///
/// Panics with the line it read if the process printed something else, or
/// nothing (it exited: its stderr says why).
pub fn spawn_listening(command: &mut Command) -> (Child, SocketAddr) {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .rsplit("://")
        .next()
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
    (child, addr)
}
