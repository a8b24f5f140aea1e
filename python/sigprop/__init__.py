"""sigprop from Python: Monte Carlo ensembles of randomly initialized Transformers and the
effective theory, as pandas DataFrames.

Every function calls the same Rust library as the ``sigprop`` command line (the package's
extension module ``sigprop._native``); the results are the command's ``stats.csv`` read back,
so a DataFrame has exactly the CSV schema::

    source,config,width,heads,layer,block,site,observable,i,j,value,stderr,samples

with an empty ``stderr`` as NaN.

A configuration is any of

* a dict of the TOML's keys, nested (``{"model": {"width": 256}}``) or dotted
  (``{"model.width": 256}``), every key in docs/configuration.md;
* the path of a TOML file;
* a preset name (``"paper-vit"``, ``"paper-lm"``, ``"standard"``, ``"mlp-book"``);
* ``None`` (the built-in defaults);

and ``overrides=`` (a dict) goes on top of it. Errors raise :class:`SigpropError` (a bad
key or value: :class:`ConfigError`) with the command line's one-line message.

>>> import sigprop
>>> mc = sigprop.simulate("paper-vit", overrides={"model.width": 256}, samples=400, seed=0)
>>> th = sigprop.theory("paper-vit", overrides={"model.width": 256})
>>> g = sigprop.kernel(mc, layer=3, site="resid")   # D×D numpy array
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from . import _native
from ._native import ConfigError, SigpropError

__version__: str = _native.__version__

__all__ = [
    "simulate",
    "theory",
    "compare",
    "merge",
    "train",
    "hparams",
    "kernel",
    "from_config",
    "read_stats",
    "SigpropError",
    "ConfigError",
    "ImportWarning",
    "PRESETS",
    "COLUMNS",
]

#: The CSV schema, in order.
COLUMNS: Tuple[str, ...] = (
    "source", "config", "width", "heads", "layer", "block", "site",
    "observable", "i", "j", "value", "stderr", "samples",
)

#: The named presets of ``model.preset``.
PRESETS: Tuple[str, ...] = ("paper-vit", "paper-lm", "standard", "mlp-book")

Config = Union[None, str, "os.PathLike[str]", Mapping[str, Any]]


class ImportWarning(UserWarning):  # noqa: A001 (sigprop.ImportWarning, not the builtin)
    """A field of a Hugging Face config.json that :func:`from_config` did not map."""


# ---------------------------------------------------------------------------------------------
# Configurations


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested or dotted keys → dotted keys. A dict value is a section unless it is empty."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _toml_value(v: Any, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return repr(x)
    if isinstance(v, (str, os.PathLike)):
        # JSON's string escapes are TOML's basic-string escapes.
        return json.dumps(os.fspath(v), ensure_ascii=False)
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_toml_value(x, key) for x in v) + "]"
    raise ConfigError(f"`{key}` = {v!r}: expected a number, a string, a boolean or a list")


def _toml_text(values: Mapping[str, Any]) -> str:
    # Each key quoted whole: the library reads a quoted "model.width" as the dotted key.
    return "".join(
        f"{json.dumps(k)} = {_toml_value(v, k)}\n" for k, v in values.items() if v is not None
    )


def _source(config: Config, overrides: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The native layer's configuration source: a TOML file and/or TOML text."""
    path: Optional[str] = None
    values: Dict[str, Any] = {}
    if config is None:
        pass
    elif isinstance(config, Mapping):
        values.update(_flatten(config))
    elif isinstance(config, (str, os.PathLike)):
        s = os.fspath(config)
        if s in PRESETS:
            values["model.preset"] = s
        elif s.endswith(".toml") or os.path.exists(s):
            path = s
        else:
            raise ConfigError(
                f"configuration `{s}`: neither a TOML file nor a preset ({', '.join(PRESETS)})"
            )
    else:
        raise ConfigError(
            f"configuration {config!r}: expected a dict, the path of a TOML file or a preset name"
        )
    if overrides:
        values.update(_flatten(overrides))
    return {"config": path, "toml": _toml_text(values) if values else None, "set": []}


# ---------------------------------------------------------------------------------------------
# Results


def read_stats(path: Union[str, "os.PathLike[str]"]) -> pd.DataFrame:
    """A ``stats.csv`` (or a folder holding one) as a DataFrame in the CSV schema.

    Text columns stay text (an empty ``block`` is ``""``); ``value`` and ``stderr`` are
    floats, with an empty field as NaN.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "stats.csv"
    df = pd.read_csv(
        p,
        keep_default_na=False,
        na_values={"value": [""], "stderr": [""]},
        dtype={
            "source": str, "config": str, "block": str, "site": str, "observable": str,
            "width": "int64", "heads": "int64", "layer": "int64", "i": "int64", "j": "int64",
            "value": "float64", "stderr": "float64", "samples": "int64",
        },
    )
    # The run's config.toml and inputs.csv travel with the rows, so that compare() can check
    # that a Monte Carlo and a theory DataFrame describe the same configuration.
    for f in _RUN_FILES:
        q = p.parent / f
        if q.exists():
            df.attrs[f] = q.read_text()
    return df


_RUN_FILES = ("config.toml", "inputs.csv")


class _Out:
    """The output folder of one call: the user's ``out=`` (kept), or a temporary one that is
    removed after its files were read, unless the run was interrupted (then it is kept, and
    the message says where, so the run can be resumed)."""

    def __init__(self, out: Optional[Union[str, "os.PathLike[str]"]], what: str):
        self.keep = out is not None
        self.path = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"sigprop-{what}-"))
        self.interrupted = False

    def __enter__(self) -> "_Out":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is KeyboardInterrupt:
            self.interrupted = True
        if not self.keep and not self.interrupted:
            shutil.rmtree(self.path, ignore_errors=True)


def _fresh(path: Path) -> Path:
    """The library refuses a folder that holds other files; a temporary folder is created
    empty, so hand it the (not yet existing) subfolder ``run``."""
    return path / "run"


class _Progress:
    """A progress bar for ``progress(done, total)`` callbacks: tqdm when it is installed
    (the notebook widget in Jupyter), else one line on stderr."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            try:
                from tqdm.auto import tqdm  # type: ignore

                self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="sample")
            except ImportError:
                self.bar = False
        if self.bar:
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
        elif done != self.last:
            width = 40
            fill = int(width * done / max(total, 1))
            sys.stderr.write(f"\r{self.desc} [{'#' * fill}{' ' * (width - fill)}] {done}/{total} samples")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        self.last = done

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def _resume_hint(e: KeyboardInterrupt, func: str, folder: Path) -> KeyboardInterrupt:
    return KeyboardInterrupt(
        f"{e}; from Python: sigprop.{func}(resume={str(folder)!r})"
    )


def simulate(
    config: Config = None,
    *,
    overrides: Optional[Mapping[str, Any]] = None,
    samples: Optional[int] = None,
    seed: Optional[int] = None,
    threads: Optional[int] = None,
    out: Optional[Union[str, "os.PathLike[str]"]] = None,
    resume: Optional[Union[str, "os.PathLike[str]"]] = None,
    force: bool = False,
    checkpoint_secs: float = 30.0,
    progress: Union[bool, Callable[[int, int], None]] = True,
) -> pd.DataFrame:
    """A Monte Carlo ensemble (``sigprop simulate``): every statistic with its standard error.

    Args:
        config: a dict of TOML keys, a TOML path, a preset name or None (see the module doc).
        overrides: keys set on top of ``config``, e.g. ``{"model.width": 512}``.
        samples: networks in the ensemble (``run.samples``).
        seed: seed of the parameter streams (``run.seed``); the result does not depend on
            ``threads``.
        threads: worker threads (default: all cores).
        out: folder to keep ``stats.csv``, ``config.toml``, ``inputs.csv`` and the
            checkpoint ``moments.bin`` in (default: a temporary folder, removed afterwards).
        resume: continue (or grow, with a larger ``samples``) the run in this folder; give
            no configuration with it.
        force: overwrite an ``out`` that holds other results.
        checkpoint_secs: seconds between checkpoints.
        progress: show a progress bar (tqdm if installed), or a callable ``(done, total)``.

    Returns:
        The ``stats.csv`` as a DataFrame in the CSV schema.

    Raises:
        ConfigError: a key or value is wrong (the message names it).
        SigpropError: anything else the command line would refuse, in the same words.
        KeyboardInterrupt: Ctrl-C; the samples finished are saved and the message says how
            to resume (with ``out=None`` the temporary folder is kept for that).
    """
    if resume is not None:
        cfg = {"config": None, "toml": None, "set": []}
        if config is not None or overrides:
            cfg = _source(config, overrides)
    else:
        cfg = _source(config, overrides)
    bar = _Progress("sigprop.simulate") if progress is True else None
    cb = bar if bar is not None else (progress if callable(progress) else None)
    with _Out(out if resume is None else resume, "simulate") as o:
        folder = o.path if (o.keep or resume is not None) else _fresh(o.path)
        if resume is not None:
            o.keep = True
        args = {
            "out": None if resume is not None else str(folder),
            "samples": samples, "seed": seed, "threads": threads,
            "resume": str(resume) if resume is not None else None,
            "force": force, "checkpoint_secs": float(checkpoint_secs),
        }
        try:
            _native.simulate(cfg, args, cb)
        except KeyboardInterrupt as e:
            o.keep = True
            raise _resume_hint(e, "simulate", folder) from None
        finally:
            if bar is not None:
                bar.close()
        return read_stats(folder)


def theory(
    config: Config = None,
    *,
    overrides: Optional[Mapping[str, Any]] = None,
    out: Optional[Union[str, "os.PathLike[str]"]] = None,
    force: bool = False,
) -> pd.DataFrame:
    """The infinite-width effective theory (``sigprop theory``), in the Monte Carlo's schema.

    Args:
        config, overrides: as for :func:`simulate`.
        out: folder to keep ``stats.csv`` and ``config.toml`` in (default: temporary).
        force: overwrite an ``out`` that holds other results.

    Returns:
        The theory's ``stats.csv`` as a DataFrame (``source`` = ``"theory"``).
    """
    cfg = _source(config, overrides)
    with _Out(out, "theory") as o:
        folder = o.path if o.keep else _fresh(o.path)
        _native.theory(cfg, str(folder), force)
        return read_stats(folder)


def _as_csv(x: Union[pd.DataFrame, str, "os.PathLike[str]"], tmp: Path, name: str) -> str:
    """A path to a stats.csv: as given, or a DataFrame written in the CSV schema."""
    if isinstance(x, pd.DataFrame):
        d = tmp / name
        d.mkdir()
        p = d / "stats.csv"
        x.loc[:, list(COLUMNS)].to_csv(p, index=False, na_rep="")
        for f in _RUN_FILES:
            if isinstance(x.attrs.get(f), str):
                (d / f).write_text(x.attrs[f])
        return str(p)
    p = Path(x)
    return str(p / "stats.csv" if p.is_dir() else p)


def compare(
    mc: Union[pd.DataFrame, str, "os.PathLike[str]"],
    theory: Union[pd.DataFrame, str, "os.PathLike[str]"],
    *,
    out: Optional[Union[str, "os.PathLike[str]"]] = None,
    threshold: float = 5.0,
    force: bool = False,
) -> Dict[str, Any]:
    """Monte Carlo against theory (``sigprop compare``): z-scores, width fits, report.

    Args:
        mc, theory: DataFrames from :func:`simulate` / :func:`theory`, or paths of their
            ``stats.csv`` (or folders). A folder's ``config.toml`` lets the library check
            that both sides describe the same configuration; DataFrames carry no such file.
        out: folder to keep ``compare.csv``, ``convergence.csv`` and ``report.md`` in.
        threshold: a row passes when |z| is below this.
        force: compare even when the two configurations differ.

    Returns:
        ``{"compare": DataFrame, "convergence": DataFrame or None, "report": str}``.
    """
    with _Out(out, "compare") as o:
        tmp = Path(tempfile.mkdtemp(prefix="sigprop-compare-in-"))
        try:
            folder = o.path if o.keep else _fresh(o.path)
            _native.compare(_as_csv(mc, tmp, "mc"), _as_csv(theory, tmp, "theory"), str(folder), float(threshold), force)
            conv = folder / "convergence.csv"
            return {
                "compare": pd.read_csv(folder / "compare.csv"),
                "convergence": pd.read_csv(conv) if conv.exists() and conv.stat().st_size > 0 else None,
                "report": (folder / "report.md").read_text(),
            }
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def merge(
    shards: Iterable[Union[str, "os.PathLike[str]"]],
    *,
    out: Optional[Union[str, "os.PathLike[str]"]] = None,
    force: bool = False,
) -> pd.DataFrame:
    """Shards of one ensemble (``simulate`` runs with ``--shard``) combined exactly
    (``sigprop merge``); ``shards`` are their stats.csv paths or folders."""
    paths = [str(Path(s) / "stats.csv") if Path(s).is_dir() else str(s) for s in shards]
    with _Out(out, "merge") as o:
        folder = o.path if o.keep else _fresh(o.path)
        _native.merge(paths, str(folder), force)
        return read_stats(folder)


def train(
    config: Config = None,
    *,
    overrides: Optional[Mapping[str, Any]] = None,
    steps: Optional[int] = None,
    lr: Optional[float] = None,
    seed: Optional[int] = None,
    threads: Optional[int] = None,
    hparams: Optional[Union[str, "os.PathLike[str]"]] = None,
    out: Optional[Union[str, "os.PathLike[str]"]] = None,
    resume: Optional[Union[str, "os.PathLike[str]"]] = None,
    force: bool = False,
) -> pd.DataFrame:
    """A training run on a built-in task (``sigprop train``): the log ``train.csv``.

    Args:
        config, overrides: as for :func:`simulate` (``train.*`` keys set the task).
        steps, lr, seed, threads: as the command's flags.
        hparams: a JSON table from :func:`hparams` (``fmt="json"``) or ``sigprop hparams``.
        out: folder to keep ``train.csv`` and ``checkpoint.bin`` in; resume: continue it.

    Returns:
        ``train.csv`` as a DataFrame.
    """
    cfg = _source(config, overrides) if (resume is None or config is not None or overrides) else {"config": None, "toml": None, "set": []}
    with _Out(out if resume is None else resume, "train") as o:
        folder = o.path if (o.keep or resume is not None) else _fresh(o.path)
        args = {
            "out": None if resume is not None else str(folder),
            "hparams": None if hparams is None else str(hparams),
            "lr": lr, "steps": steps, "seed": seed, "threads": threads,
            "resume": None if resume is None else str(resume), "force": force,
        }
        try:
            _native.train(cfg, args)
        except KeyboardInterrupt as e:
            o.keep = True
            raise _resume_hint(e, "train", folder) from None
        return pd.read_csv(folder / "train.csv")


def hparams(
    family: str = "ntk",
    *,
    optimizer: str = "adamw",
    base_width: int = 256,
    widths: Sequence[int] = (256, 512, 1024),
    preset: str = "paper-vit",
    config: Config = None,
    overrides: Optional[Mapping[str, Any]] = None,
    lr: Optional[float] = None,
    wd: Optional[float] = None,
    no_m_factors: bool = False,
    anchor: str = "paper",
    fmt: str = "csv",
) -> Union[pd.DataFrame, List[Dict[str, Any]]]:
    """The width-scaling table of init variances and learning rates (``sigprop hparams``).

    Args:
        family: ``standard``, ``ntk``, ``mup`` or ``s=<value>``.
        optimizer: ``sgd`` or ``adamw``.
        base_width, widths: the width the base values hold at, and the target widths.
        preset, config, overrides: where the C's come from.
        lr, wd, no_m_factors, anchor: as the command's flags.
        fmt: ``"csv"`` returns a DataFrame, ``"json"`` the list of per-width tables (dicts)
            that ``sigprop hparams --format json`` writes.
    """
    if fmt not in ("csv", "json"):
        raise ConfigError(f"fmt `{fmt}`: expected csv (a DataFrame) or json (a dict)")
    cfg = _source(config, overrides) if (config is not None or overrides) else {"config": None, "toml": None, "set": []}
    d = Path(tempfile.mkdtemp(prefix="sigprop-hparams-"))
    try:
        f = d / f"hparams.{fmt}"
        args = {
            "out": str(f), "family": family, "optimizer": optimizer, "base_width": int(base_width),
            "widths": ",".join(str(int(w)) for w in widths), "format": fmt, "preset": preset,
            "lr": lr, "wd": wd, "no_m_factors": no_m_factors, "anchor": anchor,
        }
        _native.hparams(cfg, args)
        if fmt == "json":
            return json.loads(f.read_text())
        return pd.read_csv(f)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def kernel(
    df: pd.DataFrame,
    layer: int,
    site: str = "resid",
    *,
    observable: str = "kernel",
    column: str = "value",
) -> np.ndarray:
    """The D×D kernel G_{δ1δ2} of one layer and site as a symmetric numpy array.

    Args:
        df: one run's DataFrame (filter first if it holds several configs, widths or sources).
        layer: the paper's layer index ℓ (1 = stem output, …, L = head output).
        site: ``resid``, ``ln`` or ``hidden``.
        observable: ``kernel`` (or another per-pair observable written for i ≤ j).
        column: ``value`` or ``stderr``.

    Raises:
        ValueError: no such rows, or rows from more than one run.
    """
    rows = df[(df["observable"] == observable) & (df["site"] == site) & (df["layer"] == layer)
              & (df["i"] >= 0) & (df["j"] >= 0)]
    if rows.empty:
        raise ValueError(f"no `{observable}` rows at layer {layer}, site `{site}`")
    runs = rows[["source", "config", "width", "heads"]].drop_duplicates()
    if len(runs) > 1:
        raise ValueError(
            f"the rows come from {len(runs)} runs (source, config, width, heads); filter the DataFrame to one"
        )
    d = int(max(rows["i"].max(), rows["j"].max())) + 1
    g = np.full((d, d), np.nan)
    i = rows["i"].to_numpy()
    j = rows["j"].to_numpy()
    v = rows[column].to_numpy(dtype=float)
    g[i, j] = v
    g[j, i] = v
    return g


def from_config(
    config: Union[str, "os.PathLike[str]", Mapping[str, Any]],
    *,
    toml: bool = False,
) -> Union[Dict[str, Any], str]:
    """A Hugging Face ``config.json`` (ViT, GPT-2, BERT, BART) as a sigprop configuration
    (the mapping of ``sigprop import-config``).

    Every field that is not mapped is named in a :class:`sigprop.ImportWarning`.

    Args:
        config: the path of a config.json, or its contents as a dict
            (e.g. ``transformers.AutoConfig.from_pretrained("gpt2").to_dict()``).
        toml: return the TOML text (as ``sigprop import-config`` prints it) instead.

    Returns:
        A dict of dotted keys, ready for :func:`simulate` and :func:`theory` (add
        ``overrides=`` for the probe, e.g. ``{"inputs.tokens": 8}``).
    """
    if isinstance(config, Mapping):
        family, text, values, warns = _native.import_config(None, json.dumps(dict(config)))
    else:
        family, text, values, warns = _native.import_config(os.fspath(config), None)
    for w in warns:
        warnings.warn(w, ImportWarning, stacklevel=2)
    if toml:
        return text
    return {k: json.loads(v) for k, v in values}
