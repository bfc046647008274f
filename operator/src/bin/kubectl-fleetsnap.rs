//! `kubectl fleetsnap`: the kubectl plugin. `onboard` turns an inventory into Host objects
//! with their SSH host keys pinned.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetsnap_crds::common::SecretKeyRef;
use fleetsnap_operator::onboard::{self, inventory, keys, render};

#[derive(Parser)]
#[command(name = "kubectl-fleetsnap", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Read an inventory (Ansible INI or YAML, or CSV with a name,address,port,user,groups
    /// header), scan each host's SSH host key, show the fingerprints and, once confirmed,
    /// write Host objects as YAML. Nothing is applied to the cluster.
    Onboard {
        /// The inventory file.
        inventory: PathBuf,
        /// `ini`, `yaml` or `csv`; guessed from the file name when not given.
        #[arg(long)]
        format: Option<String>,
        /// The Secret holding the operator's SSH private key, as NAME or NAME/KEY (the key
        /// defaults to `ssh-privatekey`, as in a kubernetes.io/ssh-auth Secret).
        #[arg(long)]
        ssh_key_secret: String,
        /// Namespace written into each object.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Login user for hosts whose inventory entry names none.
        #[arg(long, default_value = "root")]
        user: String,
        /// SSH port for hosts whose inventory entry names none.
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// Seconds `ssh-keyscan` waits for each host.
        #[arg(long, default_value_t = 5)]
        timeout: u32,
        /// Hosts scanned at once.
        #[arg(long, default_value_t = onboard::DEFAULT_PARALLEL)]
        parallel: usize,
        /// Write the YAML here instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Do not ask: the fingerprints were checked another way.
        #[arg(long)]
        yes: bool,
        /// Write the hosts that answered even if others did not (by default nothing is
        /// written while any host fails).
        #[arg(long)]
        skip_failed: bool,
    },
}

fn main() -> ExitCode {
    let Cmd::Onboard {
        inventory: path,
        format,
        ssh_key_secret,
        namespace,
        user,
        port,
        timeout,
        parallel,
        output,
        yes,
        skip_failed,
    } = Cli::parse().cmd;
    let fail = |msg: String| {
        eprintln!("kubectl-fleetsnap onboard: {msg}");
        ExitCode::from(2)
    };
    let format = match format.as_deref() {
        None => inventory::Format::guess(&path.to_string_lossy()),
        Some("ini") => inventory::Format::Ini,
        Some("yaml") | Some("yml") => inventory::Format::Yaml,
        Some("csv") => inventory::Format::Csv,
        Some(other) => return fail(format!("--format {other:?}: use ini, yaml or csv")),
    };
    let (secret, key) = match ssh_key_secret.split_once('/') {
        Some((s, k)) => (s.to_string(), k.to_string()),
        None => (ssh_key_secret.clone(), "ssh-privatekey".to_string()),
    };
    // Inventories are small text files; a bound keeps a wrong path (a disk image) harmless.
    let text = match std::fs::metadata(&path) {
        Ok(m) if m.len() > 16 * 1024 * 1024 => {
            return fail(format!(
                "{}: larger than 16 MiB; is it an inventory?",
                path.display()
            ));
        }
        Ok(_) => match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return fail(format!("{}: {e}", path.display())),
        },
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    let hosts = match inventory::parse(format, &text) {
        Ok(h) => h,
        Err(e) => return fail(format!("{}: {e}", path.display())),
    };
    eprintln!(
        "scanning the host keys of {} hosts ({parallel} at a time)…",
        hosts.len()
    );
    let scanned = onboard::scan_all(&hosts, port, timeout, parallel, &keys::scan);
    eprint!("{}", onboard::table(&scanned));
    let failed = scanned.iter().filter(|s| s.key.is_err()).count();
    let good: Vec<(&inventory::InventoryHost, String)> = scanned
        .iter()
        .filter_map(|s| s.key.as_ref().ok().map(|k| (s.host, k.clone())))
        .collect();
    if failed > 0 && !skip_failed {
        return fail(format!(
            "{failed} of {} hosts gave no host key; nothing written (fix them, or pass \
             --skip-failed to write the others)",
            hosts.len()
        ));
    }
    if good.is_empty() {
        return fail("no host gave a host key; nothing written".into());
    }
    let defaults = render::Defaults {
        namespace,
        ssh_key: SecretKeyRef { name: secret, key },
        user,
        port,
    };
    let yaml = match render::hosts_yaml(&good, &defaults) {
        Ok(y) => y,
        Err(e) => return fail(e),
    };
    if !yes {
        let prompt = format!(
            "Do these fingerprints match the hosts' own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)? Write {} Host objects?",
            good.len()
        );
        let tty = std::fs::File::open("/dev/tty");
        let confirmed = match tty {
            Ok(t) => onboard::confirm(
                &prompt,
                &mut std::io::BufReader::new(t),
                &mut std::io::stderr(),
            ),
            Err(_) => onboard::confirm(
                &prompt,
                &mut std::io::stdin().lock(),
                &mut std::io::stderr(),
            ),
        };
        if !confirmed {
            return fail("not confirmed; nothing written".into());
        }
    }
    let written = match &output {
        Some(p) => std::fs::write(p, &yaml).map(|_| p.display().to_string()),
        None => std::io::stdout()
            .write_all(yaml.as_bytes())
            .map(|_| "standard output".to_string()),
    };
    match written {
        Ok(to) => {
            eprintln!("wrote {} Host objects to {to}", good.len());
            if failed > 0 {
                eprintln!("{failed} hosts were left out (no host key)");
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("writing the YAML: {e}")),
    }
}
