//! Which hosts get a Retention/VerifyPolicy's job installed, which lose it, and what the
//! policy records afterwards. Pure: the controllers feed it the selection, the record kept in
//! `status.installedHosts` and the Host cache, then run the SSH side through the host layer.
//!
//! The record exists because a host that left the selection (or every host, after a switch
//! to `runOn: Operator`) is no longer found through the selector, yet may still run the
//! job's timer. A host enters the record before the job is installed and leaves it only once
//! the job was removed, so no crash in between can forget a host that carries the job.

use std::collections::BTreeSet;

/// What the policy wants on the hosts this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitMode {
    /// The job belongs on every selected host (`runOn: Host`, spec usable).
    Install,
    /// The spec cannot be applied as written: selected hosts keep what they have (nothing
    /// installed, nothing removed) until it is fixed; hosts that left the selection still
    /// lose the job.
    Hold,
    /// No host may carry the job: `runOn: Operator`, or the policy is being deleted.
    RemoveAll,
}

/// The decision for one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitPlan {
    /// Selected hosts to converge (install or update the job).
    pub converge: BTreeSet<String>,
    /// Hosts to take the job off.
    pub remove: BTreeSet<String>,
    /// Recorded hosts left as they are this round; they stay recorded.
    pub hold: BTreeSet<String>,
    /// Recorded hosts whose Host object is gone: nothing can reach them, so they are dropped
    /// from the record without any SSH work.
    pub forget: BTreeSet<String>,
}

/// Decides per host. `recorded` is `None` when the policy's status predates the record; every
/// selected host may then carry the job, so the selection stands in for it. `refused` are
/// Hosts that share their identity with an older Host ([`super::identity`]): nothing is
/// installed on them, and while other hosts keep the job nothing is removed from them either,
/// since the job's units on that machine may be the older Host's. When no host may keep the
/// job (`RemoveAll`), removing it is right whoever owns the machine.
pub fn plan_units(
    mode: UnitMode,
    selected: &BTreeSet<String>,
    recorded: Option<&BTreeSet<String>>,
    existing: &BTreeSet<String>,
    refused: &BTreeSet<String>,
) -> UnitPlan {
    let recorded = recorded.unwrap_or(selected);
    let mut plan = UnitPlan::default();
    for host in selected.union(recorded) {
        let is_selected = selected.contains(host);
        let is_recorded = recorded.contains(host);
        let target = if !existing.contains(host) {
            // Only a recorded host can be missing from the cache (the selection comes from it).
            &mut plan.forget
        } else {
            match mode {
                UnitMode::RemoveAll if is_recorded => &mut plan.remove,
                UnitMode::RemoveAll => continue,
                _ if refused.contains(host) => {
                    if !is_recorded {
                        continue;
                    }
                    &mut plan.hold
                }
                UnitMode::Install if is_selected => &mut plan.converge,
                UnitMode::Hold if is_selected => {
                    if !is_recorded {
                        continue;
                    }
                    &mut plan.hold
                }
                _ => &mut plan.remove,
            }
        };
        target.insert(host.clone());
    }
    plan
}

/// The record after the plan ran: every host that may still carry the job. Converged hosts
/// count whether or not the converge succeeded (a half-applied job has units too), and a
/// host whose removal failed stays so the removal is retried.
pub fn next_record(plan: &UnitPlan, removal_failed: &BTreeSet<String>) -> Vec<String> {
    let mut out: BTreeSet<String> = plan.converge.union(&plan.hold).cloned().collect();
    out.extend(plan.remove.intersection(removal_failed).cloned());
    out.into_iter().collect()
}

/// The record to write before any SSH work, when the plan installs on hosts not yet in it:
/// recorded first, so a crash between installing and the final status write cannot lose a
/// host. It lists every host that may carry the job once this round is over, as if every
/// removal failed. `None` when the record already covers every host about to be converged.
pub fn record_before_install(
    plan: &UnitPlan,
    recorded: Option<&BTreeSet<String>>,
) -> Option<Vec<String>> {
    if recorded.is_some_and(|r| plan.converge.is_subset(r)) || plan.converge.is_empty() {
        return None;
    }
    let mut out: BTreeSet<String> = plan.converge.union(&plan.hold).cloned().collect();
    out.extend(plan.remove.iter().cloned());
    Some(out.into_iter().collect())
}

/// Hosts whose `Host.status.policies` still lists this policy but that neither are selected
/// nor may still carry the job: their entry is stale and goes.
pub fn stale_entries(
    with_entry: &BTreeSet<String>,
    selected: &BTreeSet<String>,
    record: &[String],
) -> BTreeSet<String> {
    with_entry
        .iter()
        .filter(|h| !selected.contains(*h) && !record.contains(h))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Which bucket of the plan a host ended in, if any.
    fn bucket(plan: &UnitPlan, host: &str) -> &'static str {
        let hits: Vec<&str> = [
            ("converge", &plan.converge),
            ("remove", &plan.remove),
            ("hold", &plan.hold),
            ("forget", &plan.forget),
        ]
        .into_iter()
        .filter(|(_, s)| s.contains(host))
        .map(|(n, _)| n)
        .collect();
        assert!(hits.len() <= 1, "{host} in several buckets: {hits:?}");
        hits.first().copied().unwrap_or("none")
    }

    /// Every combination for one host: mode × selected × recorded (yes, no, record unknown)
    /// × Host object exists × refused as a duplicate, against the expected decision.
    #[test]
    fn every_single_host_case() {
        use UnitMode::*;
        #[derive(Clone, Copy, Debug)]
        enum Rec {
            Yes,
            No,
            Unknown,
        }
        let mut checked = 0;
        for mode in [Install, Hold, RemoveAll] {
            for selected in [true, false] {
                for rec in [Rec::Yes, Rec::No, Rec::Unknown] {
                    for exists in [true, false] {
                        for refused in [true, false] {
                            // The selection comes from the Host cache: a selected host exists.
                            if selected && !exists {
                                continue;
                            }
                            let sel = if selected { set(&["h"]) } else { set(&[]) };
                            let recorded = match rec {
                                Rec::Yes => Some(set(&["h"])),
                                Rec::No => Some(set(&[])),
                                Rec::Unknown => None,
                            };
                            let existing = if exists { set(&["h"]) } else { set(&[]) };
                            let refused_set = if refused { set(&["h"]) } else { set(&[]) };
                            let plan =
                                plan_units(mode, &sel, recorded.as_ref(), &existing, &refused_set);
                            // An unknown record means "whatever is selected may carry it".
                            let is_recorded = match rec {
                                Rec::Yes => true,
                                Rec::No => false,
                                Rec::Unknown => selected,
                            };
                            let expected = if !is_recorded && !selected {
                                "none"
                            } else if !exists {
                                "forget"
                            } else {
                                match mode {
                                    RemoveAll if is_recorded => "remove",
                                    RemoveAll => "none",
                                    _ if refused && is_recorded => "hold",
                                    _ if refused => "none",
                                    Install if selected => "converge",
                                    Hold if selected && is_recorded => "hold",
                                    Hold if selected => "none",
                                    _ => "remove",
                                }
                            };
                            assert_eq!(
                                bucket(&plan, "h"),
                                expected,
                                "mode {mode:?}, selected {selected}, recorded {rec:?}, exists {exists}, refused {refused}"
                            );
                            // Whatever the case: a selected, non-refused host is never stripped
                            // while the policy wants the job, and nothing is installed when it
                            // does not.
                            if mode == Install && selected && !refused {
                                assert!(!plan.remove.contains("h"));
                            }
                            if mode != Install {
                                assert!(plan.converge.is_empty());
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 54);
    }

    #[test]
    fn switching_to_operator_removes_from_every_recorded_host() {
        let selected = set(&["a", "b"]);
        let recorded = set(&["a", "b", "c"]);
        let plan = plan_units(
            UnitMode::RemoveAll,
            &selected,
            Some(&recorded),
            &set(&["a", "b", "c"]),
            &set(&[]),
        );
        assert_eq!(plan.remove, set(&["a", "b", "c"]));
        assert!(plan.converge.is_empty());
        // Removal done on a and c, b failed: only b stays recorded for the next try.
        assert_eq!(next_record(&plan, &set(&["b"])), vec!["b".to_string()]);
        // Once the record is empty, operator mode costs no SSH at all.
        let plan = plan_units(
            UnitMode::RemoveAll,
            &selected,
            Some(&set(&[])),
            &set(&["a", "b"]),
            &set(&[]),
        );
        assert_eq!(plan, UnitPlan::default());
    }

    #[test]
    fn a_policy_switched_before_the_record_existed_is_cleaned_on_its_selected_hosts() {
        let plan = plan_units(
            UnitMode::RemoveAll,
            &set(&["a", "b"]),
            None,
            &set(&["a", "b"]),
            &set(&[]),
        );
        assert_eq!(plan.remove, set(&["a", "b"]));
        assert!(next_record(&plan, &set(&[])).is_empty());
    }

    #[test]
    fn a_host_leaving_the_selection_loses_the_job_and_its_entry() {
        let selected = set(&["a"]);
        let recorded = set(&["a", "b"]);
        let plan = plan_units(
            UnitMode::Install,
            &selected,
            Some(&recorded),
            &set(&["a", "b"]),
            &set(&[]),
        );
        assert_eq!(plan.converge, set(&["a"]));
        assert_eq!(plan.remove, set(&["b"]));
        let record = next_record(&plan, &set(&[]));
        assert_eq!(record, vec!["a".to_string()]);
        assert_eq!(
            stale_entries(&set(&["a", "b"]), &selected, &record),
            set(&["b"])
        );
        // Removal failed: b stays recorded and keeps its entry until the retry succeeds.
        let record = next_record(&plan, &set(&["b"]));
        assert_eq!(record, vec!["a".to_string(), "b".to_string()]);
        assert!(stale_entries(&set(&["a", "b"]), &selected, &record).is_empty());
    }

    #[test]
    fn a_deleted_host_object_is_forgotten_without_ssh() {
        let plan = plan_units(
            UnitMode::Install,
            &set(&["a"]),
            Some(&set(&["a", "gone"])),
            &set(&["a"]),
            &set(&[]),
        );
        assert_eq!(plan.forget, set(&["gone"]));
        assert!(plan.remove.is_empty());
        assert_eq!(next_record(&plan, &set(&[])), vec!["a".to_string()]);
    }

    #[test]
    fn a_refused_duplicate_is_neither_installed_nor_stripped_while_others_keep_the_job() {
        let plan = plan_units(
            UnitMode::Install,
            &set(&["a", "dup"]),
            Some(&set(&["a", "dup", "dup-left"])),
            &set(&["a", "dup", "dup-left"]),
            &set(&["dup", "dup-left"]),
        );
        assert_eq!(plan.converge, set(&["a"]));
        assert_eq!(plan.hold, set(&["dup", "dup-left"]));
        assert!(plan.remove.is_empty());
        // Never recorded: a refused host is simply left out.
        let plan = plan_units(
            UnitMode::Install,
            &set(&["a", "dup"]),
            Some(&set(&["a"])),
            &set(&["a", "dup"]),
            &set(&["dup"]),
        );
        assert_eq!(plan.converge, set(&["a"]));
        assert!(plan.hold.is_empty());
        assert_eq!(next_record(&plan, &set(&[])), vec!["a".to_string()]);
    }

    #[test]
    fn a_spec_problem_installs_nothing_but_still_cleans_hosts_that_left() {
        let plan = plan_units(
            UnitMode::Hold,
            &set(&["a", "new"]),
            Some(&set(&["a", "left"])),
            &set(&["a", "new", "left"]),
            &set(&[]),
        );
        assert!(plan.converge.is_empty());
        assert_eq!(plan.hold, set(&["a"]));
        assert_eq!(plan.remove, set(&["left"]));
        assert_eq!(next_record(&plan, &set(&[])), vec!["a".to_string()]);
    }

    #[test]
    fn new_hosts_are_recorded_before_anything_is_installed() {
        let plan = plan_units(
            UnitMode::Install,
            &set(&["a", "b"]),
            Some(&set(&["a"])),
            &set(&["a", "b"]),
            &set(&[]),
        );
        assert_eq!(
            record_before_install(&plan, Some(&set(&["a"]))),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        // Already covered: no extra status write.
        assert_eq!(record_before_install(&plan, Some(&set(&["a", "b"]))), None);
        // A removal still to do stays in the early record: it may fail.
        let plan = plan_units(
            UnitMode::Install,
            &set(&["a", "b"]),
            Some(&set(&["a", "left"])),
            &set(&["a", "b", "left"]),
            &set(&[]),
        );
        assert_eq!(
            record_before_install(&plan, Some(&set(&["a", "left"]))),
            Some(vec!["a".to_string(), "b".to_string(), "left".to_string()])
        );
        // A record written by an older operator is replaced by a real one first.
        let plan = plan_units(
            UnitMode::Install,
            &set(&["a"]),
            None,
            &set(&["a"]),
            &set(&[]),
        );
        assert_eq!(
            record_before_install(&plan, None),
            Some(vec!["a".to_string()])
        );
        // Nothing to install, nothing to record.
        assert_eq!(record_before_install(&UnitPlan::default(), None), None);
    }
}
