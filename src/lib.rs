pub use seqsync_engine;
