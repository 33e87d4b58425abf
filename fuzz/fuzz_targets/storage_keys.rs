//! Storage key encodings of the embedded store and the Redis layout.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| partyline_node::fuzzing::storage_keys(data));
