//! Host objects from scanned inventory hosts, as YAML for Git. Pure.

use fleetsnap_crds::common::SecretKeyRef;
use fleetsnap_crds::host::HostSpec;

use super::inventory::InventoryHost;

/// Label prefix for the inventory's groups, so policies can select them
/// (`hostSelector: {matchLabels: {inventory.fleetsnap.io/web: "true"}}`).
pub const GROUP_LABEL_PREFIX: &str = "inventory.fleetsnap.io/";

/// What every Host gets unless the inventory says otherwise.
pub struct Defaults {
    pub namespace: Option<String>,
    pub ssh_key: SecretKeyRef,
    pub user: String,
    pub port: u16,
}

/// A Kubernetes object name from an inventory name: lower case, with anything outside
/// `[a-z0-9.-]` replaced by `-` (Ansible names allow `_`); `None` if nothing usable is left.
pub fn object_name(name: &str) -> Option<String> {
    let mut out: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    out = out
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    out.truncate(253);
    let out = out
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    (!out.is_empty()).then_some(out)
}

fn group_label(group: &str) -> Option<String> {
    let ok = !group.is_empty()
        && group.len() <= 63
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && group.starts_with(|c: char| c.is_ascii_alphanumeric())
        && group.ends_with(|c: char| c.is_ascii_alphanumeric());
    ok.then(|| format!("{GROUP_LABEL_PREFIX}{group}"))
}

/// One YAML document per host (`host_key` is the scanned `<type> <base64>` line), in
/// inventory order.
pub fn hosts_yaml(hosts: &[(&InventoryHost, String)], d: &Defaults) -> Result<String, String> {
    let mut out = String::from(
        "# Host objects written by `kubectl fleetsnap onboard`; each hostKey was read with\n\
         # ssh-keyscan and its fingerprint shown for confirmation before this file was written.\n",
    );
    let mut names = std::collections::BTreeSet::new();
    for (h, key) in hosts {
        let name = object_name(&h.name)
            .ok_or_else(|| format!("host {:?}: no usable object name in it", h.name))?;
        if !names.insert(name.clone()) {
            return Err(format!(
                "hosts {:?} and another one both become the object name {name:?}",
                h.name
            ));
        }
        let spec = HostSpec {
            address: h.address.clone(),
            port: i32::from(h.port.unwrap_or(d.port)),
            user: h.user.clone().unwrap_or_else(|| d.user.clone()),
            ssh_key_secret_ref: d.ssh_key.clone(),
            host_key: key.clone(),
            // The object name is the hostname, unless the inventory's name had to change.
            hostname: None,
        };
        let mut labels = serde_json::Map::new();
        for g in &h.groups {
            if let Some(l) = group_label(g) {
                labels.insert(l, "true".into());
            }
        }
        let mut metadata = serde_json::json!({ "name": name });
        if let Some(ns) = &d.namespace {
            metadata["namespace"] = ns.clone().into();
        }
        if !labels.is_empty() {
            metadata["labels"] = labels.into();
        }
        let obj = serde_json::json!({
            "apiVersion": "fleetsnap.io/v1alpha1",
            "kind": "Host",
            "metadata": metadata,
            "spec": serde_json::to_value(&spec).map_err(|e| e.to_string())?,
        });
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&obj).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_object_names() {
        assert_eq!(
            object_name("Web_01.Prod.example").as_deref(),
            Some("web-01.prod.example")
        );
        assert_eq!(object_name("_x_").as_deref(), Some("x"));
        assert_eq!(object_name("__"), None);
    }

    #[test]
    fn yaml_has_the_crd_shape_and_the_groups_as_labels() {
        let h = InventoryHost {
            name: "db1".into(),
            address: "10.0.1.10".into(),
            port: Some(2222),
            user: None,
            groups: vec!["db".into(), "bad group".into()],
        };
        let d = Defaults {
            namespace: Some("fleet".into()),
            ssh_key: SecretKeyRef {
                name: "fleet-ssh".into(),
                key: "ssh-privatekey".into(),
            },
            user: "root".into(),
            port: 22,
        };
        let text = hosts_yaml(&[(&h, "ssh-ed25519 AAAAC3Nz".into())], &d).unwrap();
        let doc: serde_json::Value =
            serde_yaml::from_str(text.split("---\n").nth(1).unwrap()).unwrap();
        assert_eq!(doc["kind"], "Host");
        assert_eq!(doc["metadata"]["namespace"], "fleet");
        assert_eq!(
            doc["metadata"]["labels"]["inventory.fleetsnap.io/db"],
            "true"
        );
        assert_eq!(doc["metadata"]["labels"].as_object().unwrap().len(), 1);
        assert_eq!(doc["spec"]["address"], "10.0.1.10");
        assert_eq!(doc["spec"]["port"], 2222);
        assert_eq!(doc["spec"]["user"], "root");
        assert_eq!(doc["spec"]["hostKey"], "ssh-ed25519 AAAAC3Nz");
        assert_eq!(doc["spec"]["sshKeySecretRef"]["name"], "fleet-ssh");
        // Two inventory names that meet in one object name are refused.
        let twin = InventoryHost {
            name: "DB1".into(),
            ..h.clone()
        };
        let e = hosts_yaml(&[(&h, "k".into()), (&twin, "k".into())], &d).unwrap_err();
        assert!(e.contains("both become"), "{e}");
    }
}
