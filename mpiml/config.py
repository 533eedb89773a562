"""Job files: TOML, validated against one schema, with ``--set section.key=value`` overrides.

Every field has a type, a default and a rule (:mod:`mpiml.fields`); an error names the
field and what is allowed (``ConfigError``). Validation is pure (no MPI), so every rank reaches the
same verdict on the same inputs before anyone enters a collective.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .fields import (
    TEXT_BYTES,
    Field,
    at_least,
    check_value,
    choice,
    field,
    kind_of,
    show,
    widths,
    within,
    word,
)  # noqa: F401 - re-exported
from .optim import OPTIMIZERS, build_optimizer

__all__ = [
    "Config",
    "Field",
    "SCHEMA",
    "Section",
    "at_least",
    "choice",
    "default_job_text",
    "field",
    "ignored_keys",
    "kind_of",
    "load_config",
    "parse_set",
    "register_section",
    "schema",
    "show",
    "widths",
    "within",
]


BIG = 10**9  # the most steps (and step intervals) a job may name
NAME_BYTES = 200  # the longest run.name, in UTF-8 bytes (file systems allow 255)

# Sections every job has. Sections that belong to a plug-in ([algorithm] from the
# registered algorithms, [compression] from the codecs) are added by their owners
# with register_section() when the packages in _PLUGINS are imported.
_SECTIONS: dict[str, dict[str, Field]] = {  # noqa: RUF012 - filled by register_section
    "run": {
        "name": field(
            "str",
            "default",
            (
                lambda v: v != "" and "/" not in v and v not in (".", "..") and len(v.encode()) <= NAME_BYTES,
                f"a non-empty folder name without '/', other than '.' and '..', of at most {NAME_BYTES} bytes",
            ),
            "run folder under --out",
            resumable=True,
        ),
        "seed": field("int", 0, within(0, 2**32 - 1), "run seed; rank r uses (seed, r)"),
        "steps": field("int", 600, at_least(1, most=BIG), "training steps per rank", resumable=True),
        "eval_every": field(
            "int", 50, at_least(1, most=BIG), "steps between evaluations and progress lines", resumable=True
        ),
        "world_size": field("int", 0, at_least(0, most=2**24), "required number of ranks (0: any)"),
        "threads": field(
            "int",
            0,
            at_least(0, most=4096),
            "BLAS threads per rank (0: cores on the node / ranks on the node)",
        ),
    },
    "model": {
        "name": field(
            "str",
            "mlp",
            choice("softmax", "mlp", "linear", "timed"),
            "model (linear: least squares, for regression data; timed: a synthetic workload of "
            "model.params parameters and model.compute_ms of compute per step, for benchmarks)",
        ),
        "hidden": field("int_list", [64], widths(1, 2**40, 64), "MLP hidden widths"),
        "activation": field("str", "relu", choice("relu", "tanh"), "MLP activation"),
        "dtype": field("str", "float32", choice("float32", "float64"), "parameter and compute dtype"),
        "init_scale": field(
            "float", 1.0, at_least(0.0, strict=True, most=1000), "multiplier on He/Glorot init"
        ),
        "params": field("int", 1_000_000, at_least(1, most=2**40), "timed: number of parameters d"),
        "compute_ms": field(
            "float", 100.0, at_least(0.0, most=3_600_000), "timed: compute time of one step, milliseconds"
        ),
        "compute": field(
            "str",
            "sleep",
            choice("sleep", "spin"),
            "timed: 'sleep' (the host is idle, as while an accelerator computes) or 'spin' (host CPU busy)",
        ),
    },
    "data": {
        "name": field("str", "digits", choice("digits", "synthetic", "hdf5"), "data set"),
        "batch_size": field("int", 32, at_least(1, most=2**24), "per-rank minibatch size"),
        "partition": field(
            "str", "iid", choice("iid", "dirichlet"), "how training samples are sharded over ranks"
        ),
        "alpha": field(
            "float",
            0.5,
            at_least(0.0, strict=True, most=1_000_000),
            "Dirichlet concentration for partition = 'dirichlet'",
        ),
        "test_fraction": field("float", 0.2, within(0.05, 0.95), "held-out share of the samples"),
        "standardize": field(
            "bool", True, None, "scale features to zero mean, unit variance (train statistics)"
        ),
        "path": field(
            "str",
            "",
            (lambda v: len(v.encode()) <= TEXT_BYTES, f"a path of at most {TEXT_BYTES} bytes"),
            "HDF5 file with /x and /y for name = 'hdf5'",
        ),
        "samples": field("int", 4096, at_least(2, most=2**40), "synthetic: number of samples"),
        "features": field("int", 32, at_least(1, most=2**40), "synthetic: input size d"),
        "noise": field("float", 0.1, at_least(0.0, most=1_000_000), "synthetic: label noise std"),
    },
    "optimizer": {
        "name": field("str", "sgd", choice(*OPTIMIZERS), "sequential update"),
        "lr": field("float", 0.1, at_least(0.0, strict=True, most=1_000_000), "learning rate alpha"),
        "momentum": field("float", 0.9, within(0.0, 1.0, hi_open=True), "beta in SUM (DSP eq. 3)"),
        "s": field(
            "float", 1.0, at_least(0.0, most=1000), "interpolation s of SUM (0: heavy ball, 1: Nesterov)"
        ),
        "beta1": field("float", 0.9, within(0.0, 1.0, hi_open=True), "beta_1 of MixML eq. 11"),
        "beta2": field("float", 0.999, within(0.0, 1.0, hi_open=True), "beta_2 of MixML eq. 11"),
        "p": field(
            "float", 0.25, (lambda v: 0.0 < v <= 0.5, "in (0, 0.5]"), "exponent p of MixML eq. 11 for 'padam'"
        ),
        "eps": field("float", 1e-8, at_least(0.0, most=1), "added to v_t before the power in eq. 11"),
        "weight_decay": field("float", 0.0, at_least(0.0, most=1000), "L2 penalty folded into the gradient"),
    },
    "checkpoint": {
        "every": field(
            "int", 0, at_least(0, most=BIG), "steps between checkpoints (0: none)", resumable=True
        ),
        "keep": field("int", 3, at_least(1, most=1_000_000), "newest checkpoints kept", resumable=True),
    },
    "trace": {
        "flush_every": field(
            "int", 100, at_least(1, most=BIG), "steps between flushes of the run file", resumable=True
        ),
        "events": field("bool", True, None, "record per-rank events", resumable=True),
    },
    "backend": {
        "device": field("str", "cpu", choice("cpu", "gpu"), "where arrays live"),
        "cuda_aware": field(
            "str", "auto", choice("auto", "yes", "no"), "hand device buffers to MPI directly"
        ),
    },
}

# Packages whose import registers plug-in sections ([algorithm], [compression], [straggler]).
_PLUGINS = ("mpiml.algorithms", "mpiml.straggler")
_CHECKS: list[Callable[[Config], None]] = []
_RELEVANT: dict[str, Callable[[Config], Iterable[str]]] = {}  # see register_section
_loaded = False


def _model_keys(cfg: Config) -> set[str]:
    name = cfg.model.name
    own = {
        "mlp": {"hidden", "activation"},
        "softmax": {"activation"},
        "timed": {"params", "compute_ms", "compute"},
    }
    return {"name", "dtype", "init_scale", *own.get(name, set())}


def _data_keys(cfg: Config) -> set[str]:
    d = cfg.data
    out = {"name", "batch_size", "test_fraction", "partition"}
    if d.name != "synthetic":
        out.add("standardize")  # synthetic rows are drawn standardized
    if d.partition == "dirichlet":
        out.add("alpha")
    out |= {"hdf5": {"path"}, "synthetic": {"samples", "features", "noise"}}.get(d.name, set())
    return out


def _optimizer_keys(cfg: Config) -> set[str]:
    """The keys :func:`mpiml.optim.build_optimizer` reads for this job (recorded, not listed)."""
    seen = {"name"}
    section = cfg.optimizer

    class _Recorder:
        def __getattr__(self, key: str) -> Any:
            seen.add(key)
            return section[key]

    build_optimizer(_Recorder())
    return seen


def register_section(
    name: str,
    fields: dict[str, Field],
    *,
    after: str,
    check: Callable[[Config], None] | None = None,
    relevant: Callable[[Config], Iterable[str]] | None = None,
) -> None:
    """Add section ``[name]`` after section ``after`` (its owner calls this once, at
    import); ``check`` is a pure rule on the whole validated job, run after the fields
    are checked (it raises ConfigError naming the fields); ``relevant`` names the keys of
    the section a given job reads (the others may differ on ``--resume``; default: all)."""
    if name in _SECTIONS:
        raise ValueError(f"section [{name}] is registered twice")
    items = list(_SECTIONS.items())
    at = [k for k, _ in items].index(after) + 1
    items.insert(at, (name, fields))
    _SECTIONS.clear()
    _SECTIONS.update(items)
    if check is not None:
        _CHECKS.append(check)
    if relevant is not None:
        _RELEVANT[name] = relevant


_RELEVANT.update(model=_model_keys, data=_data_keys, optimizer=_optimizer_keys)


def schema() -> dict[str, dict[str, Field]]:
    """Every section of a job, plug-ins included: ``{section: {key: Field}}``."""
    global _loaded
    if not _loaded:
        _loaded = True
        import importlib

        for mod in _PLUGINS:
            importlib.import_module(mod)
    return _SECTIONS


SCHEMA: dict[str, dict[str, Field]]  # served by __getattr__: the schema with the plug-ins loaded


def __getattr__(name: str) -> Any:
    if name == "SCHEMA":  # the complete schema, plug-ins loaded on first use
        return schema()
    raise AttributeError(name)


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
        for sec, body in self._set().items():
            lines.append(f"[{sec}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in body.items()]
            lines.append("")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self._set(), sort_keys=True)

    def _set(self) -> dict[str, dict[str, Any]]:
        """Every key, except those left at a default that means "not set" (``unset``
        fields): what ``validate`` reads back equal."""
        fields = schema()
        return {
            sec: {
                k: v
                for k, v in body.items()
                if not (k in fields.get(sec, {}) and fields[sec][k].unset and v == fields[sec][k].default)
            }
            for sec, body in self.items()
        }

    @classmethod
    def from_json(cls, text: str) -> Config:
        return validate(json.loads(text))

    explicit: frozenset[str] = frozenset()  # "section.key" names the user set (load_config)

    def read(self, sec: str) -> set[str]:
        """The keys of section ``sec`` this job reads (the others change nothing)."""
        rule = _RELEVANT.get(sec)
        return set(schema()[sec]) if rule is None else set(rule(self))

    def differences(self, other: Config) -> list[str]:
        """``section.key`` names whose values differ, except those a resume may change
        (resumable fields, and keys that neither job reads)."""
        out = []
        for sec, fields in schema().items():
            used = self.read(sec) | other.read(sec)
            for key, f in fields.items():
                if f.resumable or key not in used:
                    continue
                if self[sec][key] != other[sec][key]:
                    out.append(f"{sec}.{key} ({other[sec][key]!r} in the checkpoint, {self[sec][key]!r} now)")
        return out

    def ignored(self) -> list[str]:
        """``section.key`` names the user set explicitly (in the job file or by ``--set``;
        :attr:`explicit`) that this job does not read, in schema order. Their values were
        validated all the same."""
        out = []
        for sec, fields in schema().items():
            read = self.read(sec)
            out += [f"{sec}.{key}" for key in fields if f"{sec}.{key}" in self.explicit and key not in read]
        return out


# which key decides that a section's key is not read, when it is not the section's first
_DECIDED_BY = {"data.alpha": "data.partition", "straggler.percent": "straggler.probability"}


def ignored_keys(cfg: Config) -> list[str]:
    """One note line per key the user set that the job does not read
    (:meth:`Config.ignored`), ready to print once (rank 0, at start):
    ``mpiml: note: algorithm.topology is not used by dasgd (ignored)``."""
    lines = []
    for name in cfg.ignored():
        sec = name.split(".")[0]
        decider = _DECIDED_BY.get(name, f"{sec}.{next(iter(schema()[sec]))}")
        dsec, dkey = decider.split(".")
        value = cfg[dsec][dkey]
        if decider == "algorithm.name":
            why = f"by {value}"
        elif sec == "compression":  # what the codec setting means depends on the algorithm
            why = f"by {cfg.algorithm.name} with {decider} = {value!r}"
        else:
            why = f"with {decider} = {value!r}"
        lines.append(f"mpiml: note: {name} is not used {why} (ignored)")
    return lines


def validate(raw: dict[str, Any]) -> Config:
    """Fill defaults and check every field; raise ConfigError naming the first bad one."""
    if not isinstance(raw, dict):
        raise ConfigError("a job must be a TOML table of sections")
    SCHEMA = schema()
    for sec, body in raw.items():
        if sec not in SCHEMA:
            raise ConfigError(f"unknown section [{word(sec)}]; allowed sections: {', '.join(SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"[{sec}] must be a table of keys (got {show(body)}, {kind_of(body)})")
        for key in body:
            if key not in SCHEMA[sec]:
                raise ConfigError(
                    f"unknown key {sec}.{word(key)}; allowed keys in [{sec}]: {', '.join(SCHEMA[sec])}"
                )
    cfg = Config()
    for sec, fields in SCHEMA.items():
        body = raw.get(sec, {})
        cfg[sec] = Section(
            {
                key: check_value(f"{sec}.{key}", f, body[key]) if key in body else _copy(f.default)
                for key, f in fields.items()
            }
        )
    _cross_checks(cfg)
    cfg.explicit = frozenset(f"{sec}.{key}" for sec, body in raw.items() for key in body)
    return cfg


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else v


def _cross_checks(cfg: Config) -> None:
    """Rules across the generic sections; then each plug-in's rule (the algorithm's own
    job rules, the codec's)."""
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
    for check in _CHECKS:
        check(cfg)


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
        "Generated from `mpiml.config.schema()` (`python -m mpiml.config > docs/jobs.md`): the",
        "generic sections, and those the algorithms and codecs register.",
        "Every key is optional; `--set section.key=value` overrides any of them.",
        "",
        "Every value is checked before training, on every rank, and a bad one is one line that",
        "names the key and what is allowed (`mpiml: error: run.steps must be <= 1_000_000_000",
        "(got 10000000000)`): types, the ranges below (absurd magnitudes included), strings",
        "without control characters. A key you set that the job does not read (a DaSGD job's",
        "`algorithm.topology`) is still checked, then reported once as ignored",
        "(`mpiml: note: algorithm.topology is not used by dasgd (ignored)`). At set-up the memory",
        "a rank needs (parameters, optimizer state, message buffers, activations, data;",
        "`mpiml.budget`) is estimated and a job that cannot fit in the node's available memory,",
        "shared by the ranks on the node, is refused naming the key that makes it large.",
        "",
        "An HDF5 data file (`data.name = 'hdf5'`) holds `/x` (samples x features, integers or",
        "floats) and `/y` (integer class labels 0 .. 16_777_215, or real targets). Refused",
        "with one line naming `data.path` and the dataset: NaN or Inf (the first bad index is",
        "named), complex or non-numeric dtypes, negative or huge labels, wrong or empty shapes,",
        "external links, virtual or external storage, filters this h5py cannot decode, and",
        "damaged chunks.",
        "",
    ]
    for sec, fields in schema().items():
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
    sets = parse_set(overrides)
    for sec, body in sets.items():
        target = raw.setdefault(sec, {})
        if not isinstance(target, dict):
            raise ConfigError(f"[{sec}] must be a table of keys")
        target.update(body)
    cfg = validate(raw)
    if path is None:  # the embedded default job's keys are not the user's: only --set
        cfg.explicit = frozenset(f"{sec}.{key}" for sec, body in sets.items() for key in body)
    return cfg


if __name__ == "__main__":
    # through the package module: plug-ins register their sections there, not in __main__
    from mpiml.config import schema_markdown as _markdown

    print(_markdown(), end="")
