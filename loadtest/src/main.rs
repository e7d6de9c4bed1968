//! `icering-loadtest`: load generators for STUN and TURN (and, as it lands, ICE) servers —
//! icering's own or any other (coturn, ...). Uses only icering's public API: the STUN codec
//! to build and validate messages and the io backends to send and receive in batches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod floor;
mod ice;
mod report;
mod stun;
mod turn;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "icering-loadtest",
    version,
    about = "Load generator for STUN/ICE/TURN servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Binding requests against any STUN server, every response validated.
    Stun(stun::Args),
    /// TURN relaying: allocations with a channel (or Send indications) to a local echo
    /// peer, round trips through the relay, loss and RTT.
    Turn(turn::Args),
    /// ICE connection setup: agent pairs over loopback, or agents against `icering serve`
    /// sessions; connections/s, setup latency, RSS per agent, hold with keepalives;
    /// `--baseline webrtc-ice` side by side.
    Ice(ice::Args),
    /// The kernel and io work under `ice pairs`' setups alone: per pair one dedicated
    /// socket and the six datagrams of a setup, no ICE (the lower bound of its CPU).
    UdpFloor(floor::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Stun(args) => stun::run(args),
        Command::Turn(args) => turn::run(args),
        Command::Ice(args) => ice::run(args),
        Command::UdpFloor(args) => floor::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("icering-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
