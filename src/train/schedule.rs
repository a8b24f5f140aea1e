//! Linear warm-up, then a cosine decay: the factor that multiplies every group's learning
//! rate. Warm-up keeps the first AdamW steps (whose normalized updates are O(lr) whatever
//! the gradient) from wrecking a network that has not yet seen any data.

use std::f64::consts::PI;

/// The factor for update `step` (0-based) of `total`: (step + 1)/warmup during warm-up (so
/// the first update is not wasted at 0), then min + (1 − min)·½(1 + cos πp), with p going
/// from 0 at the end of warm-up to 1 at the last update.
pub fn lr_factor(step: usize, warmup: usize, total: usize, min_ratio: f64) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).saturating_sub(1);
    let p = if span == 0 {
        0.0
    } else {
        ((step - warmup) as f64 / span as f64).min(1.0)
    };
    min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (PI * p).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        assert_eq!(lr_factor(0, 4, 10, 0.0), 0.25);
        assert_eq!(lr_factor(3, 4, 10, 0.0), 1.0);
        assert_eq!(lr_factor(4, 4, 10, 0.0), 1.0);
        assert!((lr_factor(9, 4, 10, 0.1) - 0.1).abs() < 1e-15);
        assert!((lr_factor(0, 0, 1, 0.0) - 1.0).abs() < 1e-15);
    }
}
