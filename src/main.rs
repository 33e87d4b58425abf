//! The `partyline` binary with the example parties compiled in.

fn main() -> std::process::ExitCode {
    partyline_server::main_examples(partyline_examples::registry())
}
