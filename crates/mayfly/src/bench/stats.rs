use std::time::Duration;

/// Median, 90th percentile and minimum of the successful runs.
#[derive(Debug, PartialEq)]
pub(super) struct Stats {
    pub(super) median: Duration,
    pub(super) p90: Duration,
    pub(super) min: Duration,
}

impl Stats {
    /// Computes the statistics of ascending `sorted`, or None when empty.
    pub(super) fn from_sorted(sorted: &[Duration]) -> Option<Stats> {
        Some(Stats { median: median(sorted)?, p90: percentile(sorted, 90)?, min: *sorted.first()? })
    }
}

/// Returns the median of ascending `sorted`: the mean of the two middle
/// values when the count is even.
pub(super) fn median(sorted: &[Duration]) -> Option<Duration> {
    let count = sorted.len();
    match count {
        0 => None,
        _ if count % 2 == 1 => Some(sorted[count / 2]),
        _ => Some((sorted[count / 2 - 1] + sorted[count / 2]) / 2),
    }
}

/// Returns the `percent`th percentile of ascending `sorted` by the
/// nearest-rank method: the smallest value that at least `percent`% of the
/// values are less than or equal to.
pub(super) fn percentile(sorted: &[Duration], percent: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Converts to milliseconds, rounded to whole microseconds.
pub(super) fn milliseconds(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// Returns `value / base`, rounded to three decimals.
pub(super) fn ratio(value: Duration, base: Duration) -> f64 {
    (value.as_secs_f64() / base.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(&ms(&[])), None);
        assert_eq!(median(&ms(&[7])), Some(Duration::from_millis(7)));
        assert_eq!(median(&ms(&[1, 2, 9])), Some(Duration::from_millis(2)));
        assert_eq!(median(&ms(&[1, 2, 4, 9])), Some(Duration::from_millis(3)));
    }

    #[test]
    fn percentile_nearest_rank() {
        let values = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&values, 90), Some(Duration::from_millis(9)));
        assert_eq!(percentile(&values, 100), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&values, 0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&ms(&[5]), 90), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&ms(&[]), 90), None);

        let twenty: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&twenty, 90), Some(Duration::from_millis(18)));
        let eleven: Vec<Duration> = (1..=11).map(Duration::from_millis).collect();
        assert_eq!(percentile(&eleven, 90), Some(Duration::from_millis(10)));
    }

    #[test]
    fn stats_from_sorted_samples() {
        let stats = Stats::from_sorted(&ms(&[2, 3, 5, 8, 13])).expect("stats of five values");
        assert_eq!(stats, Stats { median: Duration::from_millis(5), p90: Duration::from_millis(13), min: Duration::from_millis(2) });
        assert_eq!(Stats::from_sorted(&[]), None);
    }
}
