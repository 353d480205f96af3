//! The `seqsync` command line's library half: object storage for `backup`,
//! `restore`, `export` and `import` (`s3://bucket/prefix`).
//!
//! Why a library at all: the binary's tests start a real S3-compatible
//! server and need the same client to create buckets, list what a killed
//! run left and damage an object on purpose; everything else of the command
//! line stays in the binary (`src/main.rs`).

pub mod remote;
pub mod s3;
