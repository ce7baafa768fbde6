//! The cull signal, pure: when to cull and how much, from the status line or from statfs.
//!
//! Testable without a filesystem. In classic mode the kernel decides and says so in its status
//! line; on demand it only hints (the device turns writable), so the daemon decides from
//! statfs with the kernel's own hysteresis.

use super::Deficit;
use crate::proto::{Limit, Status};

/// The cache filesystem's counts, as statfs reports them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    /// Free blocks for unprivileged users: what the kernel's limits are checked against.
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

impl Space {
    /// The filesystem holding `file`; `None` when statfs fails.
    pub fn of(file: &std::fs::File) -> Option<Space> {
        let st = nix::sys::statfs::fstatfs(file).ok()?;
        Some(Space {
            block_size: st.block_size() as u64,
            blocks: st.blocks(),
            blocks_free: st.blocks_free(),
            blocks_available: st.blocks_available(),
            files: st.files(),
            files_free: st.files_free(),
        })
    }

    /// A limit as the kernel computes it from the percentage (total / 100 * pct): blocks (of
    /// `block_size`) or files.
    pub fn limit_count(&self, limit: Limit, percent: u8) -> u64 {
        let total = match limit {
            Limit::Brun | Limit::Bcull | Limit::Bstop => self.blocks,
            Limit::Frun | Limit::Fcull | Limit::Fstop => self.files,
        };
        total / 100 * u64::from(percent)
    }

    /// What must be freed to get above `brun` blocks and `frun` files.
    pub fn deficit(&self, brun: u64, frun: u64) -> Deficit {
        let used_files = self.files.saturating_sub(self.files_free).max(1);
        let used_bytes = self
            .blocks
            .saturating_sub(self.blocks_free)
            .saturating_mul(self.block_size);
        Deficit {
            bytes: brun
                .saturating_sub(self.blocks_available)
                .saturating_mul(self.block_size),
            files: frun.saturating_sub(self.files_free),
            fs_average_object: used_bytes / used_files,
        }
    }
}

/// Whether culling is wanted, and against which run limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CullSignal {
    /// Classic mode: the kernel's last status line.
    StatusLine(Status),
    /// On demand: the configured percentages (indexed by `Limit`) and the current decision.
    Statfs { limits: [u8; 6], culling: bool },
}

impl CullSignal {
    pub fn culling(&self) -> bool {
        match self {
            CullSignal::StatusLine(status) => status.cull,
            CullSignal::Statfs { culling, .. } => *culling,
        }
    }

    /// Takes a status line the kernel sent (classic mode); true if the decision changed.
    pub fn on_status(&mut self, status: Status) -> bool {
        let was = self.culling();
        if let CullSignal::StatusLine(s) = self {
            *s = status;
        }
        was != self.culling()
    }

    /// Re-decides from the free space (on demand), as the kernel does: start below either cull
    /// limit, stop once both counts are at or above their run limits. True if it changed.
    pub fn on_space(&mut self, space: &Space) -> bool {
        let CullSignal::Statfs { limits, culling } = self else {
            return false;
        };
        let count = |l: Limit| space.limit_count(l, limits[l as usize]);
        let was = *culling;
        if space.blocks_available < count(Limit::Bcull) || space.files_free < count(Limit::Fcull) {
            *culling = true;
        } else if space.blocks_available >= count(Limit::Brun)
            && space.files_free >= count(Limit::Frun)
        {
            *culling = false;
        }
        was != *culling
    }

    /// The kernel's hint that it wants culling (the device polls writable, on demand only):
    /// culling starts now, and stops when statfs says the run limits are reached. The kernel
    /// clears its flag only at its next write once space is back, so a hint while `space`
    /// (when known) is at or above both run limits is stale and ignored: it would cull for
    /// nothing.
    pub fn on_kernel_hint(&mut self, space: Option<&Space>) -> bool {
        let CullSignal::Statfs { limits, culling } = self else {
            return false;
        };
        if *culling {
            return false;
        }
        if let Some(space) = space {
            let count = |l: Limit| space.limit_count(l, limits[l as usize]);
            if space.blocks_available >= count(Limit::Brun)
                && space.files_free >= count(Limit::Frun)
            {
                return false;
            }
        }
        *culling = true;
        true
    }

    /// What culling must free to get above both run limits (zero when not short). In classic
    /// mode against the run limits of the status line: those decide when the kernel stops
    /// asking.
    pub fn deficit(&self, space: &Space) -> Deficit {
        let (brun, frun) = match self {
            CullSignal::StatusLine(s) => (s.brun, s.frun),
            CullSignal::Statfs { limits, .. } => (
                space.limit_count(Limit::Brun, limits[Limit::Brun as usize]),
                space.limit_count(Limit::Frun, limits[Limit::Frun as usize]),
            ),
        };
        space.deficit(brun, frun)
    }

    /// The most culling can have to free when the kernel asks: from the stop limits (below
    /// them the kernel refuses to write to the cache) up to the run limits, or the current
    /// deficit if larger. A table scanned ahead of time this large lets culling run to the
    /// end without a scan, however far under the cull limits a writer pushed the cache.
    pub fn warm_deficit(&self, space: &Space) -> Deficit {
        let (brun, bstop, frun, fstop) = match self {
            CullSignal::StatusLine(s) => (s.brun, s.bstop, s.frun, s.fstop),
            CullSignal::Statfs { limits, .. } => {
                let count = |l: Limit| space.limit_count(l, limits[l as usize]);
                (
                    count(Limit::Brun),
                    count(Limit::Bstop),
                    count(Limit::Frun),
                    count(Limit::Fstop),
                )
            }
        };
        let now = self.deficit(space);
        Deficit {
            bytes: brun
                .saturating_sub(bstop)
                .saturating_mul(space.block_size)
                .max(now.bytes),
            files: frun.saturating_sub(fstop).max(now.files),
            fs_average_object: now.fs_average_object,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1000 blocks of 4 KiB and 1000 files; `avail` blocks and `ffree` files free.
    fn space(avail: u64, ffree: u64) -> Space {
        Space {
            block_size: 4096,
            blocks: 1000,
            blocks_free: avail,
            blocks_available: avail,
            files: 1000,
            files_free: ffree,
        }
    }

    /// run 10%, cull 7%, stop 3% for blocks and files.
    fn statfs_signal() -> CullSignal {
        CullSignal::Statfs {
            limits: [10, 7, 3, 10, 7, 3],
            culling: false,
        }
    }

    #[test]
    fn statfs_culls_below_cull_and_stops_only_above_run() {
        let mut s = statfs_signal();
        assert!(
            !s.on_space(&space(80, 500)),
            "between cull and run: stays idle"
        );
        assert!(!s.culling());
        assert!(s.on_space(&space(69, 500)), "below bcull (70 blocks)");
        assert!(s.culling());
        assert!(
            !s.on_space(&space(80, 500)),
            "between cull and run: keeps culling"
        );
        assert!(s.culling());
        assert!(!s.on_space(&space(100, 99)), "files still below frun");
        assert!(s.on_space(&space(100, 100)), "both at run: stops");
        assert!(!s.culling());
        assert!(s.on_space(&space(500, 69)), "files below fcull");
    }

    #[test]
    fn the_kernel_hint_starts_statfs_culling_until_run_is_reached() {
        let mut s = statfs_signal();
        assert!(
            s.on_kernel_hint(Some(&space(90, 500))),
            "between cull and run"
        );
        assert!(!s.on_kernel_hint(None), "already culling");
        assert!(!s.on_space(&space(90, 500)));
        assert!(s.culling());
        assert!(s.on_space(&space(100, 500)));
        // Space is back: the kernel's flag is stale until its next write.
        assert!(!s.on_kernel_hint(Some(&space(100, 500))));
        assert!(!s.culling());
        assert!(s.on_kernel_hint(Some(&space(500, 99))), "files below frun");
        let mut s = statfs_signal();
        assert!(
            s.on_kernel_hint(None),
            "without statfs the kernel is believed"
        );
    }

    #[test]
    fn the_status_line_decides_in_classic_mode() {
        let mut s = CullSignal::StatusLine(Status::default());
        let wants = Status {
            cull: true,
            brun: 100,
            frun: 10,
            ..Status::default()
        };
        assert!(s.on_status(wants));
        assert!(!s.on_status(wants));
        // Neither statfs nor the hint override the kernel.
        assert!(!s.on_space(&space(1000, 1000)));
        assert!(!s.on_kernel_hint(None));
        assert!(s.culling());
        assert!(s.on_status(Status::default()));
    }

    #[test]
    fn the_deficit_is_counted_against_the_run_limits() {
        let classic = CullSignal::StatusLine(Status {
            cull: true,
            brun: 100,
            frun: 10,
            ..Status::default()
        });
        let d = classic.deficit(&space(40, 4));
        assert_eq!((d.bytes, d.files), (60 * 4096, 6));
        // 960 blocks in 996 files: just under a block per object.
        assert_eq!(d.fs_average_object, 960 * 4096 / 996);
        let ondemand = statfs_signal();
        let d = ondemand.deficit(&space(40, 4));
        assert_eq!((d.bytes, d.files), (60 * 4096, 96));
        assert_eq!(
            ondemand.deficit(&space(500, 500)),
            Deficit {
                fs_average_object: 500 * 4096 / 500,
                ..Deficit::default()
            }
        );
    }

    #[test]
    fn the_warm_deficit_is_the_gap_between_the_stop_and_run_limits() {
        let classic = CullSignal::StatusLine(Status {
            brun: 100,
            bcull: 70,
            bstop: 30,
            frun: 10,
            fcull: 7,
            fstop: 3,
            ..Status::default()
        });
        let d = classic.warm_deficit(&space(500, 500));
        assert_eq!((d.bytes, d.files), (70 * 4096, 7));
        // Already short by more than the gap (the stop limits were lowered): the deficit.
        let d = classic.warm_deficit(&space(20, 500));
        assert_eq!((d.bytes, d.files), (80 * 4096, 7));
        let ondemand = statfs_signal();
        let d = ondemand.warm_deficit(&space(500, 500));
        assert_eq!((d.bytes, d.files), (70 * 4096, 70));
        assert_eq!(d.fs_average_object, 500 * 4096 / 500);
    }

    #[test]
    fn limits_are_counted_as_the_kernel_does() {
        let s = Space {
            blocks: 1099,
            files: 50,
            ..Space::default()
        };
        // 1099 / 100 * 7, not 1099 * 7 / 100.
        assert_eq!(s.limit_count(Limit::Bcull, 7), 70);
        assert_eq!(s.limit_count(Limit::Frun, 10), 0);
    }
}
