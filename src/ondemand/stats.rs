//! Counters the engine keeps for the stats line, STATUS= and the control socket's report.

use std::time::Duration;

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub opens: u64,
    pub opens_failed: u64,
    pub reads: u64,
    pub reads_failed: u64,
    pub bytes_written: u64,
    pub closes: u64,
    pub bad_messages: u64,
    pub duplicates: u64,
    pub unknown_objects: u64,
    /// Readahead windows fetched apart from the READs they followed, once landed with
    /// something fetched (a window whose pages were all cached is not one).
    pub reads_ahead: u64,
    /// READs answered by a readahead window that was being fetched when they came.
    pub reads_joined: u64,
}

/// READ latency histogram: bucket i counts latencies below 2^(i+6) microseconds.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    buckets: [u64; 22],
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let i = (64 - us.leading_zeros() as usize)
            .saturating_sub(6)
            .min(self.buckets.len() - 1);
        self.buckets[i] += 1;
    }

    /// Upper bound of the bucket holding quantile `q`, in seconds; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some((1u64 << (i + 6)) as f64 / 1e6);
            }
        }
        None
    }
}

/// Per `[[source]]` entry: what was fetched through it.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    pub reads: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency: Latency,
}

#[cfg(test)]
mod tests {
    #[test]
    fn latency_quantiles() {
        let mut l = super::Latency::default();
        assert_eq!(l.quantile(0.5), None);
        for ms in [1u64, 1, 1, 1, 1, 1, 1, 1, 1, 200] {
            l.record(std::time::Duration::from_millis(ms));
        }
        // 1 ms lies in the bucket below 1.024 ms; 200 ms below 262 ms.
        assert_eq!(l.quantile(0.5), Some(0.001024));
        assert_eq!(l.quantile(0.99), Some(0.262144));
    }
}
