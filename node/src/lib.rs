//! Partyline owner node: hosts room instances, their storage and alarms.

pub mod store;
