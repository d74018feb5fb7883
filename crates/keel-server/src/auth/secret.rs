//! Passwords and tokens. Passwords are hashed with argon2id (a fresh random salt each, the
//! argon2 crate's default cost: 19 MiB, 2 passes) on the member that receives them; only the PHC
//! string is proposed. Tokens are 32 random bytes; only their SHA-256 is proposed.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The PHC string of `password` (slow on purpose: run it off the async runtime).
pub fn hash_password(password: &str) -> Result<String, String> {
    let bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&bytes).map_err(|e| format!("cannot make a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Does `password` match the PHC string `phc`? A malformed `phc` matches nothing, and so does
/// one whose parameters ask for more than keel can afford (see `affordable`).
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc)
        .is_ok_and(|h| affordable(&h) && Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A stored hash names the cost of verifying it (argon2's `m` KiB of memory, `t` passes, `p`
/// lanes), and verification spends it: a forged or damaged hash (from a forwarded write, a
/// snapshot or a backup) with `m=4294967295` made each `Authenticate` of its user try to
/// allocate 4 TiB (an abort), and a huge `t` ran for hours. keel-fuzz found it (tokens.rs,
/// `password_hashes`). Allowed: what keel writes (argon2's defaults, 19 MiB and 2 passes, one
/// lane) with room to raise them: 64 MiB, 8 passes, 4 lanes.
fn affordable(h: &PasswordHash) -> bool {
    argon2::Params::try_from(h).is_ok_and(|p| p.m_cost() <= 64 * 1024 && p.t_cost() <= 8 && p.p_cost() <= 4)
}

/// A new token and its hash.
pub fn new_token() -> (String, [u8; 32]) {
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "keel.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = token_hash(&token);
    (token, hash)
}

/// What the token table holds of `token`.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Wall-clock milliseconds since the Unix epoch (token expiry is wall-clock, as etcd's TTLs).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_a_fresh_salt_and_verify() {
        let a = hash_password("s3cret").unwrap();
        let b = hash_password("s3cret").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salted");
        assert!(!a.contains("s3cret"));
        assert!(verify_password(&a, "s3cret"));
        assert!(!verify_password(&a, "s3cret "));
        assert!(!verify_password("garbage", "s3cret"));
        // A hash whose parameters ask for 4 TiB or 2^32 passes is refused, not run.
        let salt_and_hash = "c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for params in ["m=4294967295,t=1,p=1", "m=19456,t=4294967295,p=1", "m=262144,t=1,p=1"] {
            let started = std::time::Instant::now();
            assert!(!verify_password(
                &format!("$argon2id$v=19${params}${salt_and_hash}"),
                "s3cret"
            ));
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{params}");
        }
        // keel's own cost verifies.
        let params = argon2::Params::default();
        assert!(params.m_cost() <= 64 * 1024 && params.t_cost() <= 8 && params.p_cost() <= 4);
    }

    #[test]
    fn tokens_are_random_and_known_by_their_hash() {
        let (t1, h1) = new_token();
        let (t2, _) = new_token();
        assert_ne!(t1, t2);
        assert_eq!(token_hash(&t1), h1);
        assert!(t1.len() > 40);
    }
}
