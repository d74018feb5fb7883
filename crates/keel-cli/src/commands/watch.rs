//! `keelctl watch`: every change to a key or range, printed as it comes. The client carries the
//! watch over to another member if the one serving it goes away, without gap or repeat.

use std::io::Write;

use anyhow::anyhow;
use keel_client::proto::WatchCreateRequest;
use keel_client::Client;

use super::{key_range, Outcome};
use crate::args::{Format, WatchArgs};
use crate::output::kv as out;

pub async fn watch(client: &Client, args: &WatchArgs, format: Format) -> anyhow::Result<Outcome> {
    let (key, range_end, prefix) = key_range(&args.range)?;
    let create = WatchCreateRequest {
        key,
        range_end,
        prefix,
        start_revision: args.rev,
        prev_kv: args.prev_kv,
        ..Default::default()
    };
    let mut watch = client.watch(create).await?;
    let mut printed = 0;
    let mut stdout = std::io::stdout().lock();
    while args.max_events == 0 || printed < args.max_events {
        let batch = watch.next().await?;
        for event in &batch.events {
            stdout
                .write_all(out::event(event, args.prev_kv, format).as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| anyhow!("writing to stdout: {e}"))?;
            printed += 1;
        }
    }
    Ok(Outcome::Done(String::new()))
}
