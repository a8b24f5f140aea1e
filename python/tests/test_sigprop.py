"""The Python package against the command line: same numbers, same errors, interrupts that
keep what finished, and the Hugging Face import. Run by .ci/run after the Rust tests, with the
release binary of the same checkout (``SIGPROP_BIN`` or ../target/release/sigprop)."""

import csv
import json
import math
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sigprop

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "hf"
BIN = os.environ.get("SIGPROP_BIN", str(ROOT / "target" / "release" / "sigprop"))

# A small paper-vit: 2 layers, 4 tokens, width 64 (a fraction of a second per run).
SMALL = {"model.width": 64, "model.layers": 2, "inputs.tokens": 4, "model.n_out": 16}
SMALL_SET = [f"{k}={v}" for k, v in SMALL.items()]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, *args], capture_output=True, text=True)


def csv_rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_rows(df: pd.DataFrame, path: Path) -> None:
    """Row for row, column for column: text equal, numbers equal to the last bit, an empty
    field exactly where the DataFrame has NaN."""
    rows = csv_rows(path)
    assert list(df.columns) == list(sigprop.COLUMNS) == list(rows[0].keys())
    assert len(df) == len(rows)
    for k, (r, (_, d)) in enumerate(zip(rows, df.iterrows())):
        for c in sigprop.COLUMNS:
            want, got = r[c], d[c]
            if c in ("value", "stderr"):
                if want == "":
                    assert math.isnan(got), f"row {k} {c}: {got} where the CSV is empty"
                else:
                    assert float(want) == got, f"row {k} {c}: {got} vs {want}"
            elif c in ("width", "heads", "layer", "i", "j", "samples"):
                assert int(want) == got, f"row {k} {c}"
            else:
                assert want == got, f"row {k} {c}: {got!r} vs {want!r}"


def test_simulate_equals_the_cli_row_for_row(tmp_path):
    out = tmp_path / "cli"
    p = cli("simulate", "--set", "model.preset=paper-vit", *sum((["--set", s] for s in SMALL_SET), []),
            "--samples", "64", "--seed", "7", "--threads", "2", "--out", str(out))
    assert p.returncode == 0, p.stderr
    # Another thread count: the result does not depend on it.
    df = sigprop.simulate("paper-vit", overrides=SMALL, samples=64, seed=7, threads=1, progress=False)
    assert (df["source"] == "mc").all() and len(df) > 100
    assert_same_rows(df, out / "stats.csv")
    # The same configuration as a nested dict.
    nested = {"model": {"preset": "paper-vit", "width": 64, "layers": 2, "n_out": 16}, "inputs": {"tokens": 4}}
    df2 = sigprop.simulate(nested, samples=64, seed=7, progress=False)
    assert_same_rows(df2, out / "stats.csv")


def test_theory_equals_the_cli_and_a_toml_path_works(tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text('[model]\npreset = "paper-vit"\nwidth = 64\nlayers = 2\nn_out = 16\n[inputs]\ntokens = 4\n[theory]\nlogit_samples = 400\n')
    out = tmp_path / "cli"
    p = cli("theory", "--config", str(cfg), "--out", str(out))
    assert p.returncode == 0, p.stderr
    df = sigprop.theory(cfg)
    assert (df["source"] == "theory").all()
    assert_same_rows(df, out / "stats.csv")


def test_empty_stderr_is_nan_and_kernel_is_the_rows():
    # Two samples: the 32-batch jackknife of ratio rows rests on one sample, so their
    # stderr is undefined (an empty field in the CSV).
    df = sigprop.simulate("paper-vit", overrides=SMALL, samples=2, seed=1, progress=False)
    assert df["stderr"].isna().any()
    assert not (df["stderr"] == 0).any()
    mc = sigprop.simulate("paper-vit", overrides=SMALL, samples=50, seed=1, progress=False)
    g = sigprop.kernel(mc, layer=2, site="resid")
    assert g.shape == (4, 4) and np.array_equal(g, g.T)
    rows = mc[(mc.observable == "kernel") & (mc.site == "resid") & (mc.layer == 2)]
    for _, r in rows.iterrows():
        assert g[r.i, r.j] == r.value
    with pytest.raises(ValueError):
        sigprop.kernel(mc, layer=99)


def test_compare_and_merge(tmp_path):
    mc = sigprop.simulate("paper-vit", overrides=SMALL, samples=200, seed=3, progress=False)
    th = sigprop.theory("paper-vit", overrides={**SMALL, "theory.logit_samples": 2000})
    r = sigprop.compare(mc, th)
    assert set(r) == {"compare", "convergence", "report"}
    assert len(r["compare"]) > 0 and "Monte Carlo vs theory" in r["report"]
    # Two shards through the CLI, merged from Python: the same as one run.
    shards = []
    for i in range(2):
        d = tmp_path / f"s{i}"
        p = cli("simulate", "--set", "model.preset=paper-vit", *sum((["--set", s] for s in SMALL_SET), []),
                "--samples", "40", "--seed", "5", "--shard", f"{i}/2", "--out", str(d))
        assert p.returncode == 0, p.stderr
        shards.append(d)
    merged = sigprop.merge(shards)
    whole = sigprop.simulate("paper-vit", overrides=SMALL, samples=40, seed=5, progress=False)
    pd.testing.assert_frame_equal(merged, whole, check_exact=True)


def test_errors_are_exceptions_with_the_cli_message():
    p = cli("simulate", "--set", "model.widht=3", "--out", "/nonexistent/x")
    assert p.returncode == 2
    line = p.stderr.strip().removeprefix("sigprop: error: ")
    with pytest.raises(sigprop.ConfigError) as e:
        sigprop.simulate({"model.widht": 3})
    assert str(e.value) == line
    assert isinstance(e.value, sigprop.SigpropError)
    p = cli("simulate", "--set", "model.width=10", "--set", "model.heads=3", "--out", "/nonexistent/x")
    with pytest.raises(sigprop.SigpropError) as e:
        sigprop.simulate({"model.width": 10, "model.heads": 3}, progress=False)
    assert str(e.value) == p.stderr.strip().removeprefix("sigprop: error: ")
    with pytest.raises(sigprop.SigpropError):
        sigprop.simulate("paper-vit", overrides=SMALL, samples=1, progress=False)
    with pytest.raises(sigprop.ConfigError, match="neither a TOML file nor a preset"):
        sigprop.simulate("paper-vt")
    with pytest.raises(sigprop.ConfigError, match="import-config maps"):
        sigprop.from_config({"model_type": "llama"})


def test_interrupt_keeps_what_finished_and_resume_completes_it(tmp_path):
    out = tmp_path / "run"
    cfg = {**SMALL, "model.width": 128, "model.layers": 3}
    seen = []

    def stop(done, total):
        # Ctrl-C as a notebook delivers it: a KeyboardInterrupt in the main thread.
        seen.append(done)
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as e:
        sigprop.simulate("paper-vit", overrides=cfg, samples=3000, seed=11, out=out, progress=stop,
                         checkpoint_secs=1e3)
    assert "sigprop.simulate(resume=" in str(e.value) and "samples saved" in str(e.value)
    assert (out / "moments.bin").exists() and not (out / "stats.csv").exists()
    done = int(str(e.value).split("interrupted: ")[1].split(" samples")[0])
    assert 0 < done < 3000, str(e.value)
    # The library's flag is reset: the next run is not interrupted.
    df = sigprop.simulate(resume=out, progress=False)
    assert (df["samples"] == 3000).all()
    ref = tmp_path / "ref"
    p = cli("simulate", "--set", "model.preset=paper-vit", *sum((["--set", f"{k}={v}"] for k, v in cfg.items()), []),
            "--samples", "3000", "--seed", "11", "--out", str(ref))
    assert p.returncode == 0, p.stderr
    assert_same_rows(df, ref / "stats.csv")


def test_hparams_and_train():
    t = sigprop.hparams("mup", optimizer="adamw", base_width=256, widths=[256, 1024])
    assert isinstance(t, pd.DataFrame) and set(t["width"]) == {256, 1024}
    j = sigprop.hparams("ntk", fmt="json")
    assert isinstance(j, list) and {t["width"] for t in j} == {256, 512, 1024}
    log = sigprop.train({"model.width": 32, "model.layers": 1, "train.steps": 20, "train.eval_every": 10},
                        threads=1)
    assert len(log) > 0 and "step" in log.columns


def fixture(name):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cfg = sigprop.from_config(FIXTURES / name)
    return cfg, [str(x.message) for x in w if issubclass(x.category, sigprop.ImportWarning)]


def test_from_config_gpt2_field_by_field():
    cfg, warns = fixture("gpt2.json")
    assert cfg["model.width"] == 768 and cfg["model.heads"] == 12 and cfg["model.layers"] == 12
    assert cfg["model.mlp_mult"] == 4 and cfg["model.activation"] == "gelu"
    assert cfg["model.norm"] == "pre" and cfg["model.causal"] is True
    assert cfg["model.ln_eps"] == 1e-5
    assert cfg["model.variance_mode"] == "absolute"
    for g in ("stem", "pe", "q", "k", "v", "w", "head"):
        assert cfg[f"model.variances.{g}"] == 0.02 * 0.02
    for g in ("u", "x"):  # c_proj: std 0.02/sqrt(2 n_layer)
        assert cfg[f"model.variances.{g}"] == pytest.approx(0.02**2 / 24, rel=1e-15)
    assert cfg["model.variances.bias"] == 0.0
    assert cfg["model.stem"] == "embedding" and cfg["model.head"] == "tied"
    assert cfg["inputs.vocab"] == 50257 and cfg["inputs.kind"] == "tokens"
    assert cfg["run.name"] == "gpt2"
    raw = json.loads((FIXTURES / "gpt2.json").read_text())
    mapped = {"model_type", "n_embd", "n_head", "n_layer", "activation_function", "layer_norm_epsilon",
              "initializer_range", "vocab_size", "summary_activation"}
    text = "\n".join(warns)
    for k in raw:
        assert k in mapped or k in text, f"{k} neither mapped nor warned"
    # The CLI prints the same mapping.
    p = cli("import-config", str(FIXTURES / "gpt2.json"))
    assert p.returncode == 0
    assert sigprop.from_config(FIXTURES / "gpt2.json", toml=True) == p.stdout


@pytest.mark.parametrize("name,width,heads,norm,eps,vocab", [
    ("bert-base-uncased.json", 768, 12, "post", 1e-12, 30522),
    ("bart-large.json", 1024, 16, "post", 1e-5, 50265),
])
def test_from_config_bert_bart(name, width, heads, norm, eps, vocab):
    cfg, warns = fixture(name)
    assert cfg["model.width"] == width and cfg["model.heads"] == heads
    assert cfg["model.layers"] == 12 and cfg["model.mlp_mult"] == 4
    assert cfg["model.norm"] == norm and cfg["model.ln_eps"] == eps
    assert cfg["inputs.vocab"] == vocab and cfg["model.head"] == "tied"
    assert cfg["model.variances.u"] == 0.02 * 0.02
    if name.startswith("bart"):
        # The decoder is mapped (12 × ACM, the decoder's start token as inputs.bos_id), so
        # no warning names its fields as unmapped.
        assert cfg["model.decoder_layers"] == 12 and cfg["model.decoder_pattern"] == "ACM"
        assert cfg["inputs.bos_id"] == 2
        assert not any("decoder_ffn_dim" in w for w in warns)
    else:
        assert cfg.get("model.decoder_layers", 0) == 0


def test_from_config_vit_runs():
    cfg, warns = fixture("vit-base-patch16-224.json")
    assert cfg["model.stem"] == "dense" and cfg["inputs.dim"] == 768
    assert cfg["model.norm"] == "pre" and cfg["model.ln_eps"] == 1e-12
    assert any("image_size" in w for w in warns)
    # The imported configuration runs (made small by overrides).
    df = sigprop.simulate(cfg, overrides={"model.width": 48, "model.layers": 1, "inputs.tokens": 3,
                                          "model.n_out": 10}, samples=8, progress=False)
    assert (df["config"] == "vit").all()
