//! cachefilesctl: offline inspection and maintenance of a cache directory (over `tools`).
//!
//! Commands: ls, du, check, prefill, invalidate, purge. Exit status: 0 ok, 1 problems found
//! or failure, 2 usage.

use cachefilesd_rs::tools::cli::{self, USAGE};
use std::process::ExitCode;

fn main() -> ExitCode {
    let invocation = match cli::parse(std::env::args_os().skip(1)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("cachefilesctl: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match cli::run(&invocation, &mut stdout).map_err(anyhow::Error::from) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cachefilesctl: {e:#}");
            ExitCode::from(1)
        }
    }
}
