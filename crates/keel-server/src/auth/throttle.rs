//! Slowing password guessing: `Authenticate` calls from one address that keep failing are answered
//! more and more slowly, and past a limit refused unchecked for a while, so that an attacker gets
//! a handful of guesses a minute per address rather than as many as argon2 allows.
//!
//! Per member and per source IP, in memory: after each failure the answer to that address waits
//! `BASE_DELAY` doubled per recent failure (at most `MAX_DELAY`); once `LIMIT` failures fall
//! within `WINDOW`, further attempts are refused at once with "etcdserver: too many requests"
//! until the window has passed since the last failure. A success clears the address. The table is
//! bounded: past `MAX_SOURCES` addresses the stalest entries are dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BASE_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);
const LIMIT: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
const MAX_SOURCES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// What to do with an attempt from an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check the password.
    Check,
    /// Refuse unchecked: too many failures lately.
    Refuse,
}

#[derive(Debug, Default)]
pub struct Throttle {
    sources: Mutex<HashMap<IpAddr, Failures>>,
}

impl Throttle {
    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May an attempt from `source` be checked at `now`?
    pub fn verdict(&self, source: Option<IpAddr>, now: Instant) -> Verdict {
        let Some(ip) = source else {
            return Verdict::Check;
        };
        let mut sources = self.sources();
        match sources.get(&ip) {
            Some(f) if now.duration_since(f.last) >= WINDOW => {
                sources.remove(&ip);
                Verdict::Check
            }
            Some(f) if f.count >= LIMIT => Verdict::Refuse,
            _ => Verdict::Check,
        }
    }

    /// Record a failed attempt from `source`; returns how long its answer should wait.
    pub fn failed(&self, source: Option<IpAddr>, now: Instant) -> Duration {
        let Some(ip) = source else {
            return BASE_DELAY;
        };
        let mut sources = self.sources();
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&ip) {
            let stalest = sources.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip);
            if let Some(stalest) = stalest {
                sources.remove(&stalest);
            }
        }
        let f = sources.entry(ip).or_insert(Failures { count: 0, last: now });
        if now.duration_since(f.last) >= WINDOW {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        BASE_DELAY.saturating_mul(1 << f.count.min(16)).min(MAX_DELAY)
    }

    /// A successful login from `source` clears its failures.
    pub fn succeeded(&self, source: Option<IpAddr>) {
        if let Some(ip) = source {
            self.sources().remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_then_refuse_an_address_until_the_window_passes() {
        let t = Throttle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let start = Instant::now();
        let mut delays = Vec::new();
        for i in 0..LIMIT {
            assert_eq!(t.verdict(Some(a), start), Verdict::Check, "attempt {i}");
            delays.push(t.failed(Some(a), start));
        }
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        assert_eq!(t.verdict(Some(a), start), Verdict::Refuse);
        assert_eq!(
            t.verdict(Some(b), start),
            Verdict::Check,
            "another address is not affected"
        );
        assert_eq!(t.verdict(Some(a), start + WINDOW), Verdict::Check, "the window passed");
        t.failed(Some(b), start);
        t.succeeded(Some(b));
        assert_eq!(t.failed(Some(b), start), BASE_DELAY * 2, "a success starts over");
    }
}
