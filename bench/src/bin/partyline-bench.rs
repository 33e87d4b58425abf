//! `partyline-bench`: the load tester on its own (the same as `partyline bench`).

use clap::Parser;

/// Load-test a Partyline server (or any server with PartyKit's URLs) on loopback.
#[derive(Debug, Parser)]
#[command(name = "partyline-bench", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: partyline_bench::BenchArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("partyline-bench: could not start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(partyline_bench::run(cli.args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("partyline-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
