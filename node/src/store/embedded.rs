//! placeholder: the embedded store (redb) is being written.
