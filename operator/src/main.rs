use clap::Parser;

/// fleetsnap-operator: reconciles fleetsnap.io resources onto Linux hosts over SSH.
#[derive(Parser)]
#[command(name = "fleetsnap-operator", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
