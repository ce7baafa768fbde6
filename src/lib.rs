//! cachefilesd-rs: a drop-in replacement for the Linux cachefilesd daemon.
//!
//! The map of the modules, threads and message flow is ARCHITECTURE.md at the top of the repo.

pub mod cachedir;
pub mod cli;
pub mod config;
pub mod control;
pub mod cull;
pub mod daemon;
pub mod device;
mod engine;
pub mod events;
pub mod exit;
pub mod fake;
pub mod live;
pub mod lock;
pub mod logging;
pub mod ondemand;
pub mod pidfile;
pub mod privilege;
pub mod proto;
pub mod reactor;
pub mod report;
pub mod rundir;
pub mod scrape;
pub mod service;
pub mod start;
pub mod supervise;
pub mod takeover;
pub mod tools;
