//! The kernel's /dev/cachefiles wire formats, as pure functions over bytes.
//!
//! No fds, no I/O, no logging, so that every parser here can be fuzzed and golden-tested.

pub mod command;
pub mod fanotify;
pub mod msg;
pub mod status;

pub use command::{Command, CommandError, Limit};
pub use msg::{DecodeError, Request};
pub use status::{Status, StatusError};
