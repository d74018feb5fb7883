//! Deterministic workloads shared by the crash tests and their child process
//! (`keel-storage-torture`). Not part of keel's storage API.

use openraft::EntryPayload;

use crate::types::{log_id_at, Command, DeleteOp, Entry, KeyRange, PutOp, Request};

/// The entry the torture writers put at `index`, a pure function of the index: a put of one of
/// 101 keys with a 256-byte value derived from the index; every 7th entry deletes a key instead,
/// and every 5th (not 7th) is a batch of three such requests, the first and last on one key.
pub fn torture_entry(index: u64) -> Entry {
    let request = |i: u64| Request::new(torture_command(i));
    let command = if index.is_multiple_of(5) && !index.is_multiple_of(7) {
        let twin = index.wrapping_add(101 * 1_000_003);
        Command::Batch(vec![
            request(index),
            request(index.wrapping_add(1_000_003)),
            request(twin),
        ])
    } else {
        torture_command(index)
    };
    Entry {
        log_id: log_id_at(1, 1, index),
        payload: EntryPayload::Normal(Request::new(command)),
    }
}

fn torture_command(index: u64) -> Command {
    let key = format!("key-{:03}", index.wrapping_mul(2654435761) % 101).into_bytes();
    if index.is_multiple_of(7) {
        Command::Delete(DeleteOp {
            range: KeyRange::Key(key),
            prev_kv: false,
        })
    } else {
        let value = (0..256)
            .map(|i| (index.wrapping_mul(31).wrapping_add(i) % 251) as u8)
            .collect();
        Command::Put(PutOp {
            key,
            value,
            prev_kv: false,
        })
    }
}
