//! Measurement helpers for Hangar's benchmarks: latency summaries and memory readings from
//! `/proc`, as plain functions over numbers and text so they are tested without a machine
//! to measure.
//!
//! The benchmarks themselves are the binaries of this crate (`sandbox-bench`). Each prints
//! one JSON document on stdout that names the peers it ran beside and their versions;
//! progress goes to stderr. `BENCHMARKS.md` at the repository root records the results.

use serde_json::{Value, json};

/// A latency sample summarized, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
}

impl Summary {
    /// Summarizes `samples` (milliseconds); `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            n: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// The summary as a JSON object, values rounded to microseconds.
    pub fn to_json(&self) -> Value {
        json!({
            "n": self.n,
            "p50_ms": round3(self.p50),
            "p90_ms": round3(self.p90),
            "p99_ms": round3(self.p99),
            "mean_ms": round3(self.mean),
            "min_ms": round3(self.min),
            "max_ms": round3(self.max),
        })
    }
}

/// The nearest-rank percentile `p` (0–100] of an ascending, non-empty sample: the smallest
/// value with at least `p`% of the sample at or below it. No interpolation, so the result
/// is always a measured value.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to three decimals (microseconds, for milliseconds).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One `Key:   1234 kB` value of `/proc/meminfo` (or `/proc/PID/status`), in KiB.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, rest) = line.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident and proportional set sizes of one process, from `/proc/PID/smaps_rollup`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Resident set size, KiB: every page mapped, shared or not.
    pub rss_kib: u64,
    /// Proportional set size, KiB: shared pages divided among their sharers, so a sum over
    /// processes counts each page once.
    pub pss_kib: u64,
}

impl Footprint {
    /// Reads the `Rss:` and `Pss:` lines of an `smaps_rollup` text.
    pub fn parse(smaps_rollup: &str) -> Footprint {
        Footprint {
            rss_kib: meminfo_kib(smaps_rollup, "Rss").unwrap_or(0),
            pss_kib: meminfo_kib(smaps_rollup, "Pss").unwrap_or(0),
        }
    }
}

impl std::ops::AddAssign for Footprint {
    fn add_assign(&mut self, other: Footprint) {
        self.rss_kib += other.rss_kib;
        self.pss_kib += other.pss_kib;
    }
}

/// The parent pid in a `/proc/PID/stat` text. The command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `count` indices spread evenly over `0..len` (all of them when `count >= len`).
pub fn spread(len: usize, count: usize) -> Vec<usize> {
    if count >= len {
        return (0..len).collect();
    }
    (0..count).map(|i| i * len / count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_values() {
        let sorted: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 100.0);
        assert_eq!(percentile(&sorted, 99.0), 198.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn summary_orders_the_sample_itself() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]).unwrap_or_else(|| panic!("a summary"));
        assert_eq!((s.min, s.p50, s.max, s.n), (1.0, 2.0, 10.0, 4));
        assert_eq!(s.mean, 4.0);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn meminfo_values_are_read_by_key() {
        let text = "MemTotal:       24683520 kB\nMemFree:        22345216 kB\nMemAvailable:   24246272 kB\n";
        assert_eq!(meminfo_kib(text, "MemAvailable"), Some(24_246_272));
        assert_eq!(meminfo_kib(text, "Mem"), None);
    }

    #[test]
    fn smaps_rollup_gives_rss_and_pss() {
        let text = "55d0c0a00000-7ffd5e9f4000 ---p 00000000 00:00 0    [rollup]\nRss:                2048 kB\nPss:                 700 kB\nPss_Anon:            600 kB\n";
        assert_eq!(
            Footprint::parse(text),
            Footprint {
                rss_kib: 2048,
                pss_kib: 700
            }
        );
    }

    #[test]
    fn ppid_survives_odd_command_names() {
        assert_eq!(stat_ppid("42 (a) b) (c) S 17 42 42 0"), Some(17));
    }

    #[test]
    fn spread_covers_the_range() {
        assert_eq!(spread(10, 3), vec![0, 3, 6]);
        assert_eq!(spread(2, 5), vec![0, 1]);
    }
}
