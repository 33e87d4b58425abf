//! `list` ranges: the embedded and memory stores against a plain model.
#![no_main]
use std::sync::{LazyLock, Mutex};

use partyline_node::fuzzing::ListRanges;

static CHECK: LazyLock<Mutex<ListRanges>> = LazyLock::new(Mutex::default);

libfuzzer_sys::fuzz_target!(|data: &[u8]| CHECK.lock().unwrap_or_else(|p| p.into_inner()).check(data));
