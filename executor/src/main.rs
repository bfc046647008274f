use clap::Parser;

/// fleetsnap: restic-compatible backups for fleets of Linux hosts.
#[derive(Parser)]
#[command(name = "fleetsnap", version = fleetsnap::VERSION)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
