//! snapshot save, inspect, restore: backups and disaster recovery.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use keel_client::Client;
use keel_datadir::identity::parse_initial_cluster;
use keel_datadir::restore::{self, Verified};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::Outcome;
use crate::args::{Format, RestoreArgs};
use crate::output::json;

/// What save, inspect and restore print about a snapshot file.
#[derive(Serialize)]
struct SnapshotDoc {
    file: String,
    format_version: u8,
    cluster_id: String,
    revision: u64,
    last_log_term: u64,
    last_log_index: u64,
    members: Vec<u64>,
    created: String,
    records: u64,
    bytes: u64,
    sha256: String,
}

/// The creation time as RFC 3339, or as milliseconds since the epoch when RFC 3339 cannot show
/// it (a file from a wrong clock, or a damaged header: humantime formats years up to 9999).
fn format_created(unix_ms: u64) -> String {
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    if unix_ms >= YEAR_10000_MS {
        return format!("{unix_ms} ms after the Unix epoch");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn doc(file: &Path, v: &Verified) -> SnapshotDoc {
    let h = &v.header;
    SnapshotDoc {
        file: file.display().to_string(),
        format_version: keel_datadir::SNAPSHOT_FORMAT,
        cluster_id: h.cluster_id.clone(),
        revision: h.revision,
        last_log_term: h.raft.last_log.map_or(0, |l| l.term),
        last_log_index: h.raft.last_log.map_or(0, |l| l.index),
        members: h.raft.voters().into_iter().collect(),
        created: format_created(h.created_unix_ms),
        records: v.records,
        bytes: v.bytes,
        sha256: v.sha256.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn render(d: &SnapshotDoc, format: Format, verb: &str) -> String {
    match format {
        Format::Json => json(d),
        Format::Simple => format!("{}, {}, {}, {}\n", d.file, d.revision, d.records, d.sha256),
        Format::Table => format!(
            "{verb} {}\n  format version  {}\n  cluster id      {}\n  revision        {}\n  last log        term {}, index {}\n  \
             members         {:?}\n  created         {}\n  records         {}\n  size            {} bytes\n  sha256          {}\n",
            d.file,
            d.format_version,
            if d.cluster_id.is_empty() { "-" } else { &d.cluster_id },
            d.revision,
            d.last_log_term,
            d.last_log_index,
            d.members,
            d.created,
            d.records,
            d.bytes,
            d.sha256
        ),
    }
}

fn verify(file: &Path) -> anyhow::Result<Verified> {
    restore::verify(file).map_err(|e| anyhow!("{}: {e}", file.display()))
}

/// Fsync a directory, so a rename into it is durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })?
    .sync_all()
}

pub async fn save(client: &Client, file: &Path, format: Format) -> anyhow::Result<Outcome> {
    let part = PathBuf::from(format!("{}.part", file.display()));
    let result = save_to(client, &part).await;
    let verified = match result.and_then(|()| verify(&part)) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, file).with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
    sync_dir(file.parent().unwrap_or(Path::new(".")))?;
    Ok(Outcome::Done(render(&doc(file, &verified), format, "saved")))
}

/// Stream the leader's snapshot into `part` and sync it.
async fn save_to(client: &Client, part: &Path) -> anyhow::Result<()> {
    let mut stream = client.snapshot().await?;
    let mut out = tokio::fs::File::create(part)
        .await
        .with_context(|| format!("creating {}", part.display()))?;
    let mut bar: Option<ProgressBar> = None;
    let (mut received, mut total) = (0u64, 0u64);
    while let Some(msg) = stream.message().await.map_err(keel_client_error)? {
        if bar.is_none() {
            total = msg.total_bytes;
            let b = if std::io::stderr().is_terminal() {
                ProgressBar::new(total)
            } else {
                ProgressBar::hidden()
            };
            b.set_style(
                ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar = Some(b);
        }
        out.write_all(&msg.blob)
            .await
            .with_context(|| format!("writing {}", part.display()))?;
        received += msg.blob.len() as u64;
        if let Some(b) = &bar {
            b.set_position(received);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if received != total {
        bail!("the stream ended after {received} of {total} bytes");
    }
    out.sync_all()
        .await
        .with_context(|| format!("syncing {}", part.display()))?;
    Ok(())
}

fn keel_client_error(status: tonic::Status) -> anyhow::Error {
    anyhow!("snapshot stream broke: {}: {}", status.code(), status.message())
}

pub fn inspect(file: &Path, format: Format) -> anyhow::Result<Outcome> {
    let verified = verify(file)?;
    Ok(Outcome::Done(render(&doc(file, &verified), format, "verified")))
}

/// Stage the data directory of one member of a new cluster; its node builds the database at its
/// first start (see `keel_datadir::restore`).
pub fn restore(args: &RestoreArgs, format: Format) -> anyhow::Result<Outcome> {
    let peers = parse_initial_cluster(&args.initial_cluster).map_err(|e| anyhow!("{e}"))?;
    if !peers.contains_key(&args.id) {
        bail!("--id {} is not among the --initial-cluster members", args.id);
    }
    let verified = restore::stage(&args.data_dir, &args.file, args.id, &peers, &args.cluster_token)?;
    Ok(Outcome::Done(render(&doc(&args.file, &verified), format, "restored")))
}

#[cfg(test)]
mod created_tests {
    #[test]
    fn any_creation_time_formats() {
        assert_eq!(super::format_created(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_created(253_402_300_799_000), "9999-12-31T23:59:59Z");
        assert!(super::format_created(u64::MAX).contains("ms after the Unix epoch"));
    }
}
