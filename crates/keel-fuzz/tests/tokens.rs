//! Decoders of small opaque inputs, one line each with [`keel_fuzz::bytes_target!`]: arbitrary
//! bytes (up to 4 KiB, shaped to reach past format bytes and length prefixes), no panic, no
//! allocation beyond the budget for the input.
//!
//! AUTH TOKENS GO HERE. Today's tokens are opaque (the gate looks up their SHA-256, see
//! keel-server's `auth::gate`), which `auth_token` below covers; a token format with a decoder
//! (a JWT, say) gets its target as one more line,
//!
//! ```ignore
//! keel_fuzz::bytes_target!(jwt, |bytes: &[u8]| keel_server::auth::jwt::decode(bytes));
//! ```
//!
//! and scripts/fuzz.sh finds it by itself (it runs every test of this crate). Password hashes
//! (PHC strings, read back from the replicated auth state, a snapshot or a backup) have a target
//! of their own below: verifying one runs what its parameters ask for.

use keel_fuzz::{alloc, check, gen, Cost};
use keel_server::auth::secret;
use keel_storage::codec;
use proptest::prelude::*;

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

// The gate's path for etcd's `token` metadata (or `authorization: Bearer ...`): the token's hash,
// looked up in the token table.
keel_fuzz::bytes_target!(auth_token, |bytes: &[u8]| {
    let token = String::from_utf8_lossy(bytes);
    let hash = secret::token_hash(token.strip_prefix("Bearer ").unwrap_or(&token));
    keel_storage::auth::Tokens::default()
        .user_of(&hash, secret::now_ms())
        .map(str::to_owned)
});

/// A stored password hash names its own cost (`m` KiB of memory, `t` passes, `p` lanes), and
/// verifying it spends that: a forged or damaged one (in a forwarded write, a snapshot, a backup)
/// must not make `Authenticate` allocate gigabytes or run for minutes. Verification may spend
/// what keel's own hashes cost (argon2's default: 19 MiB, 2 passes), with room, and no more.
#[test]
fn password_hashes() {
    const SALT_AND_HASH: &str = "c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let phc = prop_oneof![
        gen::bytes(128).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        (
            prop_oneof![Just("argon2id"), Just("argon2i"), Just("argon2d"), Just("scrypt")],
            prop_oneof![
                Just(8u64),
                Just(19456),
                1u64..100_000,
                Just(1 << 18),
                Just(u32::MAX as u64)
            ],
            prop_oneof![Just(1u64), Just(2), 1u64..20, Just(1 << 20), Just(u32::MAX as u64)],
            prop_oneof![Just(1u64), 1u64..8, Just(255)],
        )
            .prop_map(|(alg, m, t, p)| format!("${alg}$v=19$m={m},t={t},p={p}${SALT_AND_HASH}")),
    ];
    check("password_hashes", Cost::Expensive, phc, |phc| {
        let started = std::time::Instant::now();
        let (result, peak) =
            alloc::peak(|| keel_fuzz::no_panic("verify_password", || secret::verify_password(&phc, "x")));
        result?;
        prop_assert!(peak <= 64 << 20, "verifying {phc:?} allocated {peak} bytes");
        prop_assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "verifying {phc:?} took {:?}",
            started.elapsed()
        );
        Ok(())
    });
}
