//! CI sample of the kill-point campaign (issue 17): 25 points over both backends and all
//! five commands, drawn by a fresh seed each run (printed; set FLEETSNAP_ROBUSTNESS_SEED to
//! replay one). Fails if any point fails, or if fewer than 20 kills actually happened: a
//! point whose command finished first proves nothing.
//!
//! Needs what the campaign needs (restic 0.19.1, MinIO, mc, strace, the failpoint executor,
//! `fleetsnap-failpoints`, which it builds next to the workspace binaries on first use); a missing one fails by name.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use fleetsnap_tests::robustness::report::parse_summary;

const POINTS: u64 = 25;
const MIN_REACHED: u64 = 20;

#[test]
fn a_sample_of_kill_points_loses_nothing() {
    let t0 = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_robustness"));
    cmd.args(["--points", &POINTS.to_string(), "--backend", "both"]);
    if let Ok(seed) = std::env::var("FLEETSNAP_ROBUSTNESS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the robustness harness");
    // Written straight to stderr, not through the test's captured output: a CI log shows
    // the seed, the progress and the table also when the test passes.
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.expect("harness output");
        let _ = writeln!(std::io::stderr(), "{line}");
        lines.push(line);
    }
    let status = child.wait().expect("wait for the harness");
    let summary = lines
        .iter()
        .rev()
        .find_map(|l| parse_summary(l).filter(|m| m.contains_key("points")))
        .unwrap_or_else(|| {
            panic!(
                "the harness printed no result line ({status}); last output:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            )
        });
    let _ = writeln!(
        std::io::stderr(),
        "robustness sample took {:.0}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        summary["points"], POINTS,
        "the sample is not {POINTS} points"
    );
    assert_eq!(
        summary["failed"], 0,
        "kill points failed (replay them with the seed and --only, see above)"
    );
    assert!(
        summary["passed"] >= MIN_REACHED,
        "only {} of {POINTS} kills happened (at least {MIN_REACHED} must)",
        summary["passed"]
    );
    assert!(status.success(), "harness exited with {status}");
}
