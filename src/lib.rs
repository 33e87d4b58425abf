//! The `partyline` server: the command line and the process setups that put the SDK
//! (`partyline`), the node (`partyline-node`), the gateway (`partyline-gateway`) and what they
//! share (`partyline-cluster`) together.
//!
//! Modules: [`cli`] (the command line, and each command's settings), the processes it starts
//! ([`dev`]: gateway and node in one process, embedded store; [`node`]: a cluster's owner node;
//! [`gateway`]: a cluster's gateway), [`process`] (what every server process shares: listening,
//! shutdown signals), [`health`] (a gateway's health and metrics endpoints), [`init`] (creating
//! a cluster in Redis), [`ops`] (what operators see and do: the cluster's overview, a room's
//! lookup, drains and moves), [`console`] (the operator console a gateway serves on its admin
//! listener), [`status`] (`partyline status`, `room`, `drain`), [`probe`], [`new`]
//! (`partyline new`), [`project`] (PartyKit projects, feature `partykit`), [`telemetry`] (logs
//! and OTLP traces).
//!
//! Features (all on by default): `examples` (the example parties and the `partyline` binary),
//! `bench` (`partyline bench`), `partykit` (PartyKit projects on the JS engine).
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
pub mod console;
#[cfg(feature = "partykit")]
pub mod deploy;
pub mod dev;
pub mod gateway;
pub mod health;
pub mod init;
pub mod new;
pub mod node;
pub mod ops;
pub mod probe;
pub mod process;
#[cfg(feature = "partykit")]
pub mod project;
#[cfg(not(feature = "partykit"))]
#[path = "project_off.rs"]
pub mod project;
pub mod status;
pub mod telemetry;
pub mod values;

use std::process::ExitCode;

use clap::Parser;
use partyline::PartyRegistry;

/// Parses the command line, runs the chosen subcommand with `parties` (beside a PartyKit
/// project's parties when one is given), and reports errors readably.
pub fn main(parties: PartyRegistry) -> ExitCode {
    run_main(parties, false)
}

/// As [`main`], for example parties: a PartyKit project replaces them instead of joining them.
#[cfg(feature = "examples")]
pub fn main_examples(parties: PartyRegistry) -> ExitCode {
    run_main(parties, true)
}

fn run_main(parties: PartyRegistry, examples: bool) -> ExitCode {
    // One TLS implementation for every TLS user in the process (gateways, cluster gRPC, rediss://).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let cli = cli::Cli::parse();
    raise_fd_limit();
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
    let log_format = cli.log_format;
    let service = format!("partyline-{}", cli.command_name());
    let run = async move {
        let _telemetry = telemetry::init(log_format, &service)?;
        cli.run(parties, examples).await
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every client socket, gRPC channel and
/// Redis connection is a file descriptor, and the usual soft default (1024) caps a gateway at
/// about a thousand clients.
fn raise_fd_limit() {
    #[cfg(unix)]
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: could not raise the open-file limit: {e}");
    }
}

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
