//! The `partyline` server: the command line and the process setups (`dev`, and with later work
//! `gateway` and `node`) that put the SDK (`partyline`), the node (`partyline-node`) and the
//! gateway (`partyline-gateway`) together.
//!
//! To serve your own parties, depend on this crate and the SDK, and call [`main`] with your
//! registry:
//!
//! ```no_run
//! # use partyline::PartyRegistry;
//! fn main() -> std::process::ExitCode {
//!     let parties = PartyRegistry::new(); // .with::<MyParty>("main")
//!     partyline_server::main(parties)
//! }
//! ```

pub mod cli;
pub mod cluster;
pub mod dev;
pub mod project;
pub mod status;

use std::process::ExitCode;

use clap::Parser;
use partyline::PartyRegistry;

/// Parses the command line, runs the chosen subcommand with `parties` (beside a PartyKit
/// project's parties when one is given), and reports errors readably.
pub fn main(parties: PartyRegistry) -> ExitCode {
    run_main(parties, false)
}

/// As [`main`], for example parties: a PartyKit project replaces them instead of joining them.
pub fn main_examples(parties: PartyRegistry) -> ExitCode {
    run_main(parties, true)
}

fn run_main(parties: PartyRegistry, examples: bool) -> ExitCode {
    // One TLS implementation for every TLS user in the process (gateways, cluster gRPC, rediss://).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.worker_threads.filter(|n| *n > 0) {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run(parties, examples)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
