//! Byte layouts of everything keel keeps in sled.
//!
//! Every stored value starts with a format byte, so a later release can read an older layout or
//! refuse it by name instead of misreading it. sled frames each of its log records with a CRC32,
//! which is what catches torn or corrupt records inside the database file; snapshot files, which
//! sled does not see, carry their own checksums (see `sm::snapshot_file`).
//!
//! MVCC keys are `b'k' ‖ esc(user_key) ‖ !revision` (big-endian), where `esc` is an
//! order-preserving, prefix-free escaping (0x00 → 0x00 0xFF, terminated by 0x00 0x00). So all
//! versions of one key are adjacent, newest first, and key order is user-key order.
//!
//! Client sessions (see `sm::sessions`) use fixed-width big-endian keys: `b's' ‖ client_id` holds a
//! session record ([`StoredSession`]), `b'x' ‖ last_index ‖ client_id` (empty value) orders the
//! sessions by last use for expiry, and `b'p' ‖ client_id ‖ last_index` keeps superseded records
//! that a running snapshot build still needs (`superseded_at` BE ‖ the [`StoredSession`] bytes).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::types::{KeyValue, Response};

/// Format byte of the values written by this release.
pub const FORMAT_V1: u8 = 1;

/// Prefix of MVCC version records.
pub const VERSION_PREFIX: u8 = b'k';
/// Prefix of history records (`b'h' ‖ revision`).
pub const HISTORY_PREFIX: u8 = b'h';

/// Prefix of client session records (`b's' ‖ client_id`).
pub const SESSION_PREFIX: u8 = b's';
/// Prefix of the session expiry index (`b'x' ‖ last_index ‖ client_id`, empty values).
pub const SESSION_EXPIRY_PREFIX: u8 = b'x';
/// Prefix of superseded session records kept for snapshot builds
/// (`b'p' ‖ client_id ‖ last_index`).
pub const SESSION_PRESERVED_PREFIX: u8 = b'p';

/// Prefix of lease records (`b'l' ‖ lease id` → [`StoredLease`]).
pub const LEASE_PREFIX: u8 = b'l';
/// Prefix of the keys attached to a lease (`b'a' ‖ lease id ‖ key`, empty values).
pub const LEASE_KEY_PREFIX: u8 = b'a';
/// Prefix of the lease a key is attached to (`b'b' ‖ key` → lease id, 8 bytes big-endian).
pub const KEY_LEASE_PREFIX: u8 = b'b';
/// Prefix of lease owners (`b'o' ‖ lease id` → the user who granted it, UTF-8), written only
/// for leases granted by an authenticated user.
pub const LEASE_OWNER_PREFIX: u8 = b'o';

/// Errors decoding stored bytes. Any of these means the data on disk is not what keel wrote.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("stored record is empty")]
    Empty,
    #[error("stored record has format {0}, this release reads format {FORMAT_V1}")]
    UnknownFormat(u8),
    #[error("stored record is malformed: {0}")]
    Malformed(String),
}

/// Encode a serde value with a leading format byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_as(FORMAT_V1, value)
}

/// Encode a serde value behind the format byte `format` (a record kind that must be told apart
/// from [`FORMAT_V1`] records, such as [`HISTORY_MULTI`]).
pub fn encode_as<T: Serialize>(format: u8, value: &T) -> Vec<u8> {
    // Writing into a Vec cannot fail, and our types have no serializer that errors.
    postcard::to_extend(value, vec![format]).expect("postcard encoding into a Vec does not fail")
}

/// The length of `encode(value)`, computed without building it.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    1 + postcard::experimental::serialized_size(value).expect("postcard sizing does not fail")
}

/// Decode a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_as(FORMAT_V1, bytes)
}

/// Decode a value written by [`encode_as`] with `expected` as its format byte.
pub fn decode_as<T: DeserializeOwned>(expected: u8, bytes: &[u8]) -> Result<T, DecodeError> {
    let (&format, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if format != expected {
        return Err(DecodeError::UnknownFormat(format));
    }
    postcard::from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Append the escaped form of `key` (with terminator) to `out`.
pub fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    escape_body_into(key, out);
    out.extend_from_slice(&[0x00, 0x00]);
}

/// Append the escaped form of `key` without the terminator: every escaped key that starts with
/// `key` starts with these bytes.
pub fn escape_body_into(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// Inverse of [`escape_into`]; `escaped` includes the terminator.
pub fn unescape(escaped: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        let b = escaped[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match escaped.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(0x00) if i + 2 == escaped.len() => return Ok(out),
            _ => return Err(DecodeError::Malformed("bad key escaping".into())),
        }
    }
    Err(DecodeError::Malformed("unterminated key".into()))
}

/// The MVCC group prefix of `key`: `b'k' ‖ esc(key)`.
pub fn version_group(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 11);
    out.push(VERSION_PREFIX);
    escape_into(key, &mut out);
    out
}

/// The MVCC key of `key` at `revision`.
pub fn version_key(key: &[u8], revision: u64) -> Vec<u8> {
    let mut out = version_group(key);
    out.extend_from_slice(&(!revision).to_be_bytes());
    out
}

/// Split an MVCC key into its group (`b'k' ‖ esc(key)`) and revision.
pub fn split_version_key(k: &[u8]) -> Result<(&[u8], u64), DecodeError> {
    if k.len() < 1 + 2 + 8 || k[0] != VERSION_PREFIX {
        return Err(DecodeError::Malformed("bad version key".into()));
    }
    let (group, rev) = k.split_at(k.len() - 8);
    let rev = !u64::from_be_bytes(rev.try_into().expect("8 bytes"));
    Ok((group, rev))
}

/// The user key of an MVCC group.
pub fn group_user_key(group: &[u8]) -> Result<Vec<u8>, DecodeError> {
    match group {
        [VERSION_PREFIX, escaped @ ..] => unescape(escaped),
        _ => Err(DecodeError::Malformed("bad version group".into())),
    }
}

/// The first byte of a history record that lists several revisions (see `sm::apply`); records
/// of one revision written by earlier builds start with [`FORMAT_V1`].
pub const HISTORY_MULTI: u8 = 0x81;

/// The key of the history record ending at `revision` (a record lists the changes of one entry:
/// one revision, or several for a batch entry; it is keyed by the last).
pub fn history_key(revision: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = HISTORY_PREFIX;
    out[1..].copy_from_slice(&revision.to_be_bytes());
    out
}

/// The revision a history record is keyed by.
pub fn split_history_key(k: &[u8]) -> Result<u64, DecodeError> {
    match k {
        [HISTORY_PREFIX, rest @ ..] if rest.len() == 8 => Ok(u64::from_be_bytes(rest.try_into().expect("8 bytes"))),
        _ => Err(DecodeError::Malformed("bad history key".into())),
    }
}

fn prefixed_u64s<const N: usize>(prefix: u8, parts: &[u64]) -> [u8; N] {
    let mut out = [0u8; N];
    out[0] = prefix;
    for (i, part) in parts.iter().enumerate() {
        out[1 + 8 * i..9 + 8 * i].copy_from_slice(&part.to_be_bytes());
    }
    out
}

fn split_u64s<const N: usize>(prefix: u8, k: &[u8]) -> Result<[u64; N], DecodeError> {
    if k.len() != 1 + 8 * N || k[0] != prefix {
        return Err(DecodeError::Malformed(format!("bad session key {k:?}")));
    }
    let mut out = [0u64; N];
    for (i, part) in out.iter_mut().enumerate() {
        *part = u64::from_be_bytes(k[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
    }
    Ok(out)
}

/// The key of `client_id`'s session record.
pub fn session_key(client_id: u64) -> [u8; 9] {
    prefixed_u64s(SESSION_PREFIX, &[client_id])
}

/// The client id of a session record key.
pub fn split_session_key(k: &[u8]) -> Result<u64, DecodeError> {
    let [client_id] = split_u64s(SESSION_PREFIX, k)?;
    Ok(client_id)
}

/// The expiry index key of a session last used at `last_index`.
pub fn session_expiry_key(last_index: u64, client_id: u64) -> [u8; 17] {
    prefixed_u64s(SESSION_EXPIRY_PREFIX, &[last_index, client_id])
}

/// `(last_index, client_id)` of an expiry index key.
pub fn split_session_expiry_key(k: &[u8]) -> Result<(u64, u64), DecodeError> {
    let [last_index, client_id] = split_u64s(SESSION_EXPIRY_PREFIX, k)?;
    Ok((last_index, client_id))
}

/// The key of a superseded session record kept for snapshot builds.
pub fn preserved_session_key(client_id: u64, last_index: u64) -> [u8; 17] {
    prefixed_u64s(SESSION_PRESERVED_PREFIX, &[client_id, last_index])
}

/// `(client_id, last_index)` of a preserved session key.
pub fn split_preserved_session_key(k: &[u8]) -> Result<(u64, u64), DecodeError> {
    let [client_id, last_index] = split_u64s(SESSION_PRESERVED_PREFIX, k)?;
    Ok((client_id, last_index))
}

/// The key of lease `id`'s owner.
pub fn lease_owner_key(id: u64) -> [u8; 9] {
    prefixed_u64s(LEASE_OWNER_PREFIX, &[id])
}

/// The lease id of a lease owner key.
pub fn split_lease_owner_key(k: &[u8]) -> Result<u64, DecodeError> {
    let [id] = split_u64s(LEASE_OWNER_PREFIX, k)?;
    Ok(id)
}

/// The key of lease `id`'s record.
pub fn lease_key(id: u64) -> [u8; 9] {
    prefixed_u64s(LEASE_PREFIX, &[id])
}

/// The lease id of a lease record key.
pub fn split_lease_key(k: &[u8]) -> Result<u64, DecodeError> {
    let [id] = split_u64s(LEASE_PREFIX, k)?;
    Ok(id)
}

/// The key recording that `key` is attached to lease `id`; a scan of `lease_key_prefix(id)` lists
/// the lease's keys.
pub fn lease_key_entry(id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = lease_key_prefix(id).to_vec();
    k.extend_from_slice(key);
    k
}

/// The prefix of lease `id`'s key entries.
pub fn lease_key_prefix(id: u64) -> [u8; 9] {
    prefixed_u64s(LEASE_KEY_PREFIX, &[id])
}

/// The key under which `key`'s lease is recorded.
pub fn key_lease_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(KEY_LEASE_PREFIX);
    k.extend_from_slice(key);
    k
}

/// A lease as the state machine keeps it. Its deadline is not here: time is not part of the
/// replicated state. Each member derives a deadline from `remaining_ms` when it applies the
/// entry that set it (see `sm::leases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLease {
    pub ttl_ms: u64,
    /// The time left as of the last grant, renewal or checkpoint.
    pub remaining_ms: u64,
    /// Counts renewals and checkpoints; an expiry names the epoch it was decided at.
    pub epoch: u64,
    /// The revision of the grant.
    pub granted_revision: u64,
}

/// A client session record: the newest sequence number executed for the client, the log index
/// that last used the session, and the remembered response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub seq: u64,
    pub last_index: u64,
    /// [`encode`]d [`Response`]; empty if the response was too large to remember.
    pub response: Vec<u8>,
}

impl StoredSession {
    const HEAD: usize = 17;

    /// `[format][seq BE][last_index BE][response…]`: fixed fields first, so deciding on a request
    /// does not decode the remembered response.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEAD + self.response.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.last_index.to_be_bytes());
        out.extend_from_slice(&self.response);
        out
    }

    /// `(seq, last_index)` of an encoded record.
    pub fn decode_head(bytes: &[u8]) -> Result<(u64, u64), DecodeError> {
        match bytes {
            [] => Err(DecodeError::Empty),
            [FORMAT_V1, rest @ ..] if rest.len() >= 16 => Ok((
                u64::from_be_bytes(rest[0..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(rest[8..16].try_into().expect("8 bytes")),
            )),
            [FORMAT_V1, ..] => Err(DecodeError::Malformed("bad session record".into())),
            [format, ..] => Err(DecodeError::UnknownFormat(*format)),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (seq, last_index) = Self::decode_head(bytes)?;
        Ok(StoredSession {
            seq,
            last_index,
            response: bytes[Self::HEAD..].to_vec(),
        })
    }

    /// The remembered response, if it was kept.
    pub fn response(&self) -> Result<Option<Response>, DecodeError> {
        if self.response.is_empty() {
            return Ok(None);
        }
        decode(&self.response).map(Some)
    }
}

/// One stored version of a key: either a value with its metadata, or a tombstone that records
/// the deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredVersion {
    Live {
        create_revision: u64,
        version: u64,
        value: Vec<u8>,
    },
    Tombstone,
}

const LIVE: u8 = 0;
const TOMBSTONE: u8 = 1;

impl StoredVersion {
    /// `[format][kind][create_revision BE][version BE][value…]`: fixed fields, so a read does not
    /// allocate beyond the value itself.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StoredVersion::Live {
                create_revision,
                version,
                value,
            } => {
                let mut out = Vec::with_capacity(18 + value.len());
                out.push(FORMAT_V1);
                out.push(LIVE);
                out.extend_from_slice(&create_revision.to_be_bytes());
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(value);
                out
            }
            StoredVersion::Tombstone => vec![FORMAT_V1, TOMBSTONE],
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes {
            [] => Err(DecodeError::Empty),
            [FORMAT_V1, TOMBSTONE] => Ok(StoredVersion::Tombstone),
            [FORMAT_V1, LIVE, rest @ ..] if rest.len() >= 16 => Ok(StoredVersion::Live {
                create_revision: u64::from_be_bytes(rest[0..8].try_into().expect("8 bytes")),
                version: u64::from_be_bytes(rest[8..16].try_into().expect("8 bytes")),
                value: rest[16..].to_vec(),
            }),
            [FORMAT_V1, ..] => Err(DecodeError::Malformed("bad version record".into())),
            [format, ..] => Err(DecodeError::UnknownFormat(*format)),
        }
    }

    /// The key-value pair this version represents, if it is live.
    pub fn into_kv(self, key: Vec<u8>, mod_revision: u64) -> Option<KeyValue> {
        match self {
            StoredVersion::Live {
                create_revision,
                version,
                value,
            } => Some(KeyValue {
                key,
                value,
                create_revision,
                mod_revision,
                version,
            }),
            StoredVersion::Tombstone => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        use crate::types::{Command, PutOp, Request};
        let put = |k: &str| {
            Request::new(Command::Put(PutOp {
                key: k.as_bytes().to_vec(),
                value: vec![7; 300],
                prev_kv: true,
            }))
        };
        let batch = Request::new(Command::Batch(vec![put("a"), put("bb"), put("")]));
        for value in [put("k"), batch] {
            assert_eq!(encoded_len(&value), encode(&value).len());
        }
    }

    #[test]
    fn escaping_preserves_order_and_round_trips() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"\x01",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"a\x01",
            b"ab",
            b"b",
            b"\xff",
            b"\xff\xff",
        ];
        let mut escaped: Vec<Vec<u8>> = keys.iter().map(|k| version_key(k, 7)).collect();
        let sorted = escaped.clone();
        escaped.sort();
        assert_eq!(escaped, sorted, "escaped keys sort like user keys");
        for k in &keys {
            let vk = version_key(k, 42);
            let (group, rev) = split_version_key(&vk).unwrap();
            assert_eq!(rev, 42);
            assert_eq!(group_user_key(group).unwrap(), k.to_vec());
        }
    }

    #[test]
    fn newer_versions_sort_first() {
        assert!(version_key(b"a", 10) < version_key(b"a", 9));
        assert!(version_key(b"a", 1) < version_key(b"a\x00", 1000));
    }

    #[test]
    fn versions_round_trip_and_reject_garbage() {
        let live = StoredVersion::Live {
            create_revision: 3,
            version: 2,
            value: b"v".to_vec(),
        };
        assert_eq!(StoredVersion::decode(&live.encode()).unwrap(), live);
        assert_eq!(
            StoredVersion::decode(&StoredVersion::Tombstone.encode()).unwrap(),
            StoredVersion::Tombstone
        );
        assert!(matches!(
            StoredVersion::decode(&[9, 0]),
            Err(DecodeError::UnknownFormat(9))
        ));
        assert!(StoredVersion::decode(&[FORMAT_V1, LIVE, 1]).is_err());
        assert!(decode::<u64>(&[2, 1]).is_err());
        assert!(unescape(b"a\x00").is_err());
        // Found by keel-fuzz (stored_records): an empty group panicked slicing past its prefix.
        assert!(group_user_key(b"").is_err());
        assert!(group_user_key(b"x\x00\x00").is_err());
    }

    #[test]
    fn session_keys_and_records_round_trip() {
        assert_eq!(split_session_key(&session_key(7)).unwrap(), 7);
        assert_eq!(split_session_expiry_key(&session_expiry_key(3, 9)).unwrap(), (3, 9));
        assert_eq!(
            split_preserved_session_key(&preserved_session_key(9, 3)).unwrap(),
            (9, 3)
        );
        // The expiry index sorts by last use first.
        assert!(session_expiry_key(1, u64::MAX) < session_expiry_key(2, 0));
        assert!(split_session_key(&session_expiry_key(1, 2)).is_err());
        assert!(split_session_key(&session_key(1)[..5]).is_err());

        let response = Response {
            revision: 5,
            result: crate::types::CommandResult::None,
        };
        let rec = StoredSession {
            seq: 2,
            last_index: 40,
            response: encode(&response),
        };
        let bytes = rec.encode();
        assert_eq!(StoredSession::decode_head(&bytes).unwrap(), (2, 40));
        assert_eq!(StoredSession::decode(&bytes).unwrap(), rec);
        assert_eq!(rec.response().unwrap(), Some(response));
        let forgotten = StoredSession {
            response: Vec::new(),
            ..rec
        };
        assert_eq!(
            StoredSession::decode(&forgotten.encode()).unwrap().response().unwrap(),
            None
        );
        assert!(StoredSession::decode(&[FORMAT_V1, 1, 2]).is_err());
        assert!(matches!(
            StoredSession::decode_head(&[3; 20]),
            Err(DecodeError::UnknownFormat(3))
        ));
    }
}
