//! Storage backends for rooms: the embedded on-disk store for `partyline dev`.

pub mod embedded;

pub use embedded::EmbeddedStore;
