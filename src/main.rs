//! cachefilesd, the cache daemon: parses the command line and hands over to `start::run`.
//!
//! Exit statuses are `exit::Exit` (0 clean stop, 1 OS error, 2 usage or config, 3 internal).

use cachefilesd_rs::cli::{self, Action};
use cachefilesd_rs::exit::Exit;
use cachefilesd_rs::start;
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let options = match cli::parse(std::env::args_os()) {
        Ok(Action::Run(o)) => o,
        Ok(Action::Version) => {
            println!(
                "cachefilesd version {} (cachefilesd-rs)",
                env!("CARGO_PKG_VERSION")
            );
            return Exit::Ok.into();
        }
        Ok(Action::Help) => {
            print!("{}", cli::USAGE);
            return Exit::Ok.into();
        }
        Err(e) => {
            eprintln!("cachefilesd: {e}\n{}", cli::USAGE);
            return Exit::Config.into();
        }
    };
    let logging = std::cell::Cell::new(false);
    match start::run(&options, &logging) {
        Ok(exit) => exit.into(),
        Err(e) => {
            if logging.get() {
                log::error!("{e}");
            }
            // Logging starts before the device is opened: an administrator starting the daemon
            // by hand still sees why it did not start.
            if !logging.get() || (!options.stderr && std::io::stderr().is_terminal()) {
                eprintln!("cachefilesd: {e}");
            }
            e.exit().into()
        }
    }
}
