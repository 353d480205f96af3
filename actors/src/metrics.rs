//! Metric names (docs/DESIGN.md, "Observability"), in one place so the host and the docs agree.
//!
//! Recorded through the `metrics` facade: with no recorder installed they cost
//! almost nothing; the host example installs a Prometheus exporter.

/// Counter: pushes that logged a change.
pub const PUSHES: &str = "seqsync_pushes_total";
/// Counter: pushes that added nothing (retries).
pub const NOOP_PUSHES: &str = "seqsync_noop_pushes_total";
/// Counter: update bytes logged.
pub const PUSHED_BYTES: &str = "seqsync_pushed_bytes_total";
/// Histogram: seconds from push call to durable ack.
pub const PUSH_SECONDS: &str = "seqsync_push_latency_seconds";
/// Histogram: requests per group commit.
pub const COMMIT_GROUP_SIZE: &str = "seqsync_commit_group_size";
/// Histogram, label `backend`: seconds per storage commit.
pub const STORAGE_COMMIT_SECONDS: &str = "seqsync_storage_commit_seconds";
/// Counter: changes delivered by `changes` and `subscribe`.
pub const CHANGES_STREAMED: &str = "seqsync_changes_streamed_total";
/// Counter: live batches handed to subscribers by collection actors (one per
/// subscriber per commit that touches what it follows).
pub const LIVE_DELIVERIES: &str = "seqsync_live_deliveries_total";
/// Gauge: live subscriptions.
pub const SUBSCRIBERS: &str = "seqsync_subscribers";
/// Counter: commits by another node (shared store) that a loaded
/// collection heard of.
pub const EXTERNAL_COMMITS: &str = "seqsync_external_commits_total";
/// Counter: changes of other nodes' commits read by a loaded collection and
/// handed to its documents and live subscribers (incremental catch-up).
pub const EXTERNAL_CHANGES: &str = "seqsync_external_changes_total";
/// Counter: catch-ups that fell back to a reload (the node's own writes
/// were in flight, the epoch changed, a read failed).
pub const EXTERNAL_RELOADS: &str = "seqsync_external_reloads_total";
/// Histogram: ms from another node's commit (its clock) to its changes
/// reaching this node's live subscribers: the lag between nodes.
pub const EXTERNAL_COMMIT_LAG_MS: &str = "seqsync_external_commit_lag_ms";
/// Counter (postgres backend): collection write leases taken.
pub const LEASES_ACQUIRED: &str = "seqsync_leases_acquired_total";
/// Counter (postgres backend): leases lost to another node.
pub const LEASES_LOST: &str = "seqsync_leases_lost_total";
/// Gauge (postgres backend): leases this node holds.
pub const LEASES_HELD: &str = "seqsync_leases_held";
/// Counter (host server): writes answered with a 307 to the owner.
pub const FORWARDED_REQUESTS: &str = "seqsync_forwarded_requests_total";
/// Counter: compactions committed.
pub const COMPACTIONS: &str = "seqsync_compactions_total";
/// Histogram: seconds per compaction.
pub const COMPACTION_SECONDS: &str = "seqsync_compaction_seconds";
/// Counter: payload bytes removed by compaction.
pub const BYTES_RECLAIMED: &str = "seqsync_compaction_reclaimed_bytes_total";
/// Gauge: collections with a live actor.
pub const LOADED_COLLECTIONS: &str = "seqsync_loaded_collections";
/// Gauge: documents held in memory.
pub const LOADED_DOCUMENTS: &str = "seqsync_loaded_documents";
/// Gauge: peers seen within `peer_timeout_secs` (as of the last `peers` call).
pub const ACTIVE_PEERS: &str = "seqsync_active_peers";
/// Counter, label `kind`: errors answered, by code.
pub const ERRORS: &str = "seqsync_errors_total";
/// Counter: documents a schema migration has gone through when a store was
/// opened (docs/SCHEMA.md).
pub const MIGRATED_DOCUMENTS: &str = "seqsync_migrated_documents_total";
/// Counter: pushes from older clients upgraded on ingest (the steps from the
/// client's version ran on the document).
pub const UPGRADED_PUSHES: &str = "seqsync_upgraded_pushes_total";

/// Registers descriptions with the installed recorder (call after installing
/// one; harmless otherwise).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(PUSHES, "Pushes that logged a change");
    describe_counter!(
        MIGRATED_DOCUMENTS,
        "Documents a schema migration went through when the store opened"
    );
    describe_counter!(
        UPGRADED_PUSHES,
        "Pushes from older clients upgraded on ingest"
    );
    describe_counter!(NOOP_PUSHES, "Pushes that added nothing (free retries)");
    describe_counter!(PUSHED_BYTES, Unit::Bytes, "Update bytes logged");
    describe_histogram!(PUSH_SECONDS, Unit::Seconds, "Push call to durable ack");
    describe_histogram!(COMMIT_GROUP_SIZE, "Write requests per storage commit");
    describe_histogram!(
        STORAGE_COMMIT_SECONDS,
        Unit::Seconds,
        "Storage commit latency"
    );
    describe_counter!(
        CHANGES_STREAMED,
        "Changes delivered to readers and subscribers"
    );
    describe_counter!(
        LIVE_DELIVERIES,
        "Live batches handed to subscribers (one per subscriber per commit it follows)"
    );
    describe_gauge!(SUBSCRIBERS, "Live subscriptions");
    describe_counter!(
        EXTERNAL_COMMITS,
        "Commits by other nodes that a loaded collection heard of"
    );
    describe_counter!(
        EXTERNAL_CHANGES,
        "Changes of other nodes' commits caught up incrementally"
    );
    describe_counter!(
        EXTERNAL_RELOADS,
        "Catch-ups with other nodes that fell back to a reload"
    );
    describe_histogram!(
        EXTERNAL_COMMIT_LAG_MS,
        Unit::Milliseconds,
        "From another node's commit to its changes reaching this node's subscribers"
    );
    describe_counter!(LEASES_ACQUIRED, "Collection write leases taken");
    describe_counter!(LEASES_LOST, "Collection write leases lost to another node");
    describe_gauge!(LEASES_HELD, "Collection write leases held by this node");
    describe_counter!(
        FORWARDED_REQUESTS,
        "Writes answered with a redirect to the collection's owner"
    );
    describe_counter!(COMPACTIONS, "Compactions committed");
    describe_histogram!(COMPACTION_SECONDS, Unit::Seconds, "Compaction duration");
    describe_counter!(BYTES_RECLAIMED, Unit::Bytes, "Bytes removed by compaction");
    describe_gauge!(LOADED_COLLECTIONS, "Collections with a live actor");
    describe_gauge!(LOADED_DOCUMENTS, "Documents held in memory");
    describe_gauge!(ACTIVE_PEERS, "Peers seen within peer_timeout_secs");
    describe_counter!(ERRORS, "Errors answered, by kind");
}
