//! Squared-gradient sums Θ_g(δ1, δ2) = Σ_{μ∈g} ∂f_{δ1}/∂θ_μ ∂f_{δ2}/∂θ_μ from Gram matrices.
//!
//! A weight used once, Y = X Wᵀ, has ∂f_a/∂W = G_aᵀ X for the cotangent G_a of pass a, so
//! Θ(a, b) = Σ_{δδ'} (X Xᵀ)_{δδ'} (G_a G_bᵀ)_{δδ'} = ⟨G_a, (X Xᵀ) G_b⟩: O(D² n) instead of the
//! O(D n²) of forming ∂f/∂W. Biases, positional and word embeddings, and the tied
//! embedding (used twice) are small or shared and are materialized instead.

use ndarray::Array2;

use crate::model::{GradSink, GradTerm, Network, Real, linalg};

enum Rep<F> {
    /// The output cotangent of a single linear use (D × fan_out), scale folded in.
    Cotangent(Array2<F>),
    /// ∂f/∂θ itself, shaped like the parameter.
    Dense(Array2<F>),
}

/// Collects every parameter's gradient representation over one or more backward passes.
pub struct NtkCollector<F = f64> {
    shared: Vec<bool>,
    shapes: Vec<(usize, usize)>,
    /// reps[param][pass]
    reps: Vec<Vec<Rep<F>>>,
    /// X Xᵀ of a linear use's input; the same in every pass.
    xgram: Vec<Option<Array2<F>>>,
    /// With a single pass, Θ_p(0, 0) = ⟨X Xᵀ, G Gᵀ⟩ is summed at once and nothing is kept.
    single: Option<Vec<f64>>,
    pass: usize,
}

impl<F: Real> NtkCollector<F> {
    /// A collector for `passes` backward passes.
    pub fn new(net: &Network<F>, passes: usize) -> Self {
        let np = net.params.list.len();
        let mut shared = vec![false; np];
        if net.head.w == net.stem.w {
            shared[net.stem.w] = true;
        }
        NtkCollector {
            shared,
            shapes: net.params.list.iter().map(|p| p.shape).collect(),
            reps: (0..np).map(|_| Vec::new()).collect(),
            xgram: vec![None; np],
            single: (passes == 1).then(|| vec![0.0; np]),
            pass: 0,
        }
    }

    /// Starts the next backward pass (call before each one).
    pub fn begin_pass(&mut self) {
        self.pass += 1;
    }

    /// Θ_p(a, b) for every parameter p: a (passes × passes) matrix each.
    pub fn finish(self) -> Vec<Array2<f64>> {
        let passes = self.pass;
        let single = self.single;
        self.reps
            .iter()
            .zip(&self.xgram)
            .enumerate()
            .map(|(p, (reps, xg))| {
                let mut theta = Array2::zeros((passes, passes));
                if reps.len() != passes {
                    if let Some(s) = &single {
                        theta[[0, 0]] = s[p];
                    }
                    return theta;
                }
                let projected: Vec<Option<Array2<F>>> = reps
                    .iter()
                    .map(|r| match (r, xg) {
                        (Rep::Cotangent(g), Some(xx)) => Some(linalg::mm(xx.view(), g.view())),
                        _ => None,
                    })
                    .collect();
                for a in 0..passes {
                    for b in a..passes {
                        let v = match (&reps[a], &projected[b]) {
                            (Rep::Cotangent(ga), Some(xgb)) => {
                                linalg::frobenius_dot(ga.view(), xgb.view()).wide()
                            }
                            (Rep::Dense(da), _) => match &reps[b] {
                                Rep::Dense(db) => {
                                    linalg::frobenius_dot(da.view(), db.view()).wide()
                                }
                                Rep::Cotangent(_) => {
                                    unreachable!("a parameter keeps one representation")
                                }
                            },
                            _ => unreachable!("a parameter keeps one representation"),
                        };
                        theta[[a, b]] = v;
                        theta[[b, a]] = v;
                    }
                }
                theta
            })
            .collect()
    }
}

impl<F: Real> GradSink<F> for NtkCollector<F> {
    fn term(&mut self, p: usize, term: GradTerm<'_, F>) {
        let pass = self.pass - 1;
        if let (GradTerm::Linear { input, grad, scale }, false) = (&term, self.shared[p]) {
            if let Some(s) = &mut self.single {
                let xx = linalg::gram(*input);
                let gg = linalg::gram(*grad);
                let sc = scale.wide();
                s[p] += sc * sc * linalg::frobenius_dot(xx.view(), gg.view()).wide();
                return;
            }
            if self.xgram[p].is_none() {
                self.xgram[p] = Some(linalg::gram(*input));
            }
            self.reps[p].push(Rep::Cotangent(grad.mapv(|x| x * *scale)));
            return;
        }
        if self.reps[p].len() <= pass {
            self.reps[p].push(Rep::Dense(Array2::zeros(self.shapes[p])));
        }
        if let Rep::Dense(acc) = &mut self.reps[p][pass] {
            term.accumulate(acc);
        }
    }
}
