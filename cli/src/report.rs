//! What each command reports, and the one printer.
//!
//! A command decides and builds one report value; it prints nothing itself.
//! [`print`] writes that value as one JSON object on stdout with `--json`
//! (for scripts: the same fields whatever the text says), or as text for a
//! person. So the text and the JSON of a command can never disagree, and a
//! new command cannot forget one of them.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use seqsync_cli::remote::Transfer;

/// The line a command adds after moving objects: what it sent and what an
/// earlier, stopped run had moved already.
fn transfer_line(transfer: Option<&Transfer>) -> String {
    match transfer {
        Some(t) => format!(
            "{} object(s) transferred ({:.1} MB), {} already there (skipped)\n",
            t.objects_transferred,
            t.bytes_transferred as f64 / 1e6,
            t.objects_skipped
        ),
        None => String::new(),
    }
}

/// A command's outcome, printable both ways.
pub(crate) trait Report {
    /// The JSON object `--json` prints.
    fn to_json(&self) -> Value;
    /// The text printed otherwise, one line per `\n`.
    fn text(&self) -> String;
}

/// The text half of a [`Report`]; the JSON half is the value's fields.
pub(crate) trait Text {
    /// The lines a person reads.
    fn text(&self) -> String;
}

impl<T: Serialize + Text> Report for T {
    fn to_json(&self) -> Value {
        serde_json::to_value(self)
            .unwrap_or_else(|e| serde_json::json!({"error": format!("report: {e}")}))
    }

    fn text(&self) -> String {
        Text::text(self)
    }
}

/// Prints `report` as JSON or text: the only place a command's outcome
/// reaches stdout.
pub(crate) fn print(json: bool, report: &dyn Report) {
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.text());
    }
}

/// `seqsync serve` reports nothing (it runs until stopped).
pub(crate) struct Nothing;

impl Report for Nothing {
    fn to_json(&self) -> Value {
        Value::Null
    }

    fn text(&self) -> String {
        String::new()
    }
}

/// `seqsync export`.
#[derive(Serialize)]
pub(crate) struct Exported {
    pub(crate) command: &'static str,
    pub(crate) collection: String,
    pub(crate) changes: u64,
    pub(crate) batches: usize,
    pub(crate) state_batch: bool,
    pub(crate) bytes: u64,
    pub(crate) until: u64,
    pub(crate) seconds: f64,
    #[serde(skip)]
    pub(crate) out: PathBuf,
    /// Objects moved to or from object storage (`s3://` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transfer: Option<Transfer>,
}

impl Text for Exported {
    fn text(&self) -> String {
        format!(
            "exported {} changes of {} in {} batches{} to {} ({:.1} MB, {:.2} s)\n",
            self.changes,
            self.collection,
            self.batches,
            if self.state_batch { " + state" } else { "" },
            self.out.display(),
            self.bytes as f64 / 1e6,
            self.seconds
        ) + &transfer_line(self.transfer.as_ref())
    }
}

/// `seqsync import`.
#[derive(Serialize)]
pub(crate) struct Imported {
    pub(crate) command: &'static str,
    pub(crate) collection: String,
    pub(crate) changes: u64,
    pub(crate) batches_applied: usize,
    pub(crate) batches_skipped: usize,
    pub(crate) batches_compared: usize,
    pub(crate) used_state_batch: bool,
    pub(crate) head: u64,
    pub(crate) epoch: String,
    pub(crate) state_digest_checked: bool,
    /// Objects moved to or from object storage (`s3://` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transfer: Option<Transfer>,
}

impl Text for Imported {
    fn text(&self) -> String {
        format!(
            "imported {} changes into {} ({} batches applied, {} already held); head {}, epoch {}{}\n",
            self.changes,
            self.collection,
            self.batches_applied,
            self.batches_skipped,
            self.head,
            self.epoch,
            if self.state_digest_checked {
                ", state digest verified"
            } else {
                ""
            }
        ) + &transfer_line(self.transfer.as_ref())
    }
}

/// One collection of `seqsync backup`.
#[derive(Serialize)]
pub(crate) struct BackedUp {
    pub(crate) collection: String,
    pub(crate) head: u64,
    pub(crate) changes: u64,
}

/// `seqsync backup`.
#[derive(Serialize)]
pub(crate) struct Backup {
    pub(crate) command: &'static str,
    pub(crate) collections: Vec<BackedUp>,
    #[serde(skip)]
    pub(crate) out: PathBuf,
    /// Objects moved to or from object storage (`s3://` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transfer: Option<Transfer>,
}

impl Text for Backup {
    fn text(&self) -> String {
        format!(
            "backed up {} collection(s) to {}\n",
            self.collections.len(),
            self.out.display()
        ) + &transfer_line(self.transfer.as_ref())
    }
}

/// `seqsync restore`.
#[derive(Serialize)]
pub(crate) struct Restored {
    pub(crate) command: &'static str,
    pub(crate) backup: PathBuf,
    pub(crate) store: String,
    /// Where the previous store was moved (`--replace`).
    pub(crate) replaced: Option<PathBuf>,
    /// Objects moved to or from object storage (`s3://` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transfer: Option<Transfer>,
}

impl Text for Restored {
    fn text(&self) -> String {
        let done = match &self.replaced {
            Some(kept) => format!(
                "restored {} into {} (the previous store is kept at {})\n",
                self.backup.display(),
                self.store,
                kept.display()
            ),
            None => format!("restored {} into {}\n", self.backup.display(), self.store),
        };
        done + &transfer_line(self.transfer.as_ref())
    }
}

/// `seqsync verify --bundle`.
#[derive(Serialize)]
pub(crate) struct VerifiedBundle {
    pub(crate) command: &'static str,
    pub(crate) bundle: PathBuf,
    pub(crate) batches: usize,
    pub(crate) changes: u64,
    pub(crate) ok: bool,
    #[serde(skip)]
    pub(crate) bytes: u64,
    /// Objects downloaded to verify them (`s3://` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transfer: Option<Transfer>,
}

impl Text for VerifiedBundle {
    fn text(&self) -> String {
        format!(
            "{}: {} batches, {} changes, {:.1} MB: every body hash and checksum matches\n",
            self.bundle.display(),
            self.batches,
            self.changes,
            self.bytes as f64 / 1e6
        )
    }
}

/// One collection of `seqsync verify --store`.
#[derive(Serialize)]
pub(crate) struct VerifiedCollection {
    pub(crate) collection: String,
    pub(crate) head: u64,
    pub(crate) changes: u64,
    pub(crate) log_checksum: String,
    /// `None` while a document holds pending structures.
    pub(crate) state_digest: Option<String>,
}

/// `seqsync verify --store`.
#[derive(Serialize)]
pub(crate) struct VerifiedStore {
    pub(crate) command: &'static str,
    pub(crate) store: String,
    pub(crate) collections: Vec<VerifiedCollection>,
    pub(crate) ok: bool,
}

impl Text for VerifiedStore {
    fn text(&self) -> String {
        self.collections
            .iter()
            .map(|c| {
                format!(
                    "{}: head {}, {} changes, log checksum {}, state digest {}: ok\n",
                    c.collection,
                    c.head,
                    c.changes,
                    c.log_checksum,
                    c.state_digest.as_deref().unwrap_or("none (pending)")
                )
            })
            .collect()
    }
}

/// One collection of `seqsync migrate-storage`.
#[derive(Serialize)]
pub(crate) struct Copied {
    pub(crate) collection: String,
    pub(crate) head: u64,
    pub(crate) epoch: String,
    pub(crate) changes: u64,
}

/// `seqsync migrate-storage`.
#[derive(Serialize)]
pub(crate) struct Migrated {
    pub(crate) command: &'static str,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) collections: Vec<Copied>,
}

impl Text for Migrated {
    fn text(&self) -> String {
        format!(
            "copied {} collection(s) from {} to {}; epochs, seqs, peers, log checksums and state digests match\n",
            self.collections.len(),
            self.from,
            self.to
        )
    }
}

/// A peer in `seqsync inspect`.
#[derive(Serialize)]
pub(crate) struct PeerLag {
    pub(crate) peer: String,
    pub(crate) acked: u64,
    pub(crate) lag: u64,
    pub(crate) last_seen_ms: u64,
}

/// One collection of `seqsync inspect`.
#[derive(Serialize)]
pub(crate) struct Inspected {
    pub(crate) collection: String,
    pub(crate) epoch: String,
    pub(crate) head: u64,
    pub(crate) schema_version: u32,
    pub(crate) documents: usize,
    pub(crate) changes: u64,
    pub(crate) payload_bytes: u64,
    pub(crate) log_checksum: String,
    pub(crate) documents_due_for_compaction: usize,
    pub(crate) peers: Vec<PeerLag>,
}

/// `seqsync inspect`.
#[derive(Serialize)]
pub(crate) struct Inspection {
    pub(crate) command: &'static str,
    pub(crate) store: String,
    pub(crate) collections: Vec<Inspected>,
}

impl Text for Inspection {
    fn text(&self) -> String {
        let mut out = format!(
            "{:<24} {:>8} {:>6} {:>6} {:>9} {:>12} {:>5} {:>6}  epoch\n",
            "collection", "head", "schema", "docs", "changes", "bytes", "peers", "due"
        );
        for c in &self.collections {
            out.push_str(&format!(
                "{:<24} {:>8} {:>6} {:>6} {:>9} {:>12} {:>5} {:>6}  {}\n",
                c.collection,
                c.head,
                c.schema_version,
                c.documents,
                c.changes,
                c.payload_bytes,
                c.peers.len(),
                c.documents_due_for_compaction,
                c.epoch
            ));
        }
        out
    }
}

/// One collection of `seqsync compact`.
#[derive(Serialize)]
pub(crate) struct Compacted {
    pub(crate) collection: String,
    pub(crate) documents_compacted: u64,
    pub(crate) changes_removed: u64,
    pub(crate) bytes_before: u64,
    pub(crate) bytes_after: u64,
}

/// `seqsync compact`.
#[derive(Serialize)]
pub(crate) struct Compaction {
    pub(crate) command: &'static str,
    pub(crate) store: String,
    pub(crate) collections: Vec<Compacted>,
}

impl Text for Compaction {
    fn text(&self) -> String {
        self.collections
            .iter()
            .map(|c| {
                format!(
                    "{}: {} documents compacted, {} changes removed, {} -> {} bytes\n",
                    c.collection,
                    c.documents_compacted,
                    c.changes_removed,
                    c.bytes_before,
                    c.bytes_after
                )
            })
            .collect()
    }
}
