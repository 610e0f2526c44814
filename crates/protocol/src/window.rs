//! A window of metric rows and its exact statistics per column: what a nano instance shows
//! its model, what the checker holds the model's text to, and what the alerter reads.

use std::collections::VecDeque;

/// One numeric sample: the row id and its numeric columns.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub id: i64,
    pub values: Vec<(String, f64)>,
}

/// Exact statistics of one column over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnStats {
    pub column: String,
    pub count: usize,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
    pub last: f64,
    pub trend: &'static str,
}

impl ColumnStats {
    pub fn describe(&self) -> String {
        format!(
            "{}: count={} min={:.2} mean={:.2} max={:.2} last={:.2} trend={}",
            self.column, self.count, self.min, self.mean, self.max, self.last, self.trend
        )
    }

    /// The statistics as the model is shown them: each named in words next to its number,
    /// which a small model restates more faithfully than `key=value` pairs.
    pub fn in_words(&self) -> String {
        format!(
            "{} is {}; the mean is {:.2}, the minimum is {:.2}, the maximum is {:.2}, the last value is {:.2}",
            self.column, self.trend, self.mean, self.min, self.max, self.last
        )
    }
}

/// Statistics per numeric column, in the order columns appear.
pub fn window_stats(window: &VecDeque<MetricRow>) -> Vec<ColumnStats> {
    let mut columns: Vec<String> = Vec::new();
    for row in window {
        for (column, _) in &row.values {
            if !columns.contains(column) {
                columns.push(column.clone());
            }
        }
    }
    columns
        .into_iter()
        .filter_map(|column| {
            let values: Vec<f64> = window
                .iter()
                .filter_map(|r| r.values.iter().find(|(c, _)| *c == column).map(|(_, v)| *v))
                .collect();
            let last = *values.last()?;
            let count = values.len();
            let mean = values.iter().sum::<f64>() / count as f64;
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let trend = trend(&values, min, max, mean);
            Some(ColumnStats {
                column,
                count,
                min,
                mean,
                max,
                last,
                trend,
            })
        })
        .collect()
}

/// The window's shape. From first to last: a change of more than 5 % of the window's range
/// and more than 1 % of its mean is `rising` or `falling`, less is `flat` (a reading
/// jittering by 0.1 around 20 is flat, as a reader would call it). Within: a peak (or trough)
/// beyond both ends by more than half the range, reached and left once, is a `spike` (`dip`)
/// whatever the ends say; ends alike with swings that change direction twice or more (by a
/// quarter of the range each) are `volatile`.
fn trend(values: &[f64], min: f64, max: f64, mean: f64) -> &'static str {
    let (first, last) = (values[0], values[values.len() - 1]);
    let range = max - min;
    let threshold = (0.05 * range).max(0.01 * mean.abs()).max(1e-9);
    let by_ends = if values.len() < 2 || (last - first).abs() <= threshold {
        "flat"
    } else if last > first {
        "rising"
    } else {
        "falling"
    };
    if values.len() < 3 || range <= threshold {
        return by_ends;
    }
    let big = 0.25 * range;
    let mut directions = values
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|step| step.abs() > big)
        .map(f64::is_sign_positive)
        .collect::<Vec<bool>>();
    directions.dedup();
    let reversals = directions.len().saturating_sub(1);
    if reversals >= 2 && by_ends == "flat" {
        return "volatile";
    }
    if reversals <= 1 {
        if max - first.max(last) > 0.5 * range {
            return "spike";
        }
        if first.min(last) - min > 0.5 * range {
            return "dip";
        }
    }
    by_ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trends() {
        let window = |values: &[f64]| -> VecDeque<MetricRow> {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| MetricRow {
                    id: i as i64,
                    values: vec![("m".into(), *v)],
                })
                .collect()
        };
        assert_eq!(window_stats(&window(&[50.0, 50.1, 50.0]))[0].trend, "flat");
        assert_eq!(
            window_stats(&window(&[20.1, 20.0, 20.1, 20.0]))[0].trend,
            "flat",
            "jitter of 0.5 % of the mean"
        );
        assert_eq!(
            window_stats(&window(&[50.0, 50.3, 51.0]))[0].trend,
            "rising"
        );
        assert_eq!(
            window_stats(&window(&[0.0, 0.2, 0.0, 0.3]))[0].trend,
            "rising"
        );
        assert_eq!(window_stats(&window(&[10.0, 30.0]))[0].trend, "rising");
        assert_eq!(window_stats(&window(&[30.0, 10.0]))[0].trend, "falling");
        // The window a user saw called flat: up to 100 and back down is a spike.
        assert_eq!(
            window_stats(&window(&[2.08, 33.8, 100.0, 100.0, 22.1, 1.05]))[0].trend,
            "spike"
        );
        assert_eq!(window_stats(&window(&[2.0, 100.0, 30.0]))[0].trend, "spike");
        assert_eq!(window_stats(&window(&[80.0, 5.0, 78.0]))[0].trend, "dip");
        assert_eq!(
            window_stats(&window(&[10.0, 50.0, 10.0, 50.0, 12.0]))[0].trend,
            "volatile"
        );
        // Swings on the way up, ends apart: it rises.
        assert_eq!(
            window_stats(&window(&[10.0, 50.0, 10.0, 50.0, 40.0]))[0].trend,
            "rising"
        );
        assert_eq!(
            window_stats(&window(&[10.0, 20.0, 18.0, 30.0]))[0].trend,
            "rising"
        );
    }
}
