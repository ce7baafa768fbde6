//! Adaptive readahead, pure: per object, what to fetch beyond each READ, in the background.
//!
//! Modelled on the kernel's own (mm/readahead.c): a READ that continues a stream (starts
//! inside or at the end of what was already fetched for it) grows that stream's window — 2×
//! or 4× the request at first, then doubling up to the maximum (`[fetch] readahead`); a READ
//! that continues nothing is served as asked, with no readahead, so random small reads do not
//! each pull megabytes across the network. Several streams are followed per object (two
//! files of one image read at once), the least recently used replaced first.
//!
//! The window is fetched apart from the READ, which is answered once its own range is
//! written: the reader reads that while the window is being fetched. Ranges already written
//! are not asked for again by the kernel (they are cached), so a READ that starts inside the
//! stream's fetched range means the reader caught up with a window still being fetched: the
//! next window starts then (the kernel's asynchronous readahead at its PG_readahead mark), so a
//! reader faster than the source always has one window being fetched beyond the one it waits
//! for. READs the kernel has in flight together
//! may come out of order or overlap; one earlier in the range is served as asked.

/// Streams followed per object: more concurrent sequential readers of one blob than this
/// evict each other and fall back to reading as asked.
const STREAMS: usize = 8;

/// One sequential reader of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stream {
    /// Where the last READ that moved the stream began.
    start: u64,
    /// The end of everything fetched (or being fetched) for this stream.
    end: u64,
    /// Readahead of the last READ that moved the stream (0 until it is seen to be sequential).
    window: u64,
    /// For LRU replacement.
    used: u64,
}

/// The readahead state of one open object.
#[derive(Debug, Clone)]
pub struct Readahead {
    max: u64,
    streams: Vec<Stream>,
    clock: u64,
}

const PAGE: u64 = 4096;

impl Readahead {
    /// `max`: the largest window, bytes (0: never read ahead).
    pub fn new(max: u64) -> Readahead {
        Readahead {
            max,
            streams: Vec::new(),
            clock: 0,
        }
    }

    /// Takes a READ of `[off, off+len)` and returns the range `[start, end)` to fetch in the
    /// background for it, if any.
    pub fn on_read(&mut self, off: u64, len: u64) -> Option<(u64, u64)> {
        self.clock += 1;
        let end = off.saturating_add(len);
        // The stream this READ continues: it starts inside or at the end of what was fetched
        // since the stream's last move (not before it: backwards is not sequential).
        let hit = self
            .streams
            .iter()
            .position(|s| off >= s.start && off <= s.end);
        let Some(i) = hit else {
            self.start_stream(off, end);
            return None;
        };
        let max = self.max;
        let s = &mut self.streams[i];
        s.used = self.clock;
        let start = if end <= s.end {
            // Inside what is being fetched for the stream: a reader into the last window moves
            // it on, once (the move puts the last window a whole window further).
            if s.window == 0 || s.end - end >= s.window {
                return None;
            }
            s.end
        } else {
            end
        };
        let window = if s.window == 0 {
            initial_window(len, max)
        } else {
            next_window(s.window, max)
        };
        if window == 0 {
            return None;
        }
        s.start = off;
        s.window = window;
        s.end = start.saturating_add(window);
        Some((start, s.end))
    }

    /// A READ that continues no stream: remembered (the next READ may continue it), served
    /// as asked.
    fn start_stream(&mut self, off: u64, end: u64) {
        let fresh = Stream {
            start: off,
            end,
            window: 0,
            used: self.clock,
        };
        if self.streams.len() < STREAMS {
            self.streams.push(fresh);
        } else if let Some(oldest) = self.streams.iter_mut().min_by_key(|s| s.used) {
            *oldest = fresh;
        }
    }
}

/// The first window of a stream seen to be sequential (get_init_ra_size): 4× a small request,
/// 2× a medium one, else the maximum; whole pages.
fn initial_window(len: u64, max: u64) -> u64 {
    let req = len
        .max(PAGE)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX);
    let w = if req <= max / 32 {
        req * 4
    } else if req <= max / 4 {
        req * 2
    } else {
        max
    };
    w.min(max) / PAGE * PAGE
}

/// The window after `cur` (get_next_ra_size): 4× while small, then 2×, up to the maximum.
fn next_window(cur: u64, max: u64) -> u64 {
    let w = if cur < max / 16 {
        cur.saturating_mul(4)
    } else {
        cur.saturating_mul(2)
    };
    w.min(max) / PAGE * PAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    /// Reads `[off, off+len)` as the kernel would when each window lands before the reader
    /// gets there: the next READ starts where the fetched range ends. Returns the windows.
    fn sequential(r: &mut Readahead, mut off: u64, len: u64, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| match r.on_read(off, len) {
                Some((start, end)) => {
                    assert_eq!(start, off + len, "a window starts where its READ ends");
                    off = end;
                    end - start
                }
                None => {
                    off += len;
                    0
                }
            })
            .collect()
    }

    #[test]
    fn sequential_reads_grow_the_window_up_to_the_maximum() {
        let mut r = Readahead::new(2 * MIB);
        let got = sequential(&mut r, 0, 128 * KIB, 7);
        // First READ: nothing known yet; then 2x the request, doubling, capped at 2 MiB.
        assert_eq!(
            got,
            vec![0, 256 * KIB, 512 * KIB, MIB, 2 * MIB, 2 * MIB, 2 * MIB]
        );
        let mut small = Readahead::new(2 * MIB);
        let got = sequential(&mut small, 0, 4 * KIB, 6);
        // A small request starts at 4x and grows 4x while under a sixteenth of the max.
        assert_eq!(got, vec![0, 16 * KIB, 64 * KIB, 256 * KIB, 512 * KIB, MIB]);
    }

    #[test]
    fn the_maximum_is_respected_whatever_the_request() {
        for max in [0, 4 * KIB, 128 * KIB, 2 * MIB, 64 * MIB] {
            for len in [4 * KIB, 128 * KIB, 4 * MIB] {
                let mut r = Readahead::new(max);
                for ra in sequential(&mut r, 8192, len, 20) {
                    assert!(ra <= max, "max {max} len {len}: {ra}");
                    assert_eq!(ra % PAGE, 0);
                }
            }
        }
        let mut r = Readahead::new(2 * MIB);
        assert_eq!(
            *sequential(&mut r, 0, 128 * KIB, 10).last().unwrap(),
            2 * MIB
        );
    }

    #[test]
    fn random_reads_are_served_as_asked() {
        let mut r = Readahead::new(2 * MIB);
        // A fixed pseudo-random walk over 1 GiB, 4 KiB each: none continues another.
        let mut x: u64 = 12345;
        let mut total = 0;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 20) % (1 << 30) / PAGE * PAGE;
            total += r
                .on_read(off, 4 * KIB)
                .map_or(0, |(start, end)| end - start);
        }
        assert_eq!(total, 0, "bytes of readahead for random reads");
    }

    #[test]
    fn a_random_read_collapses_to_the_asked_range_and_a_new_stream_starts_small() {
        let mut r = Readahead::new(2 * MIB);
        let got = sequential(&mut r, 0, 128 * KIB, 6);
        assert_eq!(*got.last().unwrap(), 2 * MIB);
        assert_eq!(r.on_read(700 * MIB, 128 * KIB), None, "a jump: as asked");
        // Sequential from there: grows again from the initial window, not from 2 MiB.
        assert_eq!(
            r.on_read(700 * MIB + 128 * KIB, 128 * KIB),
            Some((700 * MIB + 256 * KIB, 700 * MIB + 512 * KIB))
        );
    }

    #[test]
    fn interleaved_streams_each_grow() {
        let mut r = Readahead::new(2 * MIB);
        let (mut a, mut b) = (0u64, 512 * MIB);
        let mut last = (0, 0);
        let read = |r: &mut Readahead, off: &mut u64| match r.on_read(*off, 128 * KIB) {
            Some((start, end)) => {
                *off = end;
                end - start
            }
            None => {
                *off += 128 * KIB;
                0
            }
        };
        for _ in 0..6 {
            last = (read(&mut r, &mut a), read(&mut r, &mut b));
        }
        assert_eq!(last, (2 * MIB, 2 * MIB));
        // More streams than are followed: the oldest is dropped, the newest kept.
        for i in 0..STREAMS as u64 {
            r.on_read((100 + i) * MIB, 4 * KIB);
        }
        assert_eq!(r.on_read(a, 128 * KIB), None, "stream a was evicted");
        assert_eq!(
            r.on_read(107 * MIB + 4 * KIB, 4 * KIB),
            Some((107 * MIB + 8 * KIB, 107 * MIB + 24 * KIB))
        );
    }

    #[test]
    fn a_reader_that_caught_up_starts_the_next_window_once() {
        let mut r = Readahead::new(2 * MIB);
        assert_eq!(r.on_read(0, 128 * KIB), None);
        assert_eq!(
            r.on_read(128 * KIB, 128 * KIB),
            Some((256 * KIB, 512 * KIB))
        );
        // A READ inside [256K, 512K): that window is still being fetched and the reader is
        // waiting for it, so the next one starts now, beyond it.
        assert_eq!(r.on_read(256 * KIB, 128 * KIB), Some((512 * KIB, MIB)));
        // More READs the kernel had in flight in the older window: as asked.
        assert_eq!(r.on_read(384 * KIB, 128 * KIB), None);
        assert_eq!(r.on_read(448 * KIB, 64 * KIB), None);
        // Caught up again, in the newest window: the next one.
        assert_eq!(r.on_read(640 * KIB, 128 * KIB), Some((MIB, 2 * MIB)));
        // The READ after the windows landed, at the fetched end, continues the stream.
        assert_eq!(
            r.on_read(2 * MIB, 128 * KIB),
            Some((2 * MIB + 128 * KIB, 4 * MIB + 128 * KIB))
        );
        // A READ behind the stream's last move is not sequential.
        assert_eq!(r.on_read(64 * KIB, 128 * KIB), None);
    }

    #[test]
    fn readahead_zero_never_reads_ahead() {
        let mut r = Readahead::new(0);
        assert!(sequential(&mut r, 0, 128 * KIB, 10).iter().all(|&x| x == 0));
        assert_eq!(r.on_read(4 * KIB, 4 * KIB), None);
    }
}
