//! The snapshot file format: what Raft ships to lagging followers and what backups are made of.
//!
//! ```text
//! magic "KEELSNAP" | format u8 | header_len u32 | header (postcard) | crc32(format..header)
//! block*: 0x01 | len u32 | records (len bytes) | crc32(records)
//! end:    0xFE | record_count u64 | sha256(every byte before this 0xFE) | crc32(count, sha)
//! EOF
//! ```
//! Integers are little-endian. A record is one of
//! ```text
//! 1 (key-value) | key_len u32 | key | value_len u32 | value | create_revision u64 | mod_revision u64 | version u64
//! 2 (session)   | client_id u64 | seq u64 | last_index u64 | response_len u32 | response
//! 3 (lease)     | id u64 | ttl_ms u64 | remaining_ms u64 | epoch u64 | granted_revision u64
//! 4 (lease key) | id u64 | key_len u32 | key
//! 5 (auth)      | len u32 | the auth state (keel-storage's encoding)
//! 6 (lease with an owner) | the fields of 3 | owner_len u32 | owner (UTF-8, the user who granted it)
//! ```
//! where a session's `response` is the state machine's encoding of the response it remembers
//! (keel-storage's `codec`: a format byte, then postcard), or empty if it remembered none; this
//! crate carries it as bytes. Key-value records come first, in key order, then the session
//! records, then the leases and the keys attached to them; a file without sessions or leases is
//! exactly what the first release wrote. (A release that does not know leases refuses a file
//! with them as corrupt: upgrade every member before the first lease is granted.)
//!
//! The reader streams: it holds one block (about 64 KiB, at most one large value more) at a time,
//! checks each block's CRC as it goes and the SHA-256 and record count at the end. A file that
//! stops early is "truncated"; any mismatch is "corrupt". A consumer must call
//! [`SnapshotReader::finish`] before trusting what it read, because only the trailer proves that
//! nothing was cut off.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::{KeyValue, RaftPosition};

const MAGIC: &[u8; 8] = b"KEELSNAP";
/// The snapshot format written by this release.
pub const SNAPSHOT_FORMAT: u8 = 1;
const BLOCK: u8 = 0x01;
const END: u8 = 0xFE;
const REC_KV: u8 = 1;
const REC_SESSION: u8 = 2;
const REC_LEASE: u8 = 3;
const REC_LEASE_KEY: u8 = 4;
const REC_AUTH: u8 = 5;
const REC_OWNED_LEASE: u8 = 6;
/// Records are cut into blocks of about this many bytes.
const BLOCK_TARGET: usize = 64 * 1024;
/// A block length beyond this is corruption, not data (keys ≤ 4 KiB, values ≤ a few MiB).
const MAX_BLOCK: usize = 64 * 1024 * 1024;
const MAX_HEADER: usize = 16 * 1024 * 1024;

/// Describes a snapshot file; readable without reading the records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Raft's view: the last included log entry and the membership.
    pub raft: RaftPosition,
    /// The store revision the snapshot holds.
    pub revision: u64,
    /// Milliseconds since the Unix epoch when the snapshot was made.
    pub created_unix_ms: u64,
    /// The cluster the snapshot was taken from; empty if unknown.
    pub cluster_id: String,
}

/// Why a snapshot file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("not a keel snapshot (bad magic bytes)")]
    NotASnapshot,
    #[error("snapshot format {0} is not supported (this release reads format {SNAPSHOT_FORMAT})")]
    UnsupportedFormat(u8),
    #[error("snapshot is truncated")]
    Truncated,
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
}

/// A client session as stored in a snapshot: see `sm::sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSession {
    pub client_id: u64,
    /// The newest sequence number executed for the client.
    pub seq: u64,
    /// The log index that last used the session.
    pub last_index: u64,
    /// The encoded response to `seq`; empty if it was too large to remember.
    pub response: Vec<u8>,
}

/// A lease as stored in a snapshot: see keel-storage's `sm::leases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLease {
    pub id: u64,
    pub ttl_ms: u64,
    pub remaining_ms: u64,
    pub epoch: u64,
    pub granted_revision: u64,
    /// The user who granted it, with authentication enabled (a record of kind 6; kind 3 without
    /// one, so files without owners stay readable by releases before owners).
    pub owner: Option<String>,
}

/// One record of a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRecord {
    Kv(KeyValue),
    Session(SnapshotSession),
    Lease(SnapshotLease),
    /// Key `key` is attached to lease `lease`.
    LeaseKey {
        lease: u64,
        key: Vec<u8>,
    },
    /// The users, roles and permissions (keel-storage's `auth`, encoded there: password hashes,
    /// never passwords). At most one per file, and only when auth was ever configured, so that
    /// the files of clusters without auth stay readable by releases before it.
    Auth(Vec<u8>),
}

fn corrupt(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(what.into())
}

/// Writes a snapshot file.
pub struct SnapshotWriter<W: Write> {
    out: W,
    hasher: Sha256,
    block: Vec<u8>,
    count: u64,
}

impl<W: Write> SnapshotWriter<W> {
    /// Start a snapshot file with `header`.
    pub fn new(out: W, header: &SnapshotHeader) -> io::Result<Self> {
        let body = postcard::to_stdvec(header).map_err(io::Error::other)?;
        let mut w = SnapshotWriter {
            out,
            hasher: Sha256::new(),
            block: Vec::with_capacity(BLOCK_TARGET * 2),
            count: 0,
        };
        let mut head = Vec::with_capacity(body.len() + 17);
        head.extend_from_slice(MAGIC);
        head.push(SNAPSHOT_FORMAT);
        head.extend_from_slice(&(body.len() as u32).to_le_bytes());
        head.extend_from_slice(&body);
        let crc = crc32fast::hash(&head[8..]);
        head.extend_from_slice(&crc.to_le_bytes());
        w.write(&head)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }

    /// Add one key-value pair.
    pub fn push(&mut self, kv: &KeyValue) -> io::Result<()> {
        let b = &mut self.block;
        b.push(REC_KV);
        b.extend_from_slice(&(kv.key.len() as u32).to_le_bytes());
        b.extend_from_slice(&kv.key);
        b.extend_from_slice(&(kv.value.len() as u32).to_le_bytes());
        b.extend_from_slice(&kv.value);
        b.extend_from_slice(&kv.create_revision.to_le_bytes());
        b.extend_from_slice(&kv.mod_revision.to_le_bytes());
        b.extend_from_slice(&kv.version.to_le_bytes());
        self.count += 1;
        if self.block.len() >= BLOCK_TARGET {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Add one client session.
    pub fn push_session(&mut self, session: &SnapshotSession) -> io::Result<()> {
        let response = &session.response;
        let b = &mut self.block;
        b.push(REC_SESSION);
        b.extend_from_slice(&session.client_id.to_le_bytes());
        b.extend_from_slice(&session.seq.to_le_bytes());
        b.extend_from_slice(&session.last_index.to_le_bytes());
        b.extend_from_slice(&(response.len() as u32).to_le_bytes());
        b.extend_from_slice(response);
        self.count += 1;
        if self.block.len() >= BLOCK_TARGET {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Add one lease.
    pub fn push_lease(&mut self, lease: &SnapshotLease) -> io::Result<()> {
        let b = &mut self.block;
        b.push(if lease.owner.is_some() {
            REC_OWNED_LEASE
        } else {
            REC_LEASE
        });
        for n in [
            lease.id,
            lease.ttl_ms,
            lease.remaining_ms,
            lease.epoch,
            lease.granted_revision,
        ] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        if let Some(owner) = &lease.owner {
            b.extend_from_slice(&(owner.len() as u32).to_le_bytes());
            b.extend_from_slice(owner.as_bytes());
        }
        self.record_added()
    }

    /// Add one key's lease.
    pub fn push_lease_key(&mut self, lease: u64, key: &[u8]) -> io::Result<()> {
        let b = &mut self.block;
        b.push(REC_LEASE_KEY);
        b.extend_from_slice(&lease.to_le_bytes());
        b.extend_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(key);
        self.record_added()
    }

    /// Add the auth state (see [`SnapshotRecord::Auth`]).
    pub fn push_auth(&mut self, encoded: &[u8]) -> io::Result<()> {
        let b = &mut self.block;
        b.push(REC_AUTH);
        b.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        b.extend_from_slice(encoded);
        self.record_added()
    }

    fn record_added(&mut self) -> io::Result<()> {
        self.count += 1;
        if self.block.len() >= BLOCK_TARGET {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let block = std::mem::take(&mut self.block);
        let mut head = [0u8; 5];
        head[0] = BLOCK;
        head[1..].copy_from_slice(&(block.len() as u32).to_le_bytes());
        self.write(&head)?;
        self.write(&block)?;
        self.write(&crc32fast::hash(&block).to_le_bytes())?;
        self.block = block;
        self.block.clear();
        Ok(())
    }

    /// Write the trailer. Returns the writer, the record count and the SHA-256 of the file before
    /// its trailer.
    pub fn finish(mut self) -> io::Result<(W, u64, [u8; 32])> {
        self.flush_block()?;
        let sha: [u8; 32] = self.hasher.finalize_reset().into();
        let mut end = Vec::with_capacity(45);
        end.push(END);
        end.extend_from_slice(&self.count.to_le_bytes());
        end.extend_from_slice(&sha);
        let crc = crc32fast::hash(&end[1..]);
        end.extend_from_slice(&crc.to_le_bytes());
        self.out.write_all(&end)?;
        self.out.flush()?;
        Ok((self.out, self.count, sha))
    }
}

/// Reads and verifies a snapshot file as a stream of records.
pub struct SnapshotReader<R: Read> {
    input: R,
    hasher: Sha256,
    block: Vec<u8>,
    pos: usize,
    count: u64,
    /// Set once the trailer was read and verified.
    trailer: Option<[u8; 32]>,
}

impl<R: Read> SnapshotReader<R> {
    /// Read and check the header.
    pub fn open(input: R) -> Result<(Self, SnapshotHeader), SnapshotError> {
        let mut r = SnapshotReader {
            input,
            hasher: Sha256::new(),
            block: Vec::new(),
            pos: 0,
            count: 0,
            trailer: None,
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(|e| match e {
            SnapshotError::Truncated => SnapshotError::NotASnapshot,
            e => e,
        })?;
        if &magic != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let mut fmt_len = [0u8; 5];
        r.read_exact(&mut fmt_len)?;
        if fmt_len[0] != SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnsupportedFormat(fmt_len[0]));
        }
        let len = u32::from_le_bytes(fmt_len[1..].try_into().expect("4 bytes")) as usize;
        if len > MAX_HEADER {
            return Err(corrupt(format!("header length {len} is implausible")));
        }
        let mut body = Vec::new();
        r.read_claimed(&mut body, len)?;
        let mut crc = [0u8; 4];
        r.read_exact(&mut crc)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&fmt_len);
        hasher.update(&body);
        if hasher.finalize() != u32::from_le_bytes(crc) {
            return Err(corrupt("header checksum mismatch"));
        }
        let header: SnapshotHeader =
            postcard::from_bytes(&body).map_err(|e| corrupt(format!("header does not decode: {e}")))?;
        Ok((r, header))
    }

    /// Read exactly `buf.len()` bytes into the running hash; EOF is "truncated".
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        read_exact_raw(&mut self.input, buf)?;
        self.hasher.update(&*buf);
        Ok(())
    }

    /// Read the `len` bytes a length field announced into `buf` (cleared first), into the running
    /// hash; EOF before them is "truncated". `buf` grows as the bytes arrive, not by what the
    /// field claims: a forged length (64 MiB in a file of 30 bytes) costs no more memory than
    /// the file holds. (keel-fuzz found the reader allocating the claim up front.)
    fn read_claimed(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<(), SnapshotError> {
        buf.clear();
        (&mut self.input).take(len as u64).read_to_end(buf)?;
        if buf.len() < len {
            return Err(SnapshotError::Truncated);
        }
        self.hasher.update(&buf[..]);
        Ok(())
    }

    /// The next record, or `None` after the verified trailer.
    pub fn next_record(&mut self) -> Result<Option<SnapshotRecord>, SnapshotError> {
        if self.pos >= self.block.len() && (self.trailer.is_some() || !self.next_block()?) {
            return Ok(None);
        }
        let record = self.decode_record()?;
        self.count += 1;
        Ok(Some(record))
    }

    /// The next key-value pair, skipping session records; `None` after the verified trailer.
    pub fn next_kv(&mut self) -> Result<Option<KeyValue>, SnapshotError> {
        while let Some(record) = self.next_record()? {
            if let SnapshotRecord::Kv(kv) = record {
                return Ok(Some(kv));
            }
        }
        Ok(None)
    }

    /// Load the next block; false at the (verified) trailer.
    fn next_block(&mut self) -> Result<bool, SnapshotError> {
        let mut tag = [0u8; 1];
        read_exact_raw(&mut self.input, &mut tag)?;
        match tag[0] {
            BLOCK => {
                self.hasher.update(tag);
                let mut len = [0u8; 4];
                self.read_exact(&mut len)?;
                let len = u32::from_le_bytes(len) as usize;
                if len == 0 || len > MAX_BLOCK {
                    return Err(corrupt(format!("block length {len} is implausible")));
                }
                let mut block = std::mem::take(&mut self.block);
                self.read_claimed(&mut block, len)?;
                let mut crc = [0u8; 4];
                self.read_exact(&mut crc)?;
                if crc32fast::hash(&block) != u32::from_le_bytes(crc) {
                    return Err(corrupt("block checksum mismatch"));
                }
                self.block = block;
                self.pos = 0;
                Ok(true)
            }
            END => {
                let sha: [u8; 32] = self.hasher.finalize_reset().into();
                let mut rest = [0u8; 44];
                read_exact_raw(&mut self.input, &mut rest)?;
                if crc32fast::hash(&rest[..40]) != u32::from_le_bytes(rest[40..].try_into().expect("4 bytes")) {
                    return Err(corrupt("trailer checksum mismatch"));
                }
                let count = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
                if rest[8..40] != sha {
                    return Err(corrupt("SHA-256 mismatch"));
                }
                if count != self.count {
                    return Err(corrupt(format!(
                        "trailer says {count} records, file has {}",
                        self.count
                    )));
                }
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra)? != 0 {
                    return Err(corrupt("bytes after the trailer"));
                }
                self.block.clear();
                self.pos = 0;
                self.trailer = Some(sha);
                Ok(false)
            }
            other => Err(corrupt(format!("unknown block tag {other:#x}"))),
        }
    }

    fn decode_record(&mut self) -> Result<SnapshotRecord, SnapshotError> {
        let mut cur = &self.block[self.pos..];
        let record = match take(&mut cur, 1)?[0] {
            REC_KV => SnapshotRecord::Kv(decode_kv(&mut cur)?),
            REC_SESSION => SnapshotRecord::Session(decode_session(&mut cur)?),
            kind @ (REC_LEASE | REC_OWNED_LEASE) => {
                let mut n = [0u64; 5];
                for v in &mut n {
                    *v = take_u64(&mut cur)?;
                }
                let [id, ttl_ms, remaining_ms, epoch, granted_revision] = n;
                if id == 0 || ttl_ms == 0 || remaining_ms > ttl_ms {
                    return Err(corrupt("lease record has impossible values"));
                }
                let owner = if kind == REC_OWNED_LEASE {
                    let len = take_len(&mut cur)?;
                    let owner = take(&mut cur, len)?;
                    match std::str::from_utf8(owner) {
                        Ok(o) if !o.is_empty() => Some(o.to_string()),
                        _ => return Err(corrupt("lease owner is empty or not UTF-8")),
                    }
                } else {
                    None
                };
                SnapshotRecord::Lease(SnapshotLease {
                    id,
                    ttl_ms,
                    remaining_ms,
                    epoch,
                    granted_revision,
                    owner,
                })
            }
            REC_LEASE_KEY => {
                let lease = take_u64(&mut cur)?;
                let len = take_len(&mut cur)?;
                let key = take(&mut cur, len)?.to_vec();
                if lease == 0 || key.is_empty() {
                    return Err(corrupt("lease key record has impossible values"));
                }
                SnapshotRecord::LeaseKey { lease, key }
            }
            REC_AUTH => {
                let len = take_len(&mut cur)?;
                let encoded = take(&mut cur, len)?.to_vec();
                if encoded.is_empty() {
                    return Err(corrupt("auth record is empty"));
                }
                SnapshotRecord::Auth(encoded)
            }
            kind => return Err(corrupt(format!("unknown record kind {kind}"))),
        };
        self.pos = self.block.len() - cur.len();
        Ok(record)
    }

    /// Read to the end and verify the trailer. Returns the record count, the SHA-256 and the
    /// input.
    pub fn finish(mut self) -> Result<(u64, [u8; 32], R), SnapshotError> {
        while self.next_record()?.is_some() {}
        let sha = self.trailer.expect("next_record returns None only after the trailer");
        Ok((self.count, sha, self.input))
    }
}

fn take_u64(cur: &mut &[u8]) -> Result<u64, SnapshotError> {
    Ok(u64::from_le_bytes(take(cur, 8)?.try_into().expect("8 bytes")))
}

fn take_len(cur: &mut &[u8]) -> Result<usize, SnapshotError> {
    Ok(u32::from_le_bytes(take(cur, 4)?.try_into().expect("4 bytes")) as usize)
}

fn decode_kv(cur: &mut &[u8]) -> Result<KeyValue, SnapshotError> {
    let key_len = take_len(cur)?;
    let key = take(cur, key_len)?.to_vec();
    let value_len = take_len(cur)?;
    let value = take(cur, value_len)?.to_vec();
    let (create_revision, mod_revision, version) = (take_u64(cur)?, take_u64(cur)?, take_u64(cur)?);
    if key.is_empty() || version == 0 || create_revision > mod_revision {
        return Err(corrupt("record has impossible metadata"));
    }
    Ok(KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
        version,
    })
}

fn decode_session(cur: &mut &[u8]) -> Result<SnapshotSession, SnapshotError> {
    let (client_id, seq, last_index) = (take_u64(cur)?, take_u64(cur)?, take_u64(cur)?);
    let len = take_len(cur)?;
    let response = take(cur, len)?.to_vec();
    if seq == 0 {
        return Err(corrupt("session record has sequence number 0"));
    }
    Ok(SnapshotSession {
        client_id,
        seq,
        last_index,
        response,
    })
}

fn take<'a>(cur: &mut &'a [u8], n: usize) -> Result<&'a [u8], SnapshotError> {
    if cur.len() < n {
        return Err(corrupt("record crosses its block"));
    }
    let (head, tail) = cur.split_at(n);
    *cur = tail;
    Ok(head)
}

fn read_exact_raw<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
        _ => SnapshotError::Io(e),
    })
}

/// A reader that copies everything it reads into a writer: install keeps a local copy of a
/// received snapshot while loading it, and restore stages a copy while verifying it, in one pass.
pub struct Tee<R, W> {
    pub input: R,
    pub copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            raft: RaftPosition::default(),
            revision: 7,
            created_unix_ms: 1,
            cluster_id: "c".into(),
        }
    }

    fn kv(i: u64) -> KeyValue {
        KeyValue {
            key: format!("key-{i}").into_bytes(),
            value: vec![i as u8; (i % 300) as usize],
            create_revision: i + 1,
            mod_revision: i + 2,
            version: 1,
        }
    }

    fn file(n: u64) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), &header()).unwrap();
        for i in 0..n {
            w.push(&kv(i)).unwrap();
        }
        w.finish().unwrap().0
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<KeyValue>, SnapshotError> {
        let (mut r, h) = SnapshotReader::open(bytes)?;
        assert_eq!(h, header());
        let mut out = Vec::new();
        while let Some(kv) = r.next_kv()? {
            out.push(kv);
        }
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trip() {
        for n in [0, 1, 1000] {
            let got = read_all(&file(n)).unwrap();
            assert_eq!(got, (0..n).map(kv).collect::<Vec<_>>());
        }
    }

    fn session(i: u64) -> SnapshotSession {
        // Empty (nothing remembered), short, and larger than a block.
        let response = match i % 3 {
            0 => Vec::new(),
            1 => vec![1, i as u8, 2],
            _ => vec![i as u8; 70_000],
        };
        SnapshotSession {
            client_id: i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            seq: i + 1,
            last_index: 1000 + i,
            response,
        }
    }

    fn file_with_sessions(n: u64, sessions: u64) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), &header()).unwrap();
        for i in 0..n {
            w.push(&kv(i)).unwrap();
        }
        for i in 0..sessions {
            w.push_session(&session(i)).unwrap();
        }
        w.finish().unwrap().0
    }

    #[test]
    fn sessions_round_trip_after_the_pairs() {
        let bytes = file_with_sessions(500, 7);
        let (mut r, _) = SnapshotReader::open(&bytes[..]).unwrap();
        let mut records = Vec::new();
        while let Some(record) = r.next_record().unwrap() {
            records.push(record);
        }
        let (count, _, _) = r.finish().unwrap();
        assert_eq!(count, 507);
        let want: Vec<SnapshotRecord> = (0..500)
            .map(|i| SnapshotRecord::Kv(kv(i)))
            .chain((0..7).map(|i| SnapshotRecord::Session(session(i))))
            .collect();
        assert_eq!(records, want);
        // next_kv skips the sessions.
        assert_eq!(read_all(&bytes).unwrap(), (0..500).map(kv).collect::<Vec<_>>());
        // A file without sessions is the same as before sessions existed.
        assert_eq!(file_with_sessions(500, 0), file(500));
    }

    #[test]
    fn leases_round_trip_after_the_sessions() {
        let lease = |id: u64| SnapshotLease {
            id,
            ttl_ms: 1000 * id,
            remaining_ms: 500 * id,
            epoch: id,
            granted_revision: 3,
            owner: id.is_multiple_of(2).then(|| format!("user-{id}")),
        };
        let mut w = SnapshotWriter::new(Vec::new(), &header()).unwrap();
        w.push(&kv(1)).unwrap();
        w.push_session(&session(1)).unwrap();
        w.push_lease(&lease(1)).unwrap();
        w.push_lease(&lease(2)).unwrap();
        w.push_lease_key(2, b"key-1").unwrap();
        let bytes = w.finish().unwrap().0;
        let (mut r, _) = SnapshotReader::open(&bytes[..]).unwrap();
        let mut records = Vec::new();
        while let Some(record) = r.next_record().unwrap() {
            records.push(record);
        }
        let want = vec![
            SnapshotRecord::Kv(kv(1)),
            SnapshotRecord::Session(session(1)),
            SnapshotRecord::Lease(lease(1)),
            SnapshotRecord::Lease(lease(2)),
            SnapshotRecord::LeaseKey {
                lease: 2,
                key: b"key-1".to_vec(),
            },
        ];
        assert_eq!(records, want);
        // Well-framed records with impossible values are refused.
        for bad in [
            SnapshotLease { id: 0, ..lease(1) },
            SnapshotLease { ttl_ms: 0, ..lease(1) },
            SnapshotLease {
                remaining_ms: 5000,
                ..lease(1)
            },
            SnapshotLease {
                owner: Some(String::new()),
                ..lease(1)
            },
        ] {
            let mut w = SnapshotWriter::new(Vec::new(), &header()).unwrap();
            w.push_lease(&bad).unwrap();
            let bytes = w.finish().unwrap().0;
            let (mut r, _) = SnapshotReader::open(&bytes[..]).unwrap();
            assert!(matches!(r.next_record(), Err(SnapshotError::Corrupt(_))), "{bad:?}");
        }
    }

    #[test]
    fn damaged_session_records_are_refused() {
        let bytes = file_with_sessions(20, 5);
        for i in (0..bytes.len()).step_by(997) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(read_all(&bad).is_err(), "flipped byte {i} was accepted");
        }
        // A well-framed record with sequence number 0 is refused too.
        let mut w = SnapshotWriter::new(Vec::new(), &header()).unwrap();
        w.push_session(&SnapshotSession { seq: 0, ..session(0) }).unwrap();
        let zero = w.finish().unwrap().0;
        assert!(matches!(read_all(&zero), Err(SnapshotError::Corrupt(_))));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = file(600);
        for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            let err = read_all(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, SnapshotError::Truncated | SnapshotError::NotASnapshot),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = file(300);
        for i in (0..bytes.len()).step_by(53) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(read_all(&bad).is_err(), "flipped byte {i} was accepted");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(read_all(&extra), Err(SnapshotError::Corrupt(_))));
    }

    #[test]
    fn lengths_that_claim_more_than_the_file_holds_are_truncations() {
        let bytes = file(3);
        let header_len = 13 + u32::from_le_bytes(bytes[9..13].try_into().unwrap()) as usize + 4;
        // Claims up to the limits (16 MiB for a header, 64 MiB for a block); larger ones are
        // refused as implausible.
        let mut header = bytes[..9].to_vec();
        header.extend_from_slice(&(MAX_HEADER as u32).to_le_bytes());
        header.extend_from_slice(&[0; 16]);
        assert!(matches!(read_all(&header), Err(SnapshotError::Truncated)));
        for claim in [15u32 << 20, MAX_BLOCK as u32] {
            let mut block = bytes[..header_len].to_vec();
            block.push(BLOCK);
            block.extend_from_slice(&claim.to_le_bytes());
            block.extend_from_slice(&[0; 16]);
            assert!(matches!(read_all(&block), Err(SnapshotError::Truncated)));
        }
    }

    #[test]
    fn garbage_and_foreign_files_are_named() {
        assert!(matches!(
            read_all(b"hello world, not a snapshot"),
            Err(SnapshotError::NotASnapshot)
        ));
        assert!(matches!(read_all(b""), Err(SnapshotError::NotASnapshot)));
        let mut future = file(1);
        future[8] = 9;
        assert!(matches!(read_all(&future), Err(SnapshotError::UnsupportedFormat(9))));
    }
}
