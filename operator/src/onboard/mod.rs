//! Onboarding a fleet: an inventory in, Host objects with pinned host keys out.
//!
//! read inventory (pure parse) → scan each host's key (`ssh-keyscan`, bounded, in parallel)
//! → show the fingerprints → on confirmation, write YAML (pure render). Nothing is applied
//! to a cluster: the YAML goes to Git, or to `kubectl apply -f`.

pub mod inventory;
pub mod keys;
pub mod render;

use std::io::{BufRead, Write};

use inventory::InventoryHost;

/// How many `ssh-keyscan`s run at once.
pub const DEFAULT_PARALLEL: usize = 16;

/// One host's scan: the key line, or why there is none.
pub struct Scanned<'a> {
    pub host: &'a InventoryHost,
    pub port: u16,
    pub key: Result<String, String>,
}

/// Scans every host, `parallel` at a time, in inventory order.
pub fn scan_all<'a>(
    hosts: &'a [InventoryHost],
    default_port: u16,
    timeout_secs: u32,
    parallel: usize,
    scan: &(dyn Fn(&str, u16, u32) -> Result<String, String> + Sync),
) -> Vec<Scanned<'a>> {
    let mut out = Vec::with_capacity(hosts.len());
    for chunk in hosts.chunks(parallel.max(1)) {
        let keys: Vec<Result<String, String>> = std::thread::scope(|s| {
            let running: Vec<_> = chunk
                .iter()
                .map(|h| {
                    let port = h.port.unwrap_or(default_port);
                    s.spawn(move || scan(&h.address, port, timeout_secs))
                })
                .collect();
            running
                .into_iter()
                .map(|r| r.join().unwrap_or_else(|_| Err("scan panicked".into())))
                .collect()
        });
        for (h, key) in chunk.iter().zip(keys) {
            out.push(Scanned {
                host: h,
                port: h.port.unwrap_or(default_port),
                key,
            });
        }
    }
    out
}

/// The table a person compares with each host's console (`ssh-keygen -lf
/// /etc/ssh/ssh_host_ed25519_key.pub`).
pub fn table(scanned: &[Scanned<'_>]) -> String {
    let mut out = String::new();
    let w = scanned
        .iter()
        .map(|s| s.host.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    out.push_str(&format!("{:w$}  {:30}  FINGERPRINT\n", "HOST", "ADDRESS"));
    for s in scanned {
        let addr = format!("{}:{}", s.host.address, s.port);
        let what = match &s.key {
            Ok(k) => format!(
                "{} {}",
                k.split_whitespace().next().unwrap_or_default(),
                keys::fingerprint(k).unwrap_or_default()
            ),
            Err(e) => format!("FAILED: {e}"),
        };
        out.push_str(&format!("{:w$}  {addr:30}  {what}\n", s.host.name));
    }
    out
}

/// Asks on `input` until it gets yes or no; end of input is no.
pub fn confirm(prompt: &str, input: &mut dyn BufRead, output: &mut dyn Write) -> bool {
    loop {
        let _ = write!(output, "{prompt} [y/N] ");
        let _ = output.flush();
        let mut line = String::new();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return true,
            "" | "n" | "no" => return false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, port: Option<u16>) -> InventoryHost {
        InventoryHost {
            name: name.into(),
            address: format!("{name}.example"),
            port,
            user: None,
            groups: vec![],
        }
    }

    #[test]
    fn scans_keep_inventory_order_and_report_failures() {
        let hosts: Vec<_> = (0..5)
            .map(|i| host(&format!("h{i}"), (i == 3).then_some(2222)))
            .collect();
        let scan = |addr: &str, port: u16, _t: u32| {
            if addr == "h1.example" {
                Err("connection refused".to_string())
            } else {
                Ok(format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5{port}"))
            }
        };
        let got = scan_all(&hosts, 22, 5, 2, &scan);
        let names: Vec<_> = got.iter().map(|s| s.host.name.as_str()).collect();
        assert_eq!(names, ["h0", "h1", "h2", "h3", "h4"]);
        assert_eq!(got[3].port, 2222);
        assert!(got[1].key.is_err());
        let t = table(&got);
        assert!(
            t.contains("h1.example:22") && t.contains("FAILED: connection refused"),
            "{t}"
        );
    }

    #[test]
    fn confirmation_needs_a_yes() {
        let mut sink = Vec::new();
        for (answer, want) in [
            ("y\n", true),
            ("YES\n", true),
            ("\n", false),
            ("", false),
            ("maybe\nn\n", false),
        ] {
            assert_eq!(
                confirm("write?", &mut answer.as_bytes(), &mut sink),
                want,
                "{answer:?}"
            );
        }
    }
}
