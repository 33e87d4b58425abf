//! The route and query parser: `/parties/:party/:room`, `/party/:room`, `?_pk=` and friends.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| partyline_gateway::fuzzing::route_and_query(data));
