//! Criterion benchmark of the Monte Carlo's normal generators: the vectorized Box–Muller of
//! `mc::normal` (f32 and f64) against rand_distr's StandardNormal (ziggurat) on the
//! Xoshiro256++ stream the f64 path draws from, 64 Ki normals per iteration.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::Rng;
use rand_distr::StandardNormal;
use sigprop::mc::normal::FastNormals;
use sigprop::model::init;

const N: usize = 1 << 16;

fn normals(c: &mut Criterion) {
    let mut group = c.benchmark_group("normals");
    group.throughput(Throughput::Elements(N as u64));
    let mut fast = FastNormals::from_seed(1);
    let mut buf32 = vec![0f32; N];
    group.bench_function("fast f32", |b| {
        b.iter(|| {
            fast.fill_f32(&mut buf32);
            buf32[N - 1]
        })
    });
    let mut buf64 = vec![0f64; N];
    group.bench_function("fast f64", |b| {
        b.iter(|| {
            fast.fill_f64(&mut buf64);
            buf64[N - 1]
        })
    });
    let mut rng = init::stream(1, 0);
    group.bench_function("rand_distr StandardNormal f64", |b| {
        b.iter(|| {
            for x in buf64.iter_mut() {
                *x = rng.sample(StandardNormal);
            }
            buf64[N - 1]
        })
    });
    group.bench_function("rand_distr StandardNormal f32", |b| {
        b.iter(|| {
            for x in buf32.iter_mut() {
                *x = rng.sample(StandardNormal);
            }
            buf32[N - 1]
        })
    });
    group.finish();
}

criterion_group!(benches, normals);
criterion_main!(benches);
