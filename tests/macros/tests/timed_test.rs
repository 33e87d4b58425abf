//! `#[timed_test]` in use: a test that hangs fails at its limit with its name and the limit in
//! the message (in real and in paused tokio time), and everything else behaves as under
//! `#[tokio::test]`.

use std::time::Duration;

use partyline_test_macros::timed_test;
use tokio::runtime::{Handle, RuntimeFlavor};

#[timed_test(secs = 1)]
#[should_panic(expected = "test timed_test::a_hanging_test_fails_at_its_limit exceeded its 1 s limit")]
async fn a_hanging_test_fails_at_its_limit() {
    std::future::pending::<()>().await;
}

#[timed_test(start_paused = true, secs = 1)]
#[should_panic(expected = "test timed_test::the_limit_is_wall_clock_time_in_paused_time exceeded its 1 s limit")]
async fn the_limit_is_wall_clock_time_in_paused_time() {
    std::future::pending::<()>().await;
}

#[timed_test(start_paused = true, secs = 30)]
async fn virtual_time_does_not_count_against_the_limit() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[timed_test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_arguments_are_passed_on() {
    assert_eq!(Handle::current().runtime_flavor(), RuntimeFlavor::MultiThread);
    assert_eq!(Handle::current().metrics().num_workers(), 2);
}

#[timed_test]
async fn a_test_may_return_a_result_and_use_question_marks() -> Result<(), std::num::ParseIntError> {
    let n: u32 = "7".parse()?;
    assert_eq!(n, 7);
    Ok(())
}
