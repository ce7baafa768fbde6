//! `config::Config::parse` on arbitrary bytes: never panics, and a config it accepts can be
//! sent: every command of `commands()` renders with `Command::to_bytes`, they start with `dir`
//! and end with `bind`, and the limit commands, applied from the kernel's defaults in the
//! order given, each pass the kernel's range check and end at the configured values.
#![no_main]

use cachefilesd_rs::config::Config;
use cachefilesd_rs::proto::{Command, Limit};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// The kernel's check when a limit is written: `0 <= stop < cull < run < 100` per family,
/// against the values set at that moment.
fn kernel_accepts(state: &[u8; 6], limit: Limit, v: u8) -> bool {
    let at = |l: Limit| state[l as usize];
    match limit {
        Limit::Brun => v > at(Limit::Bcull) && v < 100,
        Limit::Bcull => v > at(Limit::Bstop) && v < at(Limit::Brun),
        Limit::Bstop => v < at(Limit::Bcull),
        Limit::Frun => v > at(Limit::Fcull) && v < 100,
        Limit::Fcull => v > at(Limit::Fstop) && v < at(Limit::Frun),
        Limit::Fstop => v < at(Limit::Fcull),
    }
}

fuzz_target!(|data: &[u8]| {
    let config = match Config::parse(Path::new("/etc/cachefilesd.conf"), data) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let commands = config.commands();
    for command in &commands {
        if let Err(e) = command.to_bytes() {
            panic!("accepted config gives an unsendable command {command:?}: {e}");
        }
    }
    assert!(matches!(commands.first(), Some(Command::Dir(_))));
    assert_eq!(
        commands.last(),
        Some(&Command::Bind {
            ondemand: config.ondemand.is_some()
        })
    );
    let mut state = Limit::ALL.map(Limit::kernel_default);
    for command in &commands {
        if let Command::Limit(limit, v) = *command {
            assert!(
                kernel_accepts(&state, limit, v),
                "the kernel would refuse {command} with limits {state:?}"
            );
            state[limit as usize] = v;
        }
    }
    assert_eq!(state, Limit::ALL.map(|l| config.limit(l)));
});
