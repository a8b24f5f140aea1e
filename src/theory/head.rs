//! The head at infinite width: dense (1.80), pooled (1.81), tied (1.84) with its contact term.

use ndarray::{Array2, s};

use super::mlp::sigma_sigma_all;
use super::state::{Consts, KernelState};
use crate::config::{HeadKind, ModelSpec, Norm};

/// Head (1.80), pooled (1.81), tied (1.84): from the head's input kernel (F in `pre` mode,
/// the stream itself in `post` and `none`). In `mlp` mode it is one more book layer.
pub fn head(spec: &ModelSpec, input: &KernelState) -> KernelState {
    let c = Consts::of(spec);
    if spec.norm == Norm::Mlp {
        return input.with(sigma_sigma_all(spec, input).mapv(|x| c.bias + c.head * x));
    }
    let dense = input.g.mapv(|f| c.head * f);
    let g = if spec.head == HeadKind::Pooled {
        // (1.81): G̃_{α1α2} = (1/T²) Σ_{t1,t2} G_{(α1;t1)(α2;t2)}; the bias adds C_b once.
        let (sq, t) = (input.sequences, input.tokens);
        let g = Array2::from_shape_fn((sq, sq), |(a1, a2)| {
            dense
                .slice(s![a1 * t..(a1 + 1) * t, a2 * t..(a2 + 1) * t])
                .sum()
                / (t * t) as f64
                + c.bias
        });
        return KernelState::new(g, sq, 1);
    } else {
        dense.mapv(|x| x + c.bias)
    };
    input.with(g)
}

/// The tied head's contact term **[derived from footnote 19 and (1.140), not in (1.84)]**.
///
/// The head reads z^L_{δ;i} = N Σ_j W_WE[j, i] s_{δ;j}, and s_δ still contains the stem's
/// own column c_δ W_WE[:, id_δ] through the skip path (c_δ = ξ^B/sqrt(G_δδ + ε) in `pre`
/// mode, with a 1/sqrt(G + ε) per post-LN, ξ^B without LN). So the output component
/// i = id_δ has a *mean* N c_δ Σ_j W_WE[j, id_δ]² = N c_δ n C_WE, and the kernel
/// (1/n_out) Σ_i z_{δ1;i} z_{δ2;i} gains [id_δ1 = id_δ2] N² (n C_WE)² c_δ1 c_δ2 / n_out,
/// which is O(n/n_vocab) relative to (1.84): not negligible unless n ≪ n_vocab. The
/// branches add no such mean: each ends in a fresh mean-zero weight.
pub(crate) fn tied_contact(
    spec: &ModelSpec,
    g0: &KernelState,
    coef: &[f64],
    out: &mut KernelState,
) {
    let n = spec.width as f64;
    let amp = spec.tied_rescale() * n * spec.var.stem;
    let n_out = spec.out_dim() as f64;
    // G⁰ of the embedding stem is exactly [id_δ1 = id_δ2].
    for a in 0..out.len() {
        for b in 0..out.len() {
            out.g[[a, b]] += g0.g[[a, b]] * amp * amp * coef[a] * coef[b] / n_out;
        }
    }
}

/// Mean over tokens of each sequence, (D×D) → (S×S), as the pooled head (1.81).
pub(crate) fn pool(theta: &Array2<f64>, seqs: usize, t: usize) -> Array2<f64> {
    Array2::from_shape_fn((seqs, seqs), |(a, b)| {
        theta
            .slice(s![a * t..(a + 1) * t, b * t..(b + 1) * t])
            .sum()
            / (t * t) as f64
    })
}
