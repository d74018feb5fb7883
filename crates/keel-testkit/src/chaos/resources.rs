//! Memory and open files of each member's process over a run: a soak must show that they do not
//! grow without bound. Read from `/proc` (Linux, process backend); other backends have no pids
//! and report nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use keel_storage::NodeId;

use super::Target;

/// One reading of one member's process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub pid: u32,
    pub rss_kib: u64,
    pub fds: u64,
}

/// Every reading of a run, by member.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub samples: BTreeMap<NodeId, Vec<Sample>>,
}

/// Resident memory (KiB) and open file descriptors of process `pid`.
fn read(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss_kib, fds))
}

impl Resources {
    /// Read every running member's process now (`at` into the run).
    pub fn sample<T: Target>(&mut self, target: &T, at: Duration) {
        for id in target.members() {
            let Some(pid) = target.pid(id) else { continue };
            if let Some((rss_kib, fds)) = read(pid) {
                self.samples
                    .entry(id)
                    .or_default()
                    .push(Sample { at, pid, rss_kib, fds });
            }
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl fmt::Display for Resources {
    /// Per member: the first and the last reading, the most, and the longest-lived process's own
    /// first and last (a restarted process starts afresh, so growth shows in a long-lived one).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (id, samples) in &self.samples {
            let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
                continue;
            };
            let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
            let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
            let mut by_pid: BTreeMap<u32, (Sample, Sample)> = BTreeMap::new();
            for s in samples {
                by_pid.entry(s.pid).and_modify(|(_, l)| *l = *s).or_insert((*s, *s));
            }
            writeln!(
                f,
                "  node {id}: start {} {} fds, end {} {} fds, most {} {} fds; {} process(es)",
                mib(first.rss_kib),
                first.fds,
                mib(last.rss_kib),
                last.fds,
                mib(max_rss),
                max_fds,
                by_pid.len()
            )?;
            if let Some((a, b)) = by_pid.values().max_by_key(|(a, b)| b.at.saturating_sub(a.at)) {
                writeln!(
                    f,
                    "    longest-lived process {} ({:.0} s): {} {} fds -> {} {} fds",
                    a.pid,
                    b.at.saturating_sub(a.at).as_secs_f64(),
                    mib(a.rss_kib),
                    a.fds,
                    mib(b.rss_kib),
                    b.fds
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (rss, fds) = read(std::process::id()).expect("/proc of this process");
        assert!(rss > 0 && fds >= 3, "rss {rss} KiB, {fds} fds");
    }
}
