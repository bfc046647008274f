//! Waiting for conditions. Tests wait for what they need to be true — never for a fixed time.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Poll `check` until it returns `Ok(Some(v))`, failing after `timeout` with the last
/// observation so the failure message says what was seen instead of what was wanted.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = "condition not met yet".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
