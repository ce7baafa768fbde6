//! The exit statuses of cachefilesd, shared by the daemon and its `--supervise` parent.
//!
//! The parent reads its worker's status to decide whether a restart can help.

/// 0 on a clean stop, 1 for an OS error (including a dead cache), 2 for a usage or config
/// error, 3 for an internal error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    Os,
    Config,
    Internal,
}

impl Exit {
    pub const ALL: [Exit; 4] = [Exit::Ok, Exit::Os, Exit::Config, Exit::Internal];

    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Os => 1,
            Exit::Config => 2,
            Exit::Internal => 3,
        }
    }

    /// The status a process exited with, if it is one of ours (a panic exits with 101).
    pub fn from_code(code: i32) -> Option<Exit> {
        Exit::ALL.into_iter().find(|e| i32::from(e.code()) == code)
    }

    /// Whether restarting a worker that exited so can help: a clean stop needs none, and
    /// config and OS errors (a dead cache among them) are not cured by a restart.
    pub fn worth_a_restart(self) -> bool {
        self == Exit::Internal
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> std::process::ExitCode {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_only_internal_errors_are_retried() {
        for e in Exit::ALL {
            assert_eq!(Exit::from_code(e.code().into()), Some(e));
        }
        assert_eq!(Exit::from_code(101), None);
        assert_eq!(
            Exit::ALL.map(Exit::worth_a_restart),
            [false, false, false, true]
        );
    }
}
