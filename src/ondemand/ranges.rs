//! The byte ranges of a blob's file known to hold the blob's bytes, so that the fanotify front
//! end answers an event from memory instead of asking the filesystem (SEEK_HOLE) each time.
//!
//! Only ever grows, and only with ranges seen in the file (SEEK_DATA/SEEK_HOLE) or written by
//! a fill that succeeded: a range it holds is in the file. Nothing but the daemon writes a
//! blob's file while it is attached, and nothing removes data from it (a resize happens only
//! before the mark, when the map is made).

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd};

/// At most this many separate runs are kept: a reader touching one byte in every few pages of
/// a large blob must not grow the map (and the SEEK_DATA walk at the next attach, on the loop
/// thread) without bound. What is left out is asked of the file (SEEK_HOLE) when needed.
pub const MAX_RUNS: usize = 16 << 10;

/// Disjoint, non-adjacent, non-empty half-open ranges `[start, end)`, by start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ranges {
    by_start: BTreeMap<u64, u64>,
}

impl Ranges {
    pub fn new() -> Ranges {
        Ranges::default()
    }

    /// What of the first `len` bytes of `fd` holds data (SEEK_DATA/SEEK_HOLE), in page-sized
    /// or larger runs as the filesystem reports them.
    pub fn of_file(fd: BorrowedFd<'_>, len: u64) -> Result<Ranges, Errno> {
        let mut ranges = Ranges::new();
        let mut pos = 0u64;
        while pos < len {
            let data = match lseek(fd.as_raw_fd(), off(pos)?, Whence::SeekData) {
                Ok(d) => d as u64,
                // No data at or after `pos`.
                Err(Errno::ENXIO) => break,
                Err(e) => return Err(e),
            };
            if data >= len {
                break;
            }
            let hole = lseek(fd.as_raw_fd(), off(data)?, Whence::SeekHole)? as u64;
            if hole <= data {
                // A filesystem that contradicts itself: trust nothing further.
                return Err(Errno::EIO);
            }
            let end = hole.min(len);
            if ranges.runs() >= MAX_RUNS {
                break;
            }
            ranges.insert(data, end);
            pos = end;
        }
        Ok(ranges)
    }

    /// Adds `[start, end)`, merging it with every range it overlaps or touches. An empty or
    /// reversed range adds nothing, and neither does one that would be a run beyond
    /// [`MAX_RUNS`] (the map may hold less than the file, never more).
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if self.by_start.len() >= MAX_RUNS && !self.touches(start, end) {
            return;
        }
        let (mut start, mut end) = (start, end);
        // The range starting at or before `start` absorbs the new one when it reaches it.
        if let Some((&s, &e)) = self.by_start.range(..=start).next_back() {
            if e >= start {
                if e >= end {
                    return;
                }
                start = s;
            }
        }
        // Every range starting inside or right at the end of the new one is merged into it.
        let swallowed: Vec<(u64, u64)> = self
            .by_start
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in swallowed {
            self.by_start.remove(&s);
            end = end.max(e);
        }
        self.by_start.insert(start, end);
    }

    /// Whether `[start, end)` overlaps or touches a held range (so adding it makes no new run).
    fn touches(&self, start: u64, end: u64) -> bool {
        let before = self.by_start.range(..=start).next_back();
        before.is_some_and(|(_, &e)| e >= start)
            || self.by_start.range(start..=end).next().is_some()
    }

    /// Whether all of `[start, end)` is held (an empty range is).
    pub fn contains(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        self.by_start
            .range(..=start)
            .next_back()
            .is_some_and(|(_, &e)| e >= end)
    }

    /// The end of the held range that `pos` lies in, if any.
    pub fn end_of_run(&self, pos: u64) -> Option<u64> {
        self.by_start
            .range(..=pos)
            .next_back()
            .filter(|(_, &e)| e > pos)
            .map(|(_, &e)| e)
    }

    /// Bytes held in all.
    pub fn covered(&self) -> u64 {
        self.by_start.iter().map(|(s, e)| e - s).sum()
    }

    /// How many separate ranges are held.
    pub fn runs(&self) -> usize {
        self.by_start.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_start.iter().map(|(&s, &e)| (s, e))
    }
}

fn off(pos: u64) -> Result<i64, Errno> {
    i64::try_from(pos).map_err(|_| Errno::EOVERFLOW)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn of(v: &[(u64, u64)]) -> Ranges {
        let mut r = Ranges::new();
        for &(s, e) in v {
            r.insert(s, e);
        }
        r
    }

    fn list(r: &Ranges) -> Vec<(u64, u64)> {
        r.iter().collect()
    }

    #[test]
    fn overlapping_and_touching_ranges_merge_and_gaps_stay() {
        let mut r = of(&[(10, 20), (30, 40)]);
        assert_eq!(list(&r), vec![(10, 20), (30, 40)]);
        assert!(!r.contains(15, 35), "the gap 20..30 is not held");
        assert!(!r.contains(19, 21));
        assert!(r.contains(10, 20) && r.contains(30, 40) && r.contains(12, 13));
        // Touching at both ends: one range.
        r.insert(20, 30);
        assert_eq!(list(&r), vec![(10, 40)]);
        // Inside: no change.
        r.insert(11, 39);
        assert_eq!(list(&r), vec![(10, 40)]);
        // Covering everything and more on both sides.
        r.insert(50, 60);
        r.insert(70, 80);
        r.insert(5, 75);
        assert_eq!(list(&r), vec![(5, 80)]);
        // Starting inside, ending past.
        r.insert(79, 100);
        assert_eq!(list(&r), vec![(5, 100)]);
        // Touching the start only.
        r.insert(0, 5);
        assert_eq!(list(&r), vec![(0, 100)]);
        assert_eq!(r.covered(), 100);
        assert!(!r.contains(0, 101));
        assert!(!r.contains(100, 101), "the byte at the end is not held");
    }

    #[test]
    fn empty_and_reversed_ranges_add_nothing() {
        let mut r = Ranges::new();
        r.insert(5, 5);
        r.insert(9, 3);
        assert_eq!(r.runs(), 0);
        assert!(r.contains(7, 7), "an empty range is held");
        assert!(!r.contains(0, 1));
        assert_eq!(r.end_of_run(0), None);
    }

    #[test]
    fn the_edges_of_u64_do_not_overflow() {
        let mut r = of(&[(u64::MAX - 10, u64::MAX)]);
        assert!(r.contains(u64::MAX - 1, u64::MAX));
        assert!(!r.contains(u64::MAX - 11, u64::MAX));
        r.insert(0, u64::MAX - 10);
        assert_eq!(list(&r), vec![(0, u64::MAX)]);
        assert!(r.contains(0, u64::MAX));
        assert_eq!(r.covered(), u64::MAX);
        assert_eq!(r.end_of_run(u64::MAX - 1), Some(u64::MAX));
        assert_eq!(r.end_of_run(u64::MAX), None);
        let mut r = of(&[(0, 1)]);
        r.insert(u64::MAX - 1, u64::MAX);
        assert_eq!(list(&r), vec![(0, 1), (u64::MAX - 1, u64::MAX)]);
    }

    #[test]
    fn end_of_run_is_the_end_of_the_range_holding_the_byte() {
        let r = of(&[(10, 20), (30, 40)]);
        assert_eq!(r.end_of_run(10), Some(20));
        assert_eq!(r.end_of_run(19), Some(20));
        assert_eq!(r.end_of_run(20), None);
        assert_eq!(r.end_of_run(9), None);
        assert_eq!(r.end_of_run(35), Some(40));
    }

    #[test]
    fn a_files_data_is_read_from_seek_data_and_seek_hole() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        let mb = 1u64 << 20;
        f.set_len(8 * mb).unwrap();
        assert_eq!(
            Ranges::of_file(f.as_fd(), 8 * mb).unwrap().runs(),
            0,
            "a new sparse file holds nothing"
        );
        f.write_all_at(&vec![1u8; mb as usize], mb).unwrap();
        f.write_all_at(&vec![2u8; mb as usize], 4 * mb).unwrap();
        f.write_all_at(&vec![3u8; 4096], 8 * mb - 4096).unwrap();
        let r = Ranges::of_file(f.as_fd(), 8 * mb).unwrap();
        // Filesystems report data in their own block sizes: what is held covers what was
        // written and never the untouched middles of the holes.
        for (s, e) in [(mb, 2 * mb), (4 * mb, 5 * mb), (8 * mb - 4096, 8 * mb)] {
            assert!(r.contains(s, e), "{s}..{e} in {r:?}");
        }
        for (s, e) in [(0, 4096), (3 * mb, 3 * mb + 4096), (6 * mb, 6 * mb + 4096)] {
            assert!(!r.contains(s, e), "{s}..{e} in {r:?}");
        }
        // Only up to `len`.
        let short = Ranges::of_file(f.as_fd(), mb + 4096).unwrap();
        assert_eq!(list(&short), vec![(mb, mb + 4096)]);
    }

    proptest! {
        /// Against a bitmap over a small space: after any inserts, `contains` agrees with it
        /// for every range, and the ranges are disjoint, non-adjacent and non-empty.
        #[test]
        fn agrees_with_a_bitmap(inserts in prop::collection::vec((0u64..64, 0u64..64), 0..12)) {
            let mut r = Ranges::new();
            let mut bits = [false; 64];
            for &(s, e) in &inserts {
                r.insert(s, e);
                for b in bits.iter_mut().take(e.min(64) as usize).skip(s as usize) {
                    *b = true;
                }
            }
            for s in 0..64u64 {
                for e in s + 1..=64 {
                    let want = (s..e).all(|i| bits[i as usize]);
                    prop_assert_eq!(r.contains(s, e), want, "{}..{} {:?}", s, e, r);
                }
            }
            let v = list(&r);
            for w in v.windows(2) {
                prop_assert!(w[0].1 < w[1].0, "{:?}", v);
            }
            prop_assert!(v.iter().all(|(s, e)| s < e));
            prop_assert_eq!(r.covered(), bits.iter().filter(|b| **b).count() as u64);
        }
    }

    #[test]
    fn a_hostile_pattern_cannot_grow_the_map_past_its_cap() {
        let mut r = Ranges::new();
        for i in 0..(MAX_RUNS as u64 + 100) {
            r.insert(i * 8192, i * 8192 + 1);
        }
        assert_eq!(r.runs(), MAX_RUNS);
        // Past the cap a range that extends or joins held runs is still taken...
        r.insert(1, 8192);
        assert!(r.contains(0, 8193));
        assert_eq!(r.runs(), MAX_RUNS - 1);
        // ...one that would be a run of its own is not, and nothing unheld is claimed.
        let far = (MAX_RUNS as u64 + 200) * 8192;
        r.insert(far, far + 10);
        r.insert(far + 20, far + 30);
        assert!(!r.contains(far + 20, far + 30));
        assert!(r.runs() <= MAX_RUNS);
    }
}
