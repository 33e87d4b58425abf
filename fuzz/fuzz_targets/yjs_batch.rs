//! The Yjs party's `y-pk-batch#` reassembly: frames into a `Reassembler`, checked against a model.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| partyline_yjs::fuzzing::batch(data));
