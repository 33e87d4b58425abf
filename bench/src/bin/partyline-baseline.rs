//! `partyline-baseline`: the bare tokio-tungstenite broadcast server the benchmarks compare
//! Partyline with (see `partyline_bench::baseline`).

use std::net::SocketAddr;

use clap::Parser;

/// A minimal WebSocket broadcast server: the benchmarks' reference, not a product.
#[derive(Debug, Parser)]
#[command(name = "partyline-baseline", version, about, long_about = None)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 1998)]
    port: u16,
    /// Leave Nagle's algorithm on (no TCP_NODELAY) on client sockets: a diagnostic, to see
    /// what it does to latency.
    #[arg(long)]
    no_nodelay: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    partyline_bench::sys::raise_nofile_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("partyline-baseline: could not start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = partyline_bench::baseline::run(SocketAddr::new(cli.host, cli.port), !cli.no_nodelay) => r,
            _ = shutdown() => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("partyline-baseline: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
