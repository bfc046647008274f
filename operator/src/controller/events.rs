//! Kubernetes Events on the policy for host state transitions. Publishing is best effort:
//! an Event that cannot be written must not fail the reconcile that noticed the change.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use super::summary::EventSpec;

/// The Events API caps notes at 1 kB.
const MAX_NOTE: usize = 1000;

fn truncate(s: &str) -> String {
    if s.len() <= MAX_NOTE {
        return s.to_string();
    }
    let mut end = MAX_NOTE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub async fn publish(recorder: &Recorder, object: &ObjectReference, spec: &EventSpec) {
    let ev = Event {
        type_: if spec.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: spec.reason.to_string(),
        note: Some(truncate(&spec.note)),
        action: "Backup".to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, object).await {
        warn!(error = %e, reason = spec.reason, "could not publish Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_capped_on_a_char_boundary() {
        let long = "é".repeat(800);
        let t = truncate(&long);
        assert!(t.len() <= MAX_NOTE + '…'.len_utf8());
        assert!(t.ends_with('…'));
        assert_eq!(truncate("short"), "short");
    }
}
