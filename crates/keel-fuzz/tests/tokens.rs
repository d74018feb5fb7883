//! Decoders of small opaque inputs, one line each with [`keel_fuzz::bytes_target!`]: arbitrary
//! bytes (up to 4 KiB, shaped to reach past format bytes and length prefixes), no panic, no
//! allocation beyond the budget for the input.
//!
//! AUTH TOKENS GO HERE. keel has no auth-token decoder yet (issue 17, item 2). When one lands,
//! give it its target with one line, e.g.
//!
//! ```ignore
//! keel_fuzz::bytes_target!(auth_token, |bytes: &[u8]| keel_server::auth::decode_token(bytes));
//! ```
//!
//! and, if the token is text (a JWT), feed it `std::str::from_utf8(bytes)` too. scripts/fuzz.sh
//! finds the new target by itself (it runs every test of this crate).

use keel_storage::codec;

// The one-line form, on decoders that exist today: a forwarded request's envelope and the
// `--initial-cluster` member list (text from the command line, an env var or the config file).
keel_fuzz::bytes_target!(forward_request_bytes, |bytes: &[u8]| {
    codec::decode::<keel_server::forward::ForwardRequest>(bytes).map(drop)
});
keel_fuzz::bytes_target!(initial_cluster_text, |bytes: &[u8]| {
    keel_datadir::identity::parse_initial_cluster(&String::from_utf8_lossy(bytes)).map(drop)
});
keel_fuzz::bytes_target!(election_timeout_text, |bytes: &[u8]| {
    keel_server::config::parse_timeout_range(&String::from_utf8_lossy(bytes)).map(drop)
});
