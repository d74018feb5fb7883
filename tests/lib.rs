//! keel's integration tests live in `tests/tNN_topic.rs`; this crate has no code of its own.
