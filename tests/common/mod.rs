//! Helpers shared by the integration tests that drive the `sigprop` binary.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::PathBuf;
use std::process::Command;

/// Runs the binary with `args`: (exit code, stdout, stderr).
pub fn sigprop(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sigprop"))
        .args(args)
        .output()
        .expect("run sigprop");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A fresh, empty directory under the test target's scratch space.
pub fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 8 ulp of f32 (2⁻²³): a sample's relative rounding error in an f32 Monte Carlo.
pub const F32_DELTA: f64 = 8.0 / 8_388_608.0;

/// How far an f32 Monte Carlo row may sit from the f64 one by rounding alone (add it to
/// 5 combined standard errors). Means and ratios move by δ of their scale. `fluct` is
/// width·Var(m2), so a per-sample error e, |e| ≤ δ·K on m2 (K the token's kernel diagonal),
/// moves it by at most width·(2·sd(m2)·δK + (δK)²); `kurtosis`, a ratio of E m4 to
/// (E m2)², by 3δ(1 + |value|). This is what f32 cannot resolve: post-LN's fluctuations at
/// ~1e-12, LN-at-ε shifts at ~1e-7.
pub fn f32_bound(row: &sigprop::stats::Row, reference: &[sigprop::stats::Row]) -> f64 {
    let d = F32_DELTA;
    match row.observable.as_str() {
        "fluct" => {
            let k = reference
                .iter()
                .find(|r| {
                    (r.layer, &r.site, r.observable.as_str(), r.i, r.j)
                        == (row.layer, &row.site, "kernel", row.i, row.i)
                })
                .map_or(1.0, |r| r.value.abs());
            let w = row.width as f64;
            w * (2.0 * (row.value.abs() / w).sqrt() * d * k + (d * k).powi(2))
        }
        "kurtosis" => 3.0 * d * (1.0 + row.value.abs()),
        _ => d * row.value.abs(),
    }
}
