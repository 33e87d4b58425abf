//! Client addresses from trusted proxies' forwarded headers.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| partyline_gateway::fuzzing::addresses(data));
