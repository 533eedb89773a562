"""Job files: TOML, validated against one schema, with ``--set section.key=value`` overrides.

Every field has a type, a default and a rule; an error names the field and what is
allowed (``ConfigError``). Validation is pure (no MPI), so every rank reaches the
same verdict on the same inputs before anyone enters a collective.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .optim import OPTIMIZERS

__all__ = ["Config", "Field", "SCHEMA", "default_job_text", "load_config", "parse_set"]


@dataclass(frozen=True)
class Field:
    """One job-file key: its type, default, and an optional rule on the value."""

    type: str  # "int", "float", "str", "bool", "int_list"
    default: Any
    rule: Callable[[Any], bool] | None = None
    allowed: str = ""  # how the rule reads in an error message
    doc: str = ""


def _choice(*names: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in names), "one of " + ", ".join(repr(n) for n in names)


def _min(lo: float, strict: bool = False) -> tuple[Callable[[Any], bool], str]:
    if strict:
        return (lambda v: v > lo), f"> {lo}"
    return (lambda v: v >= lo), f">= {lo}"


def _range(lo: float, hi: float, hi_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    if hi_open:
        return (lambda v: lo <= v < hi), f"in [{lo}, {hi})"
    return (lambda v: lo <= v <= hi), f"in [{lo}, {hi}]"


def _f(
    type_: str, default: Any, rule: tuple[Callable[[Any], bool], str] | None = None, doc: str = ""
) -> Field:
    if rule is None:
        return Field(type_, default, None, "", doc)
    return Field(type_, default, rule[0], rule[1], doc)


ALGORITHMS = (
    "sgd",
    "local_sgd",
    "dasgd",
    "dpsgd",
    "gossip",
    "async_gossip",
    "qsgd",
    "pr_sgd",
    "qpr_sgd",
    "dqpr_sgd",
)
# The codecs of mpiml.compress (a test keeps the two lists equal; not imported here so
# that reading a job stays cheap). "auto": qsgd for the quantized algorithms, else none.
CODECS = ("identity", "fp16", "bf16", "sign", "topk", "randk", "qsgd", "qsgd_fixed")
QUANTIZED = ("qsgd", "qpr_sgd", "dqpr_sgd")  # algorithms that exist to compress
COMPRESSIBLE = ("sgd", "local_sgd", "dasgd", "dpsgd", "gossip", *QUANTIZED)
PROGRESS_MODES = ("test", "thread", "library", "none")

SCHEMA: dict[str, dict[str, Field]] = {
    "run": {
        "name": _f(
            "str",
            "default",
            (
                lambda v: v != "" and "/" not in v and v not in (".", ".."),
                "a non-empty folder name without '/'",
            ),
            "run folder under --out",
        ),
        "seed": _f("int", 0, _min(0), "run seed; rank r uses (seed, r)"),
        "steps": _f("int", 600, _min(1), "training steps per rank"),
        "eval_every": _f("int", 50, _min(1), "steps between evaluations and progress lines"),
        "world_size": _f("int", 0, _min(0), "required number of ranks (0: any)"),
        "threads": _f("int", 0, _min(0), "BLAS threads per rank (0: cores on the node / ranks on the node)"),
    },
    "algorithm": {
        "name": _f("str", "sgd", _choice(*ALGORITHMS), "the training algorithm"),
        "tau": _f(
            "int",
            4,
            _min(1),
            "local_sgd, dasgd, pr_sgd, qpr_sgd, dqpr_sgd: local steps between averages "
            "(DaSGD's tau, Quantized-PR-SGD's K)",
        ),
        "delay": _f(
            "int",
            1,
            _min(0),
            "dasgd: local steps d between starting an average and merging it (0 <= d < tau; eq. 2)",
        ),
        "xi": _f(
            "float",
            0.25,
            _range(0.0, 1.0),
            "dasgd: share xi of the local model at a merge, x = xi x_local + (1 - xi) average (eq. 2)",
        ),
        "topology": _f(
            "str",
            "ring",
            (lambda v: v != "", "a topology name (mpiml topology --list) or a .toml file"),
            "dpsgd, gossip, async_gossip, dqpr_sgd: the graph and weights W (docs/topologies.md)",
        ),
        "period": _f(
            "int", 1, _min(1), "gossip, async_gossip: local steps between gossip rounds (exchanges)"
        ),
        "gamma": _f(
            "float",
            1.0,
            (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
            "dpsgd, gossip: slack gamma, x_i + gamma sum_j W_ij (x_j - x_i) (MixML §6; 1: plain gossip)",
        ),
        "gossip_method": _f(
            "str",
            "p2p",
            _choice("p2p", "neighbor"),
            "dpsgd, gossip: Isend/Irecv pairs or MPI_Ineighbor_allgather on a graph communicator",
        ),
        "progress": _f(
            "str",
            "test",
            _choice(*PROGRESS_MODES),
            "dasgd: what progresses an average in flight: 'test' (MPI_Test between compute chunks), "
            "'thread' (a polling thread), 'library' (the MPI's own progress thread, e.g. MPICH "
            "MPIR_CVAR_ASYNC_PROGRESS=1), 'none' (only the wait at the merge)",
        ),
    },
    "compression": {
        "codec": _f(
            "str",
            "auto",
            _choice("auto", "none", *CODECS),
            "what crosses the wire (docs/compression.md): 'auto' is qsgd for qsgd, qpr_sgd and "
            "dqpr_sgd, 'none' for the others; any codec works with sgd (gradients), local_sgd "
            "and dasgd (differences from the last average), dpsgd and gossip (DCD differences)",
        ),
        "s": _f("int", 0, _min(0), "qsgd, qsgd_fixed: levels s (0: ceil(sqrt(bucket length)), §6.1)"),
        "bucket": _f("int", 0, _min(0), "qsgd, qsgd_fixed: coordinates per norm (0: one bucket)"),
        "k": _f("int", 0, _min(0), "topk, randk: coordinates kept (0: use ratio)"),
        "ratio": _f(
            "float", 0.01, (lambda v: 0.0 < v <= 1.0, "in (0, 1]"), "topk, randk: share of coordinates kept"
        ),
        "error_feedback": _f(
            "bool", False, None, "keep what the codec dropped and add it to the next message (EF-SGD)"
        ),
    },
    "model": {
        "name": _f(
            "str",
            "mlp",
            _choice("softmax", "mlp", "linear", "timed"),
            "model (linear: least squares, for regression data; timed: a synthetic workload of "
            "model.params parameters and model.compute_ms of compute per step, for benchmarks)",
        ),
        "hidden": _f(
            "int_list", [64], (lambda v: all(h >= 1 for h in v), "a list of widths >= 1"), "MLP hidden widths"
        ),
        "activation": _f("str", "relu", _choice("relu", "tanh"), "MLP activation"),
        "dtype": _f("str", "float32", _choice("float32", "float64"), "parameter and compute dtype"),
        "init_scale": _f("float", 1.0, _min(0.0, strict=True), "multiplier on He/Glorot init"),
        "params": _f("int", 1_000_000, _min(1), "timed: number of parameters d"),
        "compute_ms": _f("float", 100.0, _min(0.0), "timed: compute time of one step, milliseconds"),
        "compute": _f(
            "str",
            "sleep",
            _choice("sleep", "spin"),
            "timed: 'sleep' (the host is idle, as while an accelerator computes) or 'spin' (host CPU busy)",
        ),
    },
    "data": {
        "name": _f("str", "digits", _choice("digits", "synthetic", "hdf5"), "data set"),
        "batch_size": _f("int", 32, _min(1), "per-rank minibatch size"),
        "partition": _f(
            "str", "iid", _choice("iid", "dirichlet"), "how training samples are sharded over ranks"
        ),
        "alpha": _f(
            "float", 0.5, _min(0.0, strict=True), "Dirichlet concentration for partition = 'dirichlet'"
        ),
        "test_fraction": _f("float", 0.2, _range(0.05, 0.95), "held-out share of the samples"),
        "standardize": _f(
            "bool", True, None, "scale features to zero mean, unit variance (train statistics)"
        ),
        "path": _f("str", "", None, "HDF5 file with /x and /y for name = 'hdf5'"),
        "samples": _f("int", 4096, _min(2), "synthetic: number of samples"),
        "features": _f("int", 32, _min(1), "synthetic: input size d"),
        "noise": _f("float", 0.1, _min(0.0), "synthetic: label noise std"),
    },
    "optimizer": {
        "name": _f("str", "sgd", _choice(*OPTIMIZERS), "sequential update"),
        "lr": _f("float", 0.1, _min(0.0, strict=True), "learning rate alpha"),
        "momentum": _f("float", 0.9, _range(0.0, 1.0, hi_open=True), "beta in SUM (DSP eq. 3)"),
        "s": _f("float", 1.0, _min(0.0), "interpolation s of SUM (0: heavy ball, 1: Nesterov)"),
        "beta1": _f("float", 0.9, _range(0.0, 1.0, hi_open=True), "beta_1 of MixML eq. 11"),
        "beta2": _f("float", 0.999, _range(0.0, 1.0, hi_open=True), "beta_2 of MixML eq. 11"),
        "p": _f(
            "float", 0.25, (lambda v: 0.0 < v <= 0.5, "in (0, 0.5]"), "exponent p of MixML eq. 11 for 'padam'"
        ),
        "eps": _f("float", 1e-8, _min(0.0), "added to v_t before the power in eq. 11"),
        "weight_decay": _f("float", 0.0, _min(0.0), "L2 penalty folded into the gradient"),
    },
    "checkpoint": {
        "every": _f("int", 0, _min(0), "steps between checkpoints (0: none)"),
        "keep": _f("int", 3, _min(1), "newest checkpoints kept"),
    },
    "trace": {
        "flush_every": _f("int", 100, _min(1), "steps between flushes of the run file"),
        "events": _f("bool", True, None, "record per-rank events"),
    },
    "backend": {
        "device": _f("str", "cpu", _choice("cpu", "gpu"), "where arrays live"),
        "cuda_aware": _f("str", "auto", _choice("auto", "yes", "no"), "hand device buffers to MPI directly"),
    },
}

# Keys that may differ between a checkpoint's job and the resuming job.
RESUMABLE_CHANGES = {
    ("run", "name"),
    ("run", "steps"),
    ("run", "eval_every"),
    ("checkpoint", "every"),
    ("checkpoint", "keep"),
    ("trace", "flush_every"),
    ("trace", "events"),
    ("algorithm", "progress"),  # how an average progresses, not what it computes
}


class Section(dict[str, Any]):
    """A section of a config; keys are also attributes (``cfg.run.steps``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class Config(dict[str, Any]):
    """A validated job: ``{section: {key: value}}`` with every key present."""

    def __getattr__(self, key: str) -> Section:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def to_toml(self) -> str:
        """The job as a TOML file (every key), which ``load_config`` reads back equal."""
        lines = []
        for sec, body in self.items():
            lines.append(f"[{sec}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in body.items()]
            lines.append("")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return validate(json.loads(text))

    def differences(self, other: Config) -> list[str]:
        """``section.key`` names whose values differ, except those a resume may change."""
        out = []
        for sec, fields in SCHEMA.items():
            for key in fields:
                if (sec, key) in RESUMABLE_CHANGES:
                    continue
                if self[sec][key] != other[sec][key]:
                    out.append(f"{sec}.{key} ({other[sec][key]!r} in the checkpoint, {self[sec][key]!r} now)")
        return out


def _typed(name: str, field: Field, value: Any) -> Any:
    t = field.type
    if t == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif t == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = "a number"
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number (got {value})")
    elif t == "str":
        ok, want = isinstance(value, str), "a string"
    elif t == "bool":
        ok, want = isinstance(value, bool), "true or false"
    elif t == "int_list":
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        want = "a list of integers"
    else:  # pragma: no cover - schema bug
        raise AssertionError(t)
    if not ok:
        raise ConfigError(f"{name} must be {want} (got {value!r}, a {type(value).__name__})")
    if field.rule is not None and not field.rule(value):
        raise ConfigError(f"{name} must be {field.allowed} (got {value!r})")
    return value


def validate(raw: dict[str, Any]) -> Config:
    """Fill defaults and check every field; raise ConfigError naming the first bad one."""
    if not isinstance(raw, dict):
        raise ConfigError("a job must be a TOML table of sections")
    for sec, body in raw.items():
        if sec not in SCHEMA:
            raise ConfigError(f"unknown section [{sec}]; allowed sections: {', '.join(SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"[{sec}] must be a table of keys (got {body!r})")
        for key in body:
            if key not in SCHEMA[sec]:
                raise ConfigError(
                    f"unknown key {sec}.{key}; allowed keys in [{sec}]: {', '.join(SCHEMA[sec])}"
                )
    cfg = Config()
    for sec, fields in SCHEMA.items():
        body = raw.get(sec, {})
        cfg[sec] = Section(
            {
                key: _typed(f"{sec}.{key}", f, body[key]) if key in body else _copy(f.default)
                for key, f in fields.items()
            }
        )
    _cross_checks(cfg)
    return cfg


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else v


def _cross_checks(cfg: Config) -> None:
    a = cfg.algorithm
    if a.name == "async_gossip" and cfg.backend.device != "cpu":
        raise ConfigError(
            "backend.device must be 'cpu' for algorithm.name = 'async_gossip' (its RMA windows are host memory)"
        )
    if a.name == "dasgd" and a.delay >= a.tau:
        raise ConfigError(
            f"algorithm.delay must be < algorithm.tau (got delay={a.delay}, tau={a.tau}): "
            "an average must be merged before the next one starts (DaSGD's bounded age, d < tau)"
        )
    _compression_checks(cfg)
    if cfg.data.name == "hdf5" and not cfg.data.path:
        raise ConfigError("data.path must name an HDF5 file with /x and /y when data.name = 'hdf5'")
    if cfg.data.name == "synthetic" and cfg.model.name != "linear":
        raise ConfigError(
            f"model.name must be 'linear' for data.name = 'synthetic' (regression data; got {cfg.model.name!r})"
        )
    if cfg.data.name == "synthetic" and cfg.data.partition != "iid":
        raise ConfigError(
            "data.partition must be 'iid' for data.name = 'synthetic' (a Dirichlet split needs class labels)"
        )


def codec_of(cfg: Config) -> str:
    """The codec a job uses: compression.codec with 'auto' resolved ('none': uncompressed)."""
    c = cfg.compression.codec
    if c == "auto":
        return "qsgd" if cfg.algorithm.name in QUANTIZED else "none"
    return str(c)


def _compression_checks(cfg: Config) -> None:
    name, c = cfg.algorithm.name, cfg.compression.codec
    codec = codec_of(cfg)
    if name in QUANTIZED and c == "none":
        plain = {"qsgd": "sgd", "qpr_sgd": "pr_sgd", "dqpr_sgd": "dpsgd or gossip"}[name]
        raise ConfigError(
            f"compression.codec = 'none' contradicts algorithm.name = {name!r}, which quantizes; "
            f"use algorithm.name = {plain!r} to train uncompressed"
        )
    if name == "pr_sgd" and codec != "none":
        raise ConfigError(
            f"compression.codec = {c!r} with algorithm.name = 'pr_sgd' (PR-SGD is uncompressed): "
            "use algorithm.name = 'qpr_sgd' (Algorithm 1) for compressed differences"
        )
    if codec != "none" and name not in COMPRESSIBLE:
        raise ConfigError(
            f"compression.codec = {c!r} does not apply to algorithm.name = {name!r}; it works with "
            f"{', '.join(COMPRESSIBLE)}"
        )
    if codec != "none" and name in ("dpsgd", "gossip", "dqpr_sgd") and cfg.algorithm.gossip_method != "p2p":
        raise ConfigError(
            "algorithm.gossip_method must be 'p2p' for compressed gossip (payloads differ in length "
            f"per rank; got {cfg.algorithm.gossip_method!r})"
        )
    if cfg.compression.error_feedback and codec == "none":
        raise ConfigError("compression.error_feedback = true needs a codec (compression.codec is 'none')")


def parse_set(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["run.steps=10", "model.hidden=[32, 32]"]`` -> nested dict; values are TOML values,
    and a bare word that is not one is taken as a string (``run.name=foo``)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value (got {item!r})")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set expects section.key=value with one dot (got {path!r})")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


def schema_markdown() -> str:
    """The job-file reference (docs/jobs.md is this text; a test keeps them equal)."""
    lines = [
        "# Job file reference",
        "",
        "Generated from `mpiml.config.SCHEMA` (`python -m mpiml.config > docs/jobs.md`).",
        "Every key is optional; `--set section.key=value` overrides any of them.",
        "",
    ]
    for sec, fields in SCHEMA.items():
        lines += [f"## [{sec}]", "", "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for key, f in fields.items():
            default = json.dumps(f.default)
            lines.append(f"| `{key}` | {f.type} | `{default}` | {f.allowed or 'any'} | {f.doc} |")
        lines.append("")
    return "\n".join(lines)


def default_job_text() -> str:
    return resources.files("mpiml").joinpath("jobs/default.toml").read_text()


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Read a job file (or the embedded default job), apply ``--set`` overrides, validate."""
    if path is None:
        text, where = default_job_text(), "the default job"
    else:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"job file {str(p)!r} does not exist")
        if not p.is_file():
            raise ConfigError(f"job file {str(p)!r} is not a file")
        try:
            text, where = p.read_text(encoding="utf-8"), str(p)
        except UnicodeDecodeError:
            raise ConfigError(f"job file {str(p)!r} is not UTF-8 text (a TOML file is)") from None
        except OSError as exc:
            raise ConfigError(f"job file {str(p)!r} cannot be read ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    for sec, body in parse_set(overrides).items():
        target = raw.setdefault(sec, {})
        if not isinstance(target, dict):
            raise ConfigError(f"[{sec}] must be a table of keys")
        target.update(body)
    return validate(raw)


if __name__ == "__main__":
    print(schema_markdown(), end="")
