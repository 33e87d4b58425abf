//! Compiles `partyline.proto` with protox (pure Rust), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=partyline.proto");
    let fds = protox::compile(["partyline.proto"], ["."])?;
    tonic_prost_build::configure().bytes(".").build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
