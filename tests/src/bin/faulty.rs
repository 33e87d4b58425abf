//! `partyline-faulty`: the `partyline` binary with the test parties
//! ([`partyline_tests::parties`]: `faulty`, `yjs-auth`) beside the example parties, for process
//! fault tests that need a room misbehaving on purpose, e.g. a handler that sleeps through a
//! drain (`slow <ms> <text>`; `tests/tests/drains.rs`). Same commands and flags as `partyline`.

fn main() -> std::process::ExitCode {
    partyline_server::main_examples(partyline_tests::all_parties())
}
