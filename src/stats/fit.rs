//! The one weighted straight-line fit, and the log–log fit built on it: the width exponent of
//! a Monte Carlo quantity (`hparams`: raw NTK per group, coordinate sizes) and the rate at
//! which Monte Carlo and theory converge (`compare`).

/// A weighted least-squares line y = intercept + slope · x.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LineFit {
    pub slope: f64,
    /// The slope's standard error from the weights, inflated by √(χ²/dof) when that exceeds
    /// 1 (a line that does not fit its points should not claim a tight slope). With two
    /// points the fit is exact and the error comes from the weights alone.
    pub stderr: f64,
    pub intercept: f64,
    /// χ²/dof of the weighted residuals; 0 with two points.
    pub chi2_dof: f64,
}

/// Weighted least squares over (x, y, w), w = 1/σ_y².
pub fn weighted_line(data: &[(f64, f64, f64)]) -> LineFit {
    let sw: f64 = data.iter().map(|d| d.2).sum();
    let mx = data.iter().map(|d| d.2 * d.0).sum::<f64>() / sw;
    let my = data.iter().map(|d| d.2 * d.1).sum::<f64>() / sw;
    let sxx: f64 = data.iter().map(|d| d.2 * (d.0 - mx).powi(2)).sum();
    let sxy: f64 = data.iter().map(|d| d.2 * (d.0 - mx) * (d.1 - my)).sum();
    let slope = sxy / sxx;
    let (stderr, chi2_dof) = if data.len() > 2 {
        let resid: f64 = data
            .iter()
            .map(|d| d.2 * (d.1 - my - slope * (d.0 - mx)).powi(2))
            .sum();
        let chi2_dof = resid / (data.len() - 2) as f64;
        ((chi2_dof.max(1.0) / sxx).sqrt(), chi2_dof)
    } else {
        ((1.0 / sxx).sqrt(), 0.0)
    };
    LineFit {
        slope,
        stderr,
        intercept: my - slope * mx,
        chi2_dof,
    }
}

/// The fit of ln y against ln x over points (x, y, σ), where σ is the standard error of
/// ln y (by the delta method, stderr/|y|), floored at `sigma_floor` so that one very precise
/// (or zero-error) point cannot decide the slope alone. A NaN σ counts as the floor; an
/// infinite σ gives the point no weight. Callers choose the floor: `compare` uses 1e-3 (its
/// points mix Monte Carlo and theory errors), `hparams` 1e-6 (pure Monte Carlo errors).
pub fn loglog(points: impl IntoIterator<Item = (f64, f64, f64)>, sigma_floor: f64) -> LineFit {
    let data: Vec<(f64, f64, f64)> = points
        .into_iter()
        .map(|(x, y, sigma)| {
            let s = sigma.max(sigma_floor);
            (x.ln(), y.ln(), 1.0 / (s * s))
        })
        .collect();
    weighted_line(&data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_power_law_and_floors() {
        let pts = |e: f64| [64.0f64, 128.0, 256.0, 512.0].map(|n| (n, 3.0 / n, e));
        let f = loglog(pts(0.01), 1e-3);
        assert!((f.slope + 1.0).abs() < 1e-12, "{f:?}");
        assert!((f.intercept - 3f64.ln()).abs() < 1e-12, "{f:?}");
        assert!(f.chi2_dof < 1e-20, "{f:?}");
        // Equal weights: the plain least-squares slope error, 0.01/sqrt(Σ(x − x̄)²).
        let sxx: f64 = [0.0f64, 1.0, 2.0, 3.0]
            .iter()
            .map(|k| ((k - 1.5) * 2f64.ln()).powi(2))
            .sum();
        assert!(
            (f.stderr - 0.01 / sxx.sqrt()).abs() < 1e-12 * f.stderr,
            "{f:?}"
        );
        // Below the floor every σ is the floor: the error is floor/sqrt(sxx).
        let g = loglog(pts(0.0), 1e-3);
        assert!(
            (g.stderr - 1e-3 / sxx.sqrt()).abs() < 1e-12 * g.stderr,
            "{g:?}"
        );
        // An infinite σ drops the point: two exact points on another line decide.
        let mut q: Vec<_> = pts(0.01).into();
        q.push((1024.0, 100.0, f64::INFINITY));
        assert!((loglog(q, 1e-3).slope + 1.0).abs() < 1e-12);
    }
}
