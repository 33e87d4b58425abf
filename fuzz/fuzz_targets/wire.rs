//! The link protocol's protobuf decoding (gateway <-> node).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| partyline_node::fuzzing::wire(data));
