//! Running `keel` as a child process.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A binary of this workspace: `$KEEL_BIN_DIR/NAME`, or next to the running test executable
/// (`target/<profile>/`), where `cargo test --workspace` builds it.
fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KEEL_BIN_DIR") {
        return Ok(PathBuf::from(dir).join(name));
    }
    let exe = std::env::current_exe()?;
    // A test runs from target/<profile>/deps/, a tool such as keel-chaos from target/<profile>/.
    let dir = exe.parent().context("executable has no directory")?;
    let candidates = [Some(dir), dir.parent()];
    let Some(path) = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.exists())
    else {
        bail!(
            "{name} not found next to {}; build it first (cargo build --workspace --bins) or set KEEL_BIN_DIR",
            exe.display()
        );
    };
    Ok(path)
}

/// The `keel` node binary.
pub fn keel_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("keel")
}

/// The `keelctl` binary.
pub fn keelctl_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("keelctl")
}

/// A running `keel` process; killed when dropped.
pub struct Child {
    child: Option<std::process::Child>,
}

impl Child {
    pub fn spawn(args: &[String], log: &Path) -> anyhow::Result<Child> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(keel_binary()?)
            .args(args)
            .env(
                "KEEL_LOG_LEVEL",
                std::env::var("KEEL_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawn keel")?;
        Ok(Child { child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// How the process ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn signal(&mut self, sig: libc::c_int) -> anyhow::Result<()> {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        if unsafe { libc::kill(pid, sig) } != 0 {
            bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait up to `timeout` (then SIGKILL and fail).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("process already stopped");
        };
        // SAFETY: as in `signal`.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                c.kill()?;
                c.wait()?;
                bail!("process did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGCONT first, in case the test paused it.
            // SAFETY: as in `signal`.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
