//! Histories on disk: one JSON object per operation and line, so that a history a chaos run
//! could not check (or found wrong) can be kept with the run's logs and checked again, offline,
//! by `keel-chaos --check FILE`.

use std::io::{BufRead, Write};

use super::{History, OpId, Operation};

impl History {
    /// Write every operation, one JSON object per line, in id order.
    pub fn write_jsonl(&self, mut w: impl Write) -> std::io::Result<()> {
        for o in &self.ops {
            serde_json::to_writer(&mut w, o)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }

    /// Read what [`History::write_jsonl`] wrote. Ids must run 0, 1, 2… in order, as the recorder
    /// numbers them; blank lines are skipped. The error names the line.
    pub fn read_jsonl(r: impl BufRead) -> Result<History, String> {
        let mut history = History::new();
        for (n, line) in r.lines().enumerate() {
            let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let op: Operation = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?;
            if op.id != OpId(history.ops.len()) {
                return Err(format!(
                    "line {}: operation {} where op#{} was expected",
                    n + 1,
                    op.id,
                    history.ops.len()
                ));
            }
            history.ops.push(op);
        }
        Ok(history)
    }
}
