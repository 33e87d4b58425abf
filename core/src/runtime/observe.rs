//! What the room runtime reports about its own work, for whoever hosts it to turn into metrics:
//! how long each event took to handle (a message, a connect, a request, an alarm, ...) and how
//! many alarms fired. The runtime also opens a `tracing` span per room and per handled event.

use std::time::Duration;

/// Receives the room runtime's reports. Called on the room's task: keep it cheap (an atomic
/// add, a histogram observation).
pub trait RoomObserver: Send + Sync + 'static {
    /// One event handled, and the time it took, party handlers and storage reads included.
    /// `event` is one of `connect`, `message`, `close`, `request`, `alarm`, `open_link`,
    /// `close_link`.
    fn event_handled(&self, event: &'static str, elapsed: Duration);
    /// A room's `on_alarm` ran (whatever its outcome).
    fn alarm_fired(&self);
}
