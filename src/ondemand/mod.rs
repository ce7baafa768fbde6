//! On-demand mode: the front-end-neutral lazy-fill engine and its kernel front ends.
//!
//! Every request the kernel waits on is answered exactly once, whatever the source does.
//!
//! Layers, bottom up:
//! - `sourcemap`, `sources`: which blob serves a name, and reading it (local, HTTP, registry).
//! - `fill`: page-aligned writes of a blob's bytes into a cache file, with readahead.
//! - `readahead`: per object, how far beyond each READ to fetch (grows while sequential).
//! - `fds`: the table of kernel fds the engine owns (each owned once).
//! - `reply`: pending replies that answer exactly once, and the `FrontEnd` trait.
//! - `pool`: worker threads for opening and fetching (a panicking job is caught), and the
//!   background lane prefetch runs on.
//! - `prefetch`: background filling of whole blobs or ranges after OPEN, under a rate cap.
//! - `engine`: the state machine (objects, requests in flight) that ties them together.
//! - `stats`: counters and latency histograms for the report.
//! - `cachefiles`: the front end for `/dev/cachefiles` in `bind ondemand` mode (OPEN, READ,
//!   CLOSE; `copen`, READ_COMPLETE).
//! - `fanotify`: the front end for kernels without on-demand cachefiles (7.2+): a sparse file
//!   per attached blob with a FAN_PRE_ACCESS mark; events answered FAN_ALLOW once filled, or
//!   FAN_DENY with EIO.
//! - `ranges`: the ranges of a blob's file known to hold its bytes (the fanotify front end's
//!   answer to an event, without a system call).
//! - `inflight`: the fanotify front end's record of attached blobs and events in flight, which
//!   a successor adopting the kept group answers.
//!
//! Adding a front end: implement `reply::FrontEnd` for a new type with tickets that carry
//! what its answer needs, and give `Engine<ThatType>` a method that reads the kernel's events
//! and calls `open`/`read`/`close` with replies from `open_reply`/`read_reply`, as
//! `cachefiles.rs` and `fanotify.rs` do. The engine, pools, fill code and replies stay as
//! they are.

pub mod cachefiles;
pub mod engine;
pub mod fanotify;
pub mod fds;
pub mod fill;
pub mod inflight;
mod pool;
pub mod prefetch;
pub mod ranges;
pub mod readahead;
pub mod reply;
pub mod sourcemap;
pub mod sources;
pub mod stats;

pub use engine::{Engine, Object, OpenRequest, Opener};
pub use fill::serve_read;
pub use stats::{Latency, SourceStats, Stats};

/// The engine behind `/dev/cachefiles` (what the daemon runs in on-demand mode).
pub type OnDemand = Engine<cachefiles::Cachefiles>;
