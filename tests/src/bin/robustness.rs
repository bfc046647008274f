//! The kill-point campaign (issue 17), see `fleetsnap_tests::robustness`.
//!
//! ```text
//! robustness [--points N] [--seed S] [--backend local|s3|both] [--commands backup,forget,...]
//!            [--only POINT,...] [--work DIR] [--keep] [--executor PATH]
//!            [--failpoint-executor PATH]
//! ```
//! Without `--points`, every point the dry runs find runs (the full campaign). Prints its
//! seed first, a line per point, the table and the summary line; exits 1 if a point failed.

use std::path::PathBuf;
use std::process::ExitCode;

use fleetsnap_tests::robustness::{self, Options, points};

const USAGE: &str = "usage: robustness [--points N] [--seed S] [--backend local|s3|both] \
[--commands backup,forget,prune,check,restore] [--only POINT,...] [--work DIR] [--keep] \
[--executor PATH] [--failpoint-executor PATH]";

fn parse(args: Vec<String>) -> Result<Options, String> {
    let mut seed = None;
    let mut o = Options::new(0);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--points" => {
                let v = val()?;
                o.points = Some(
                    v.parse()
                        .map_err(|_| format!("--points {v}: not a number"))?,
                )
            }
            "--seed" => {
                let v = val()?;
                seed = Some(v.parse().map_err(|_| format!("--seed {v}: not a number"))?)
            }
            "--backend" => {
                o.backends = match val()?.as_str() {
                    "both" => points::Backend::ALL.to_vec(),
                    b => vec![points::Backend::parse(b)?],
                }
            }
            "--commands" => {
                o.commands = val()?
                    .split(',')
                    .map(points::Command::parse)
                    .collect::<Result<_, _>>()?
            }
            "--only" => {
                for p in val()?.split(',') {
                    o.only.push(p.parse()?);
                }
            }
            "--work" => o.work = Some(PathBuf::from(val()?)),
            "--keep" => o.keep = true,
            "--executor" => o.tools.fleetsnap = Some(PathBuf::from(val()?)),
            "--failpoint-executor" => o.tools.fleetsnap_failpoints = Some(PathBuf::from(val()?)),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    // No seed given: a fresh one, printed first, so this run can be replayed.
    o.seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1).collect()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!("robustness: seed={}", opts.seed);
    match robustness::run(&opts) {
        Ok(report) => {
            println!("{report}");
            if report.total().failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            println!("robustness: seed={} error: {e:#}", opts.seed);
            ExitCode::from(2)
        }
    }
}
