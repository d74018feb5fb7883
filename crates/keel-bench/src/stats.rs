//! Small summaries of per-round measurements (failover, transfer).

use serde_json::{json, Value};

/// The minimum, median and maximum of some values (all 0 for none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let Some((&min, &max)) = v.first().zip(v.last()) else {
            return Spread {
                min: 0.0,
                median: 0.0,
                max: 0.0,
            };
        };
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Spread { min, median, max }
    }

    /// `{"min":..,"median":..,"max":..}`, rounded to 0.1.
    pub fn json(&self) -> Value {
        json!({"min": round1(self.min), "median": round1(self.median), "max": round1(self.max)})
    }
}

/// `x` rounded to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        let s = Spread::of(&[30.0, 10.0, 20.0]);
        assert_eq!((s.min, s.median, s.max), (10.0, 20.0, 30.0));
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 4.0));
        let s = Spread::of(&[7.0]);
        assert_eq!((s.min, s.median, s.max), (7.0, 7.0, 7.0));
        let s = Spread::of(&[]);
        assert_eq!((s.min, s.median, s.max), (0.0, 0.0, 0.0));
        assert_eq!(
            Spread::of(&[1.04, 2.25, 3.0]).json(),
            json!({"min": 1.0, "median": 2.3, "max": 3.0})
        );
    }
}
