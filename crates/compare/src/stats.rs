//! Min / median / max of repeated runs.

/// (min, median, max) of `v`; the median of an even count is the mean of
/// the middle two. `None` for no values.
pub fn min_med_max(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((s[0], med, s[n - 1]))
}

/// Median only.
pub fn median(v: &[f64]) -> Option<f64> {
    min_med_max(v).map(|m| m.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_even_empty() {
        assert_eq!(min_med_max(&[3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(min_med_max(&[4.0, 1.0, 2.0, 3.0]), Some((1.0, 2.5, 4.0)));
        assert_eq!(min_med_max(&[]), None);
        assert_eq!(median(&[7.0]), Some(7.0));
    }
}
