//! Test support shared across the workspace's crates: one crate instead of
//! source files included with `#[path]` from one crate's `tests/` into
//! another's.
//!
//! Why a crate: an included file is compiled again by every includer, warns
//! about whatever that includer does not use, and belongs to no crate, so
//! it has no dependencies of its own and no home in the code map. Here each
//! helper has one home, its own dependencies, and a feature for the heavy
//! part:
//!
//! - [`traces`]: the real editing traces of `benches/traces` as Yjs
//!   updates (benches, examples, the legitimate-updates test);
//! - [`postgres`]: a throwaway PostgreSQL cluster per test process;
//! - [`notes_schema`]: the schema steps of a small notes app, so every
//!   migration test migrates the same shapes;
//! - [`process`]: a server as a real process, and its address;
//! - [`s3server`]: a throwaway S3-compatible server (moto) per test
//!   process, for the `s3://` suites;
//! - [`http`]: plain HTTP calls whose every status is an answer;
//! - [`receiver`]: a webhook receiver on loopback that fails a seeded share
//!   of its requests, goes down and holds answers on request;
//! - [`harness`] (feature `harness`): engines on every backend, simulated
//!   Yjs clients and a seeded random generator whose seed every test
//!   prints.
//!
//! Helpers panic on failure: they run only in tests, benches and examples,
//! where a panic with a message is the report.

pub mod http;
pub mod notes_schema;
pub mod postgres;
pub mod process;
pub mod receiver;
pub mod s3server;
pub mod traces;

#[cfg(feature = "harness")]
pub mod harness;
