//! The real npm `partysocket` client, run under Node against `partyline dev`. The checks live in
//! `tests/interop/partysocket.mjs`; `scripts/test.sh` installs its packages (`npm ci`).

use partyline_server::dev::DevConfig;
use partyline_test_macros::timed_test;
use partyline_tests::{run_partysocket_checks, DevServer};

#[timed_test]
async fn partysocket_works_against_dev() {
    let s = DevServer::start(DevConfig::default()).await;
    run_partysocket_checks(s.addr).await;
}
