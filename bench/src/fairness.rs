//! How evenly a broker served its publishers: the spread of per-publisher
//! counts (messages sent, or delivered) over one run.

/// The spread of per-publisher counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Largest count over smallest; NaN when there are no counts or the
    /// smallest is 0 (see [`Spread::zeros`]).
    pub max_over_min: f64,
    /// Coefficient of variation: population standard deviation over the
    /// mean; NaN when there are no counts or all are 0.
    pub cv: f64,
    /// Publishers whose count is 0.
    pub zeros: usize,
}

impl Spread {
    pub fn of(counts: &[u64]) -> Spread {
        let zeros = counts.iter().filter(|&&c| c == 0).count();
        let (Some(&min), Some(&max)) = (counts.iter().min(), counts.iter().max()) else {
            return Spread {
                max_over_min: f64::NAN,
                cv: f64::NAN,
                zeros,
            };
        };
        let max_over_min = if min > 0 {
            max as f64 / min as f64
        } else {
            f64::NAN
        };
        let n = counts.len() as f64;
        let mean = counts.iter().map(|&c| c as f64).sum::<f64>() / n;
        let cv = if mean > 0.0 {
            let variance = counts
                .iter()
                .map(|&c| (c as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            variance.sqrt() / mean
        } else {
            f64::NAN
        };
        Spread {
            max_over_min,
            cv,
            zeros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_counts_have_no_spread() {
        let s = Spread::of(&[50, 50, 50, 50]);
        assert_eq!(s.max_over_min, 1.0);
        assert_eq!(s.cv, 0.0);
        assert_eq!(s.zeros, 0);
    }

    #[test]
    fn spread_of_uneven_counts() {
        // mean 20, deviations -10 and +10: standard deviation 10, CV 0.5.
        let s = Spread::of(&[10, 30]);
        assert_eq!(s.max_over_min, 3.0);
        assert!((s.cv - 0.5).abs() < 1e-12);
        assert_eq!(s.zeros, 0);
    }

    #[test]
    fn a_starved_publisher_leaves_max_over_min_undefined() {
        let s = Spread::of(&[0, 10, 20]);
        assert!(s.max_over_min.is_nan());
        assert!(s.cv > 0.0);
        assert_eq!(s.zeros, 1);
    }

    #[test]
    fn no_counts_or_all_zero_are_undefined() {
        let empty = Spread::of(&[]);
        assert!(empty.max_over_min.is_nan() && empty.cv.is_nan());
        assert_eq!(empty.zeros, 0);
        let zero = Spread::of(&[0, 0]);
        assert!(zero.max_over_min.is_nan() && zero.cv.is_nan());
        assert_eq!(zero.zeros, 2);
    }
}
