//! `seqsync`: the command line an operator uses to run, back up, restore,
//! verify and move seqsync stores.
//!
//! Every command but `serve` works on a store directory directly (`--store
//! sqlite:./seqsync-data`, `redb:PATH`); the store's directory lock makes
//! it refuse a store a server has open, so stop the server first (a running
//! host backs up with `Engine::backup` instead). Long commands draw a
//! progress bar with rate and ETA on stderr; `--json` prints one JSON object
//! on stdout for scripts instead of text. Errors name the file, the
//! collection and the batch, and say what to do; the exit code is 1 for a
//! failure, 2 for bad arguments, 3 when `verify` finds a mismatch.
//!
//! `backup`, `restore`, `export`, `import` and `verify --bundle` also take
//! `s3://bucket/prefix`: the library half (`seqsync_cli::remote`,
//! `seqsync_cli::s3`) stages one collection's bundle at a time and moves
//! it, so the engine's bundle code and its checks run unchanged.

mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::report::Report;

use seqsync_cli::remote::{self, Remote, RemoteError};
use seqsync_cli::s3::{S3Client, S3Url};

use seqsync_engine::bundle::{
    self, BundleError, BundleProgress, ExportOptions, ImportEpoch, ImportOptions,
};
use seqsync_engine::{
    collection_digest, verify_log, BackendKind, ChangeKind, CollectionName, DigestCache,
    Durability, Storage, StorageConfig, StorageError, VerifyLogError,
};

#[derive(Parser)]
#[command(
    name = "seqsync",
    version,
    about = "seqsync: run, back up, restore, verify and move stores"
)]
struct Cli {
    /// Print one JSON object on stdout instead of text (no progress bars).
    #[arg(long, global = true)]
    json: bool,
    /// Where `s3://` commands stage one collection's bundle at a time
    /// (default: seqsync-staging in the system's temp directory).
    #[arg(long, global = true)]
    staging_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host server (HTTP, WebSocket, y-websocket) until Ctrl-C.
    Serve {
        /// TOML config file; SEQSYNC_<SECTION>_<KEY> variables override.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write a collection's changes as a bundle (a directory, or on object
    /// storage).
    Export {
        /// The store: `sqlite:DIR` or `redb:DIR`.
        #[arg(long)]
        store: String,
        /// The collection.
        #[arg(long)]
        collection: String,
        /// Where to write the bundle: an empty or new directory, or
        /// `s3://BUCKET/PREFIX` (see docs/CLI.md for the AWS_* variables).
        #[arg(long)]
        out: PathBuf,
        /// Export changes after this seq (0: everything).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// ... up to this seq (default: the head).
        #[arg(long)]
        until: Option<u64>,
        /// A batch ends after this many changes.
        #[arg(long, default_value_t = 10_000)]
        batch_changes: usize,
        /// ... or this many bytes.
        #[arg(long, default_value_t = 8 << 20)]
        batch_bytes: usize,
        /// Do not write the state batch (receivers with nothing need it
        /// when --after is not 0).
        #[arg(long)]
        no_state: bool,
    },
    /// Apply a bundle to a store (resumable: run it again after a stop).
    Import {
        /// The store: `sqlite:DIR` or `redb:DIR` (created if missing).
        #[arg(long)]
        store: String,
        /// The bundle: a directory, or `s3://BUCKET/PREFIX`.
        #[arg(long)]
        bundle: PathBuf,
        /// Write under a new epoch (clients then get Reset).
        #[arg(long)]
        new_epoch: bool,
    },
    /// Back up every collection of a store into a directory, or to object
    /// storage (`s3://`).
    Backup {
        /// The store.
        #[arg(long)]
        store: String,
        /// Where to write the backup: an empty or new directory, or
        /// `s3://BUCKET/PREFIX` (resumable: run it again after a stop).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into a store.
    Restore {
        /// The backup: a directory (with backup.json), or
        /// `s3://BUCKET/PREFIX`.
        #[arg(long)]
        backup: PathBuf,
        /// The store to restore into: `sqlite:DIR` or `redb:DIR`.
        #[arg(long)]
        store: String,
        /// Keep the backup's epochs (for an empty store whose clients may
        /// keep their cursors). Default: new epochs, so clients reset.
        #[arg(long)]
        keep_epoch: bool,
        /// The store has data: restore into a fresh store beside it, then
        /// swap the directories (the old one is kept as DIR.replaced-<ms>).
        #[arg(long)]
        replace: bool,
    },
    /// Recompute every checksum and digest of a store or a bundle and report
    /// the first mismatch.
    Verify {
        /// A store to verify.
        #[arg(long, conflicts_with = "bundle")]
        store: Option<String>,
        /// A bundle to verify: a directory, or `s3://BUCKET/PREFIX`.
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
    /// Copy every collection (epochs, seqs, peers, checksums) from one store
    /// to another, resumably, and compare digests at the end.
    MigrateStorage {
        /// The source store.
        #[arg(long)]
        from: String,
        /// The target store.
        #[arg(long)]
        to: String,
    },
    /// List collections with heads, epochs, sizes, peers and pending
    /// compaction.
    Inspect {
        /// The store.
        #[arg(long)]
        store: String,
    },
    /// Compact a store's collections now (peer-gated as in the server).
    Compact {
        /// The store.
        #[arg(long)]
        store: String,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
        /// TOML config for the compaction thresholds.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// What went wrong, with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<BundleError> for Failure {
    fn from(err: BundleError) -> Self {
        Self {
            // A copy whose stores disagree at the end is a mismatch found,
            // like `verify`'s.
            code: if matches!(err, BundleError::CopyDiffers { .. }) {
                3
            } else {
                1
            },
            message: err.to_string(),
        }
    }
}

impl From<RemoteError> for Failure {
    fn from(err: RemoteError) -> Self {
        match err {
            RemoteError::Bundle(err) => err.into(),
            RemoteError::S3(seqsync_cli::s3::S3Error::BadUrl { .. }) => {
                Failure::usage(err.to_string())
            }
            other => Self {
                code: 1,
                message: other.to_string(),
            },
        }
    }
}

/// `s3://…` as a location on object storage, with its client (configured
/// from the environment, its bucket checked), or `None` for a directory.
/// Called before the store is opened, so a bad URL, missing credentials or
/// a missing bucket leave no store behind.
fn s3_location(path: &Path) -> Result<Option<(S3Url, S3Client)>, Failure> {
    let Some(text) = path.to_str().filter(|t| S3Url::is_s3(t)) else {
        return Ok(None);
    };
    let url = S3Url::parse(text).map_err(|e| Failure::usage(e.to_string()))?;
    let client = S3Client::from_env(&url).map_err(RemoteError::from)?;
    client.check_bucket().map_err(RemoteError::from)?;
    Ok(Some((url, client)))
}

impl From<StorageError> for Failure {
    fn from(err: StorageError) -> Self {
        Self {
            code: 1,
            message: err.to_string(),
        }
    }
}

/// `seqsync serve`: logs to stderr (filtered by `RUST_LOG`, default
/// `info`), reads the host's configuration and serves it until SIGINT or
/// SIGTERM. Exit code 2 for a configuration to fix, 1 for other failures.
fn serve(config: Option<&Path>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = seqsync_server::HostConfig::load(config)
        .map_err(seqsync_server::ServeError::Config)
        .and_then(seqsync_server::serve);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("seqsync: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve { config } = &cli.command {
        return serve(config.as_deref());
    }
    let json = cli.json;
    match run(cli) {
        Ok(report) => {
            report::print(json, &*report);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            if json {
                println!(
                    "{}",
                    json!({"error": failure.message, "exit_code": failure.code})
                );
            }
            eprintln!("seqsync: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// `sqlite:DIR` / `redb:DIR` / `postgres://user@host:port/db` (`memory:`
/// is accepted for tests).
fn parse_store(spec: &str) -> Result<StorageConfig, Failure> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Ok(StorageConfig {
            backend: BackendKind::Postgres,
            url: spec.to_owned(),
            ..StorageConfig::default()
        });
    }
    let (kind, path) = spec.split_once(':').ok_or_else(|| {
        Failure::usage(format!(
            "store {spec:?}: write it as sqlite:DIR, redb:DIR or postgres://user@host/db"
        ))
    })?;
    let backend = match kind {
        "sqlite" => BackendKind::Sqlite,
        "redb" => BackendKind::Redb,
        "memory" => BackendKind::Memory,
        other => {
            return Err(Failure::usage(format!(
                "store {spec:?}: unknown backend {other:?} (sqlite:DIR, redb:DIR or postgres://…)"
            )))
        }
    };
    if path.is_empty() && backend != BackendKind::Memory {
        return Err(Failure::usage(format!(
            "store {spec:?}: no directory after the colon"
        )));
    }
    Ok(StorageConfig {
        backend,
        path: PathBuf::from(path),
        durability: Durability::Immediate,
        ..StorageConfig::default()
    })
}

fn open(spec: &str) -> Result<Arc<dyn Storage>, Failure> {
    let config = parse_store(spec)?;
    seqsync_adapters::open_storage(&config).map_err(|e| Failure {
        code: 1,
        message: format!("{}: {e}", seqsync_engine::redact_url(spec)),
    })
}

/// A progress bar (hidden with --json) fed by [`BundleProgress`].
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(json: bool, what: &str) -> Self {
        let bar = if json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {pos}/{len} changes  {per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        Self { bar }
    }

    fn update(&self, progress: BundleProgress) {
        if progress.total > 0 {
            self.bar.set_length(progress.total);
        }
        self.bar.set_position(progress.done);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn collection(name: &str) -> Result<CollectionName, Failure> {
    CollectionName::new(name).map_err(|e| Failure::usage(e.to_string()))
}

fn run(cli: Cli) -> Result<Box<dyn Report>, Failure> {
    let json = cli.json;
    let staging = cli.staging_dir.unwrap_or_else(remote::default_staging_base);
    let staging = staging.as_path();
    match cli.command {
        Command::Serve { .. } => Ok(Box::new(report::Nothing)),
        Command::Export {
            store,
            collection: name,
            out,
            after,
            until,
            batch_changes,
            batch_bytes,
            no_state,
        } => {
            let s3 = s3_location(&out)?;
            let storage = open(&store)?;
            let bar = Bar::new(json, "export");
            let options = ExportOptions {
                max_batch_changes: batch_changes,
                max_batch_bytes: batch_bytes,
                with_state: !no_state,
            };
            let started = std::time::Instant::now();
            if let Some((url, client)) = s3 {
                let (report, transfer) = remote::export_to_s3(
                    &*storage,
                    &store,
                    &collection(&name)?,
                    after,
                    until,
                    options,
                    Remote {
                        client: &client,
                        url: &url,
                        staging,
                    },
                    &mut |p| bar.update(p),
                )?;
                bar.finish();
                return Ok(Box::new(report::Exported {
                    command: "export",
                    collection: name,
                    changes: report.changes,
                    batches: report.manifest.batches.len(),
                    state_batch: report.manifest.state.is_some(),
                    bytes: report.bytes,
                    until: report.manifest.until,
                    seconds: started.elapsed().as_secs_f64(),
                    out,
                    transfer: Some(transfer),
                }));
            }
            let report = bundle::export_collection(
                &*storage,
                &collection(&name)?,
                after,
                until,
                &out,
                options,
                &mut |p| bar.update(p),
            )?;
            bar.finish();
            Ok(Box::new(report::Exported {
                command: "export",
                collection: name,
                changes: report.changes,
                batches: report.manifest.batches.len(),
                state_batch: report.manifest.state.is_some(),
                bytes: report.bytes,
                until: report.manifest.until,
                seconds: started.elapsed().as_secs_f64(),
                out,
                transfer: None,
            }))
        }
        Command::Import {
            store,
            bundle: dir,
            new_epoch,
        } => {
            let s3 = s3_location(&dir)?;
            let storage = open(&store)?;
            let bar = Bar::new(json, "import");
            let options = ImportOptions {
                epoch: if new_epoch {
                    ImportEpoch::New
                } else {
                    ImportEpoch::Keep
                },
            };
            let (report, transfer) = match s3 {
                Some((url, client)) => {
                    let (report, transfer) = remote::import_from_s3(
                        &*storage,
                        &store,
                        Remote {
                            client: &client,
                            url: &url,
                            staging,
                        },
                        options,
                        &mut |p| bar.update(p),
                    )?;
                    (report, Some(transfer))
                }
                None => (
                    bundle::import_bundle(&*storage, &dir, options, &mut |p| bar.update(p))?,
                    None,
                ),
            };
            bar.finish();
            Ok(Box::new(report::Imported {
                command: "import",
                collection: report.collection,
                changes: report.changes,
                batches_applied: report.batches_applied,
                batches_skipped: report.batches_skipped,
                batches_compared: report.batches_compared,
                used_state_batch: report.used_state_batch,
                head: report.head,
                epoch: report.epoch.to_string(),
                state_digest_checked: report.state_digest_checked,
                transfer,
            }))
        }
        Command::Backup { store, out } => {
            let s3 = s3_location(&out)?;
            let storage = open(&store)?;
            let bar = Bar::new(json, "backup");
            if let Some((url, client)) = s3 {
                let (done, transfer) = remote::backup_to_s3(
                    &*storage,
                    &store,
                    Remote {
                        client: &client,
                        url: &url,
                        staging,
                    },
                    &mut |p| bar.update(p),
                )?;
                bar.finish();
                return Ok(Box::new(report::Backup {
                    command: "backup",
                    collections: done
                        .into_iter()
                        .map(|c| report::BackedUp {
                            collection: c.collection,
                            head: c.head,
                            changes: c.changes,
                        })
                        .collect(),
                    out,
                    transfer: Some(transfer),
                }));
            }
            let reports =
                bundle::backup_store(&*storage, &out, ExportOptions::default(), &mut |p| {
                    bar.update(p)
                })?;
            bar.finish();
            let collections = reports
                .iter()
                .map(|r| report::BackedUp {
                    collection: r.manifest.collection.clone(),
                    head: r.manifest.until,
                    changes: r.changes,
                })
                .collect();
            Ok(Box::new(report::Backup {
                command: "backup",
                collections,
                out,
                transfer: None,
            }))
        }
        Command::Restore {
            backup,
            store,
            keep_epoch,
            replace,
        } => restore(json, &backup, &store, keep_epoch, replace, staging),
        Command::Verify { store, bundle: dir } => match (store, dir) {
            (Some(store), None) => verify_store(json, &store),
            (None, Some(dir)) => {
                if let Some((url, client)) = s3_location(&dir)? {
                    let (report, transfer) = remote::verify_s3_bundle(Remote {
                        client: &client,
                        url: &url,
                        staging,
                    })
                    .map_err(|e| Failure {
                        // A damaged object is a mismatch found.
                        code: if matches!(
                            e,
                            RemoteError::S3(seqsync_cli::s3::S3Error::Damaged { .. })
                        ) {
                            3
                        } else {
                            1
                        },
                        message: e.to_string(),
                    })?;
                    return Ok(Box::new(report::VerifiedBundle {
                        command: "verify",
                        bundle: dir,
                        batches: report.batches,
                        changes: report.changes,
                        ok: true,
                        bytes: report.bytes,
                        transfer: Some(transfer),
                    }));
                }
                let bar = Bar::new(json, "verify");
                let report =
                    bundle::verify_bundle(&dir, &mut |p| bar.update(p)).map_err(|e| Failure {
                        code: 3,
                        message: e.to_string(),
                    })?;
                bar.finish();
                Ok(Box::new(report::VerifiedBundle {
                    command: "verify",
                    bundle: dir,
                    batches: report.batches,
                    changes: report.changes,
                    ok: true,
                    bytes: report.bytes,
                    transfer: None,
                }))
            }
            _ => Err(Failure::usage("verify: give --store or --bundle")),
        },
        Command::MigrateStorage { from, to } => migrate_storage(json, &from, &to),
        Command::Inspect { store } => inspect(&store),
        Command::Compact {
            store,
            collection: only,
            config,
        } => compact(&store, only, config.as_deref()),
    }
}

fn restore(
    json: bool,
    backup: &Path,
    store: &str,
    keep_epoch: bool,
    replace: bool,
    staging: &Path,
) -> Result<Box<dyn Report>, Failure> {
    let config = parse_store(store)?;
    let options = ImportOptions {
        epoch: if keep_epoch {
            ImportEpoch::Keep
        } else {
            ImportEpoch::New
        },
    };
    let s3 = s3_location(backup)?;
    let bar = Bar::new(json, "restore");
    let mut transfer = None;
    let mut restore_into = |storage: &dyn Storage| -> Result<(), RemoteError> {
        match &s3 {
            Some((url, client)) => {
                let (_, moved) = remote::restore_from_s3(
                    storage,
                    store,
                    Remote {
                        client,
                        url,
                        staging,
                    },
                    options,
                    &mut |p| bar.update(p),
                )?;
                transfer = Some(moved);
            }
            None => {
                bundle::restore_backup(storage, backup, options, &mut |p| bar.update(p))?;
            }
        }
        Ok(())
    };
    let target = if replace {
        // Restore beside the store, then swap the directories.
        let fresh = config.path.with_extension("restoring");
        let fresh_config = StorageConfig {
            path: fresh.clone(),
            ..config.clone()
        };
        {
            let storage = seqsync_adapters::open_storage(&fresh_config)?;
            restore_into(&*storage)?;
        }
        let kept = config
            .path
            .with_extension(format!("replaced-{}", seqsync_engine::now_ms()));
        if config.path.exists() {
            std::fs::rename(&config.path, &kept).map_err(|e| Failure {
                code: 1,
                message: format!("{}: cannot move aside: {e}", config.path.display()),
            })?;
        }
        std::fs::rename(&fresh, &config.path).map_err(|e| Failure {
            code: 1,
            message: format!(
                "{}: cannot move the restored store into place: {e}",
                fresh.display()
            ),
        })?;
        Some(kept)
    } else {
        let storage = seqsync_adapters::open_storage(&config)?;
        // A resumed restore finds its own collections and continues; a
        // collection that is someone else's data is refused.
        match restore_into(&*storage) {
            Ok(()) => {}
            Err(RemoteError::Bundle(
                BundleError::Inconsistent { detail, .. }
                | BundleError::EpochMismatch {
                    collection: detail, ..
                },
            )) => {
                return Err(Failure::usage(format!(
                    "{store} holds data already ({detail}); restore with --replace (the store is moved aside), or into an empty store"
                )))
            }
            Err(err) => return Err(err.into()),
        }
        None
    };
    bar.finish();
    Ok(Box::new(report::Restored {
        command: "restore",
        backup: backup.to_owned(),
        store: store.to_owned(),
        replaced: target,
        transfer,
    }))
}

fn list_all(
    storage: &dyn Storage,
) -> Result<Vec<(CollectionName, seqsync_engine::CollectionMeta)>, Failure> {
    let mut out = Vec::new();
    let mut after: Option<CollectionName> = None;
    loop {
        let page = storage.list_collections(after.as_ref(), 1000)?;
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        after = Some(last.clone());
        let full = page.len() == 1000;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Checks each collection's log with `verify_log` (the checksum chain, and
/// that it ends at the collection's head and checksum), then computes its
/// state digest.
fn verify_store(json: bool, store: &str) -> Result<Box<dyn Report>, Failure> {
    let storage = open(store)?;
    let collections = list_all(&*storage)?;
    let bar = Bar::new(json, "verify");
    let total: u64 = collections.iter().map(|(_, m)| m.head).sum();
    let mut done = 0u64;
    let mut results = Vec::new();
    for (name, meta) in &collections {
        let before = done;
        let verified = verify_log(&*storage, name, meta, &mut |read| {
            done = before.saturating_add(read);
            bar.update(BundleProgress {
                done,
                total,
                bytes: 0,
            });
        })
        .map_err(|e| match e {
            VerifyLogError::Storage(e) => Failure::from(e),
            mismatch => Failure {
                code: 3,
                message: format!("{store}: {mismatch}"),
            },
        })?;
        let changes = verified.changes;
        let digest = collection_digest(&*storage, name, &mut DigestCache::default())?;
        results.push(report::VerifiedCollection {
            collection: name.to_string(),
            head: meta.head,
            changes,
            log_checksum: format!("{:016x}", meta.log_checksum),
            state_digest: digest
                .and_then(|d| d.state_digest)
                .map(|d| format!("{d:016x}")),
        });
    }
    bar.finish();
    Ok(Box::new(report::VerifiedStore {
        command: "verify",
        store: store.to_owned(),
        collections: results,
        ok: true,
    }))
}

/// Copies every collection with `bundle::copy_collection` through bundles
/// in the target's directory (kept until every copy is checked, so a rerun
/// resumes).
fn migrate_storage(json: bool, from: &str, to: &str) -> Result<Box<dyn Report>, Failure> {
    let source = open(from)?;
    let target_config = parse_store(to)?;
    let target = seqsync_adapters::open_storage(&target_config)?;
    let work = target_config.path.join("migrate-storage.partial");
    let bar = Bar::new(json, "copy");
    let mut results = Vec::new();
    for (name, meta) in list_all(&*source)? {
        let report =
            bundle::copy_collection(&*source, &*target, &name, &work, &mut |p| bar.update(p))?;
        results.push(report::Copied {
            collection: name.to_string(),
            head: meta.head,
            epoch: meta.epoch.to_string(),
            changes: report.changes,
        });
    }
    bar.finish();
    let _ = std::fs::remove_dir_all(&work);
    Ok(Box::new(report::Migrated {
        command: "migrate-storage",
        from: from.to_owned(),
        to: to.to_owned(),
        collections: results,
    }))
}

fn inspect(store: &str) -> Result<Box<dyn Report>, Failure> {
    let storage = open(store)?;
    let defaults = seqsync_engine::EngineConfig::default().compaction;
    let mut out = Vec::new();
    for (name, meta) in list_all(&*storage)? {
        let mut changes = 0u64;
        let mut bytes = 0u64;
        let mut deltas: std::collections::HashMap<String, (u64, u64)> =
            std::collections::HashMap::new();
        let mut cursor = 0;
        while let Some(page) = storage.read_changes(&name, cursor, 1000)? {
            if page.changes.is_empty() {
                break;
            }
            for change in &page.changes {
                changes += 1;
                bytes += change.payload.len() as u64;
                let entry = deltas.entry(change.doc.to_string()).or_default();
                match change.kind {
                    ChangeKind::Update => {
                        entry.0 += 1;
                        entry.1 += change.payload.len() as u64;
                    }
                    ChangeKind::Snapshot => *entry = (0, 0),
                    _ => {}
                }
                cursor = change.seq;
            }
        }
        let due = deltas
            .values()
            .filter(|(n, b)| defaults.is_due(*n, *b))
            .count();
        let peers = storage
            .peers(&name)?
            .iter()
            .map(|p| report::PeerLag {
                peer: p.peer.to_string(),
                acked: p.acked,
                lag: meta.head.saturating_sub(p.acked),
                last_seen_ms: p.last_seen_ms,
            })
            .collect();
        out.push(report::Inspected {
            collection: name.to_string(),
            epoch: meta.epoch.to_string(),
            head: meta.head,
            schema_version: meta.schema_version,
            documents: deltas.len(),
            changes,
            payload_bytes: bytes,
            log_checksum: format!("{:016x}", meta.log_checksum),
            documents_due_for_compaction: due,
            peers,
        });
    }
    Ok(Box::new(report::Inspection {
        command: "inspect",
        store: store.to_owned(),
        collections: out,
    }))
}

fn compact(
    store: &str,
    only: Option<String>,
    config: Option<&Path>,
) -> Result<Box<dyn Report>, Failure> {
    let storage_config = parse_store(store)?;
    // The host's file (its `[server]` too), of which compaction reads the
    // engine's sections.
    let mut config = seqsync_server::HostConfig::load(config)
        .map_err(|e| Failure::usage(e.to_string()))?
        .engine;
    config.storage = storage_config;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot start a runtime: {e}"),
        })?;
    runtime.block_on(async {
        let engine = seqsync_actors::Engine::builder(config)
            .storage_opener(seqsync_adapters::open_storage)
            .open()
            .map_err(|e| Failure {
                code: 1,
                message: format!("{store}: {e}"),
            })?;
        let storage = open_names(&engine, only)?;
        let mut out = Vec::new();
        for name in storage {
            let summary = engine.compact(&name).await.map_err(|e| Failure {
                code: 1,
                message: format!("collection {name}: {e}"),
            })?;
            out.push(report::Compacted {
                collection: name,
                documents_compacted: summary.documents_compacted,
                changes_removed: summary.changes_removed,
                bytes_before: summary.bytes_before,
                bytes_after: summary.bytes_after,
            });
        }
        engine.shutdown().await;
        Ok(Box::new(report::Compaction {
            command: "compact",
            store: store.to_owned(),
            collections: out,
        }) as Box<dyn Report>)
    })
}

fn open_names(
    engine: &seqsync_actors::Engine,
    only: Option<String>,
) -> Result<Vec<String>, Failure> {
    if let Some(only) = only {
        return Ok(vec![only]);
    }
    let storage = engine.storage();
    Ok(list_all(&*storage)?
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect())
}
