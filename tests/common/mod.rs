//! Setup shared by the integration tests and the benches. The benches include this file with
//! `#[path = "../tests/common/mod.rs"] mod common;` because a bench target cannot import an
//! integration test crate.

// Every test crate and bench that includes this module uses only some of its helpers; the
// others would be reported as dead code in that crate.
#![allow(dead_code)]

pub mod fake_daemon;
pub mod fanotify;
pub mod servers;
