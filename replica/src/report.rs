//! What a sync, a local compaction and a reset tell the app: plain data,
//! Tolstoy-style outcomes (nothing, pulled, pushed, merged, reset) with the
//! counts behind them, so an app can show what happened without reading
//! the local store.

use seqsync_engine::{Epoch, Seq};

/// Why a sync had to start over from the server's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The server's collection has another epoch (replaced, restored).
    Epoch,
    /// The replica's cursor is beyond the server's head (the server lost
    /// history, e.g. restored from an older backup under the same epoch).
    CursorBeyondHead,
    /// The server's change at the replica's cursor has another log checksum:
    /// the seq was reused for something else (a database failover that lost
    /// acknowledged commits, an older backup restored and written since).
    HistoryReplaced,
}

/// What a sync did, Tolstoy's cases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Nothing moved either way.
    NoOp,
    /// Remote changes only (a local fast-forward).
    Pulled {
        /// Changes by others applied locally.
        changes: u64,
        /// Their payload bytes.
        bytes: u64,
    },
    /// Local edits only (a remote fast-forward).
    Pushed {
        /// Local updates the server took.
        updates: u64,
    },
    /// Both.
    Merged {
        /// Changes by others applied locally.
        pulled: u64,
        /// Local updates the server took.
        pushed: u64,
    },
    /// The server answered reset: the replica recovered the collection and
    /// pushed its own state back, so nothing local is lost.
    Reset {
        /// Why.
        reason: ResetReason,
        /// Documents whose server state was applied locally.
        pulled: u64,
        /// Documents whose local state was pushed back.
        pushed: u64,
    },
}

/// The report of one [`Replica::sync`](crate::Replica::sync).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// What happened.
    pub outcome: SyncOutcome,
    /// The server moved (others wrote) while this sync ran: sync again to
    /// pull it.
    pub follow_up_needed: bool,
    /// The cursor the replica holds now.
    pub cursor: Seq,
    /// The server's head as last seen.
    pub head: Seq,
    /// The server's epoch.
    pub epoch: Option<Epoch>,
    /// Requests made (pages, pushes, acks).
    pub requests: u64,
    /// Documents whose own provisional migration output was replaced by
    /// the server's migration of them (see [`Replica::migrate_local`](crate::Replica::migrate_local)).
    pub rebased: u64,
}

/// Where a running sync is, for a progress bar: `received` of `expected`
/// changes pulled (from the cursor and the server's head; compaction may
/// deliver fewer, so the last event sets both equal), `pushed` of
/// `to_push` local edits sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Changes received so far.
    pub received: u64,
    /// Changes expected (head − cursor when the sync began its pull).
    pub expected: u64,
    /// Local edits acknowledged so far.
    pub pushed: u64,
    /// Local edits in the outbox when the push began.
    pub to_push: u64,
}

/// What [`Replica::compact`](crate::Replica::compact) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalCompaction {
    /// Documents compacted.
    pub documents: u64,
    /// Changes replaced by snapshots.
    pub changes_removed: u64,
    /// Their payload bytes.
    pub bytes_before: u64,
    /// The snapshots' bytes.
    pub bytes_after: u64,
}
