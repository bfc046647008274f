//! The campaign's result: a table command × backend × points × passed, the failures with
//! what to replay, and the one-line summary the CI test and `docs/robustness.md` quote.

use std::collections::BTreeMap;
use std::fmt;

use super::points::{Backend, Command, Point};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Killed at the point and everything held; for a syscall point, the killed call.
    Passed(Option<String>),
    /// The command finished before the point: no kill happened, so nothing was proven.
    NotReached,
    Failed(String),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Row {
    pub points: usize,
    pub passed: usize,
    pub failed: usize,
    pub not_reached: usize,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub rows: BTreeMap<(Command, Backend), Row>,
    pub failures: Vec<(Point, String)>,
    pub seconds: f64,
    /// Temporary files left in local repositories by passed points (see
    /// `storage::Repo::temp_debris`): harmless to both tools, but never reclaimed.
    pub debris: usize,
}

impl Report {
    pub fn new(seed: u64) -> Report {
        Report {
            seed,
            rows: BTreeMap::new(),
            failures: Vec::new(),
            seconds: 0.0,
            debris: 0,
        }
    }

    pub fn add(&mut self, p: &Point, v: Verdict) {
        let r = self.rows.entry((p.command, p.backend)).or_default();
        r.points += 1;
        match v {
            Verdict::Passed(_) => r.passed += 1,
            Verdict::NotReached => r.not_reached += 1,
            Verdict::Failed(why) => {
                r.failed += 1;
                self.failures.push((p.clone(), why));
            }
        }
    }

    pub fn total(&self) -> Row {
        self.rows.values().fold(Row::default(), |a, r| Row {
            points: a.points + r.points,
            passed: a.passed + r.passed,
            failed: a.failed + r.failed,
            not_reached: a.not_reached + r.not_reached,
        })
    }

    /// `robustness: seed=S points=N passed=P failed=F not-reached=X`
    pub fn summary(&self) -> String {
        let t = self.total();
        format!(
            "robustness: seed={} points={} passed={} failed={} not-reached={}",
            self.seed, t.points, t.passed, t.failed, t.not_reached
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<8} {:<7} {:>6} {:>6} {:>6} {:>11}",
            "command", "backend", "points", "passed", "failed", "not-reached"
        )?;
        let line = |f: &mut fmt::Formatter<'_>, c: &str, b: &str, r: &Row| {
            writeln!(
                f,
                "{c:<8} {b:<7} {:>6} {:>6} {:>6} {:>11}",
                r.points, r.passed, r.failed, r.not_reached
            )
        };
        for ((c, b), r) in &self.rows {
            line(f, c.name(), b.name(), r)?;
        }
        line(f, "total", "", &self.total())?;
        for (p, why) in &self.failures {
            writeln!(f, "FAILED {p} (replay: --seed {} --only {p})", self.seed)?;
            writeln!(f, "    {}", why.lines().next().unwrap_or(""))?;
        }
        writeln!(
            f,
            "temporary files left in local repositories (as restic leaves them): {}",
            self.debris
        )?;
        writeln!(f, "time: {:.0}s", self.seconds)?;
        write!(f, "{}", self.summary())
    }
}

/// Read back the summary line (the CI test runs the binary and checks this).
pub fn parse_summary(line: &str) -> Option<BTreeMap<String, u64>> {
    let rest = line.strip_prefix("robustness: ")?;
    rest.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_and_parses_back() {
        let mut r = Report::new(42);
        let p: Point = "local/backup/fsync#1".parse().unwrap();
        r.add(&p, Verdict::Passed(None));
        r.add(&p, Verdict::NotReached);
        r.add(&p, Verdict::Failed("boom".into()));
        let s = r.summary();
        assert_eq!(
            s,
            "robustness: seed=42 points=3 passed=1 failed=1 not-reached=1"
        );
        let m = parse_summary(&s).unwrap();
        assert_eq!(m["passed"], 1);
        assert_eq!(m["not-reached"], 1);
        assert!(r.to_string().contains("FAILED local/backup/fsync#1"));
    }
}
