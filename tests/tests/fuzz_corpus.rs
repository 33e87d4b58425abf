//! Replays the fuzz corpus (`fuzz/corpus/<target>`) and every crash the fuzzers found
//! (`fuzz/regressions/<target>`) through the same checks the fuzz targets run, so what was
//! found once stays fixed. `scripts/fuzz.sh` grows the corpus.

use std::path::PathBuf;

use partyline_tests::repo_root;

/// The inputs of one target: corpus and regressions, sorted by path.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = repo_root().join("fuzz").join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                out.push((path, data));
            }
        }
    }
    out.sort();
    out
}

fn replay(target: &str, check: impl Fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "fuzz/corpus/{target} is empty: run scripts/fuzz.sh {target}");
    for (path, data) in inputs {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data))).is_err() {
            panic!("{} fails the {target} check", path.display());
        }
    }
}

#[test]
fn route() {
    replay("route", partyline_gateway::fuzzing::route_and_query);
}

#[test]
fn addresses() {
    replay("addresses", partyline_gateway::fuzzing::addresses);
}

#[test]
fn wire() {
    replay("wire", partyline_node::fuzzing::wire);
}

#[test]
fn storage_keys() {
    replay("storage_keys", partyline_node::fuzzing::storage_keys);
}

#[test]
fn list_ranges() {
    let check = std::sync::Mutex::new(partyline_node::fuzzing::ListRanges::default());
    replay("list_ranges", |data| check.lock().unwrap_or_else(|p| p.into_inner()).check(data));
}

#[test]
fn yjs_batch() {
    replay("yjs_batch", partyline_yjs::fuzzing::batch);
}
