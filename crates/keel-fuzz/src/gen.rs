//! Inputs shared by the targets: arbitrary bytes shaped to reach past the first checks of a
//! decoder (a plausible format byte, huge length prefixes), and mutations of valid encodings
//! (bit flips, truncations, extensions, a length field overwritten with a huge number), which
//! reach the deep paths that random bytes rarely do.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// Numbers that break length arithmetic: around the edges of u8/u16/u32/u64 and i64.
pub fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => any::<u64>(),
        2 => 0u64..=4,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => Just(i64::MAX as u64),
        1 => Just(i64::MAX as u64 + 1),
        1 => Just(u32::MAX as u64),
        1 => Just(u32::MAX as u64 + 1),
        1 => Just(1 << 60),
    ]
}

/// Like [`edge_u64`], signed: negative revisions and limits included.
pub fn edge_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => any::<i64>(),
        2 => -2i64..=4,
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => Just(i32::MAX as i64 + 1),
    ]
}

/// A postcard varint (LEB128) of `n`.
pub fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Byte strings up to `max` long: uniformly random ones, ones made of small numbers (postcard's
/// enum tags and lengths), and ones sprinkled with huge varints and little-endian lengths.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let chunk = prop_oneof![
        4 => vec(any::<u8>(), 1..8),
        4 => vec(0u8..4, 1..8),
        1 => edge_u64().prop_map(varint),
        1 => edge_u64().prop_map(|n| (n as u32).to_le_bytes().to_vec()),
        1 => edge_u64().prop_map(|n| n.to_le_bytes().to_vec()),
        1 => edge_u64().prop_map(|n| n.to_be_bytes().to_vec()),
    ];
    prop_oneof![
        2 => vec(any::<u8>(), 0..max),
        3 => vec(chunk, 0..(max / 8).max(1)).prop_map(move |parts| {
            let mut out: Vec<u8> = parts.concat();
            out.truncate(max);
            out
        }),
    ]
}

/// One change to an encoding.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Flip one bit.
    Flip(Index, u8),
    /// Set one byte.
    Set(Index, u8),
    /// Cut the input here.
    Truncate(Index),
    /// Insert bytes here.
    Insert(Index, Vec<u8>),
    /// Drop up to 16 bytes here.
    Remove(Index, usize),
    /// Overwrite 4 bytes (a little-endian u32 length) with a number.
    Len32(Index, u64),
    /// Overwrite bytes with a varint.
    Varint(Index, u64),
    /// Append bytes.
    Append(Vec<u8>),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Edit::Remove(i, n)),
        2 => (any::<Index>(), edge_u64()).prop_map(|(i, n)| Edit::Len32(i, n)),
        2 => (any::<Index>(), edge_u64()).prop_map(|(i, n)| Edit::Varint(i, n)),
        1 => vec(any::<u8>(), 1..32).prop_map(Edit::Append),
    ]
}

/// `bytes` after `edits`, in order.
pub fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        let len = bytes.len();
        match e {
            Edit::Flip(i, bit) if len > 0 => bytes[at(i, len)] ^= 1 << bit,
            Edit::Set(i, b) if len > 0 => bytes[at(i, len)] = *b,
            Edit::Truncate(i) => bytes.truncate(at(i, len)),
            Edit::Insert(i, new) => {
                let p = at(i, len + 1).min(len);
                bytes.splice(p..p, new.iter().copied());
            }
            Edit::Remove(i, n) if len > 0 => {
                let p = at(i, len);
                bytes.drain(p..(p + n).min(len));
            }
            Edit::Len32(i, n) if len >= 4 => {
                let p = at(i, len - 3);
                bytes[p..p + 4].copy_from_slice(&(*n as u32).to_le_bytes());
            }
            Edit::Varint(i, n) if len > 0 => {
                let p = at(i, len);
                let v = varint(*n);
                let end = (p + v.len()).min(len);
                bytes.splice(p..end, v);
            }
            Edit::Append(new) => bytes.extend_from_slice(new),
            _ => {}
        }
    }
    bytes
}

/// Valid encodings from `valid`, each with 1 to 4 edits.
pub fn mutated<S>(valid: S) -> impl Strategy<Value = Vec<u8>>
where
    S: Strategy<Value = Vec<u8>>,
{
    (valid, vec(edit(), 1..5)).prop_map(|(bytes, edits)| apply(bytes, &edits))
}

/// Keys and values as clients send them: mostly short, sometimes empty, sometimes just over
/// keel's default key limit (4096), with zero bytes and 0xFF (the escaping's special bytes).
pub fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(prop_oneof![Just(0u8), Just(0xffu8), Just(b'a'), Just(b'b'), any::<u8>()], 0..12),
        1 => Just(Vec::new()),
        1 => (4090usize..4100).prop_map(|n| vec![b'k'; n]),
    ]
}

/// Values: mostly short; sometimes around a small configured limit.
pub fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => vec(any::<u8>(), 0..24),
        1 => (1000usize..1100).prop_map(|n| vec![b'v'; n]),
    ]
}
