//! Order statistics of a set of durations, as the benchmark reports them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// None for no values. The median of an even count is the mean of the middle two; p90
    /// is the smallest value at or above 90 % of them.
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        let p90 = v[(0.9 * n as f64).ceil() as usize - 1];
        Some(Spread { n, median, p90, min: v[0], max: v[n - 1] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90() {
        let s = Spread::of(&[5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
        assert_eq!((s.n, s.median, s.p90, s.min, s.max), (10, 5.5, 9.0, 1.0, 10.0));
        assert_eq!(Spread::of(&[3.0]).unwrap().p90, 3.0);
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0]).unwrap().median, 2.0);
        assert!(Spread::of(&[]).is_none());
    }
}
