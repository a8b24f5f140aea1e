//! Criterion benchmark of one Monte Carlo sample (forward, trace backward, every statistic)
//! on paper-vit with H = 8, T = 16, 6 layers, for both samplers. `sigprop bench` runs the
//! full comparison (widths 512 to 8192, peak RSS, the PyTorch peer).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sigprop::config::ConfigBuilder;
use sigprop::mc::Job;

fn ensemble(c: &mut Criterion) {
    let mut group = c.benchmark_group("sample");
    group.sample_size(10);
    for (width, sampler) in [(256, "dense"), (256, "conditional"), (512, "conditional")] {
        let mut b = ConfigBuilder::new();
        for s in [
            "model.preset=paper-vit",
            "model.heads=8",
            "inputs.tokens=16",
            "model.layers=6",
        ] {
            b = b.set(s).expect("valid key");
        }
        let mut cfg = b
            .set(&format!("model.width={width}"))
            .and_then(|b| b.set(&format!("run.sampler={sampler}")))
            .and_then(|b| b.build())
            .expect("valid config");
        let probe = sigprop::inputs::probe(&mut cfg).expect("probe");
        let job = Job::new(&cfg, &probe);
        group.throughput(Throughput::Elements(8));
        group.bench_function(format!("{sampler}/n={width}/8 samples"), |bench| {
            bench.iter(|| {
                let mut ens = job.start(0, 8);
                job.run(&mut ens, 1, |_| Ok(())).expect("run");
                ens.acc.samples()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ensemble);
criterion_main!(benches);
