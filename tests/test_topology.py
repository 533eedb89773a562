"""mpiml.topology: generators, spectral gaps against closed forms, checks, files, CLI.

Serial and pure (no MPI). Oracles: closed-form eigenvalues of circulant and product
graphs, exact averaging of the one-peer exponential graph, and the contraction bound
||W^k X - mean|| <= rho^k ||X - mean|| on random X.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpiml.topology import (
    REGISTRY,
    TOPOLOGY_DIR,
    Schedule,
    Topology,
    TopologyError,
    build_schedule,
    check,
    check_schedule,
    check_topology,
    complete,
    exponential,
    from_edges,
    hypercube,
    load_topology,
    main,
    metropolis,
    one_peer_exponential,
    random_regular,
    ring,
    star,
    torus,
    uniform,
)
from mpiml.topology.cli import parse_param, rounds_to

SIZES = (1, 2, 3, 4, 5, 8, 9, 16)
POW2 = (1, 2, 4, 8, 16)


def _params(name: str, n: int) -> dict[str, int] | None:
    """Parameters that make ``name`` valid on n ranks, or None where it cannot be."""
    if name == "hypercube" and n not in POW2:
        return None
    if name == "random_regular":
        k = {1: 0, 2: 1, 3: 2}.get(n, 3 if n % 2 == 0 else 4)
        return {"k": k, "seed": 7}
    return {}


CASES = [(name, n) for name in REGISTRY for n in SIZES if _params(name, n) is not None]


def _J(n: int) -> np.ndarray:
    return np.full((n, n), 1.0 / n)


# ---------------------------------------------------------------- every generator


@pytest.mark.parametrize(("name", "n"), CASES)
def test_every_generator_passes_the_checks(name: str, n: int) -> None:
    s = build_schedule(name, n, **(_params(name, n) or {}))
    assert s.n == n
    check_schedule(s, n=n)
    for top in s.steps:
        assert top.W.shape == (n, n) and top.W.dtype == np.float64
        np.testing.assert_allclose(top.W.sum(axis=0), 1.0, atol=1e-12)
        np.testing.assert_allclose(top.W.sum(axis=1), 1.0, atol=1e-12)
    if name != "one_peer_exponential":
        assert s.static and s.period == 1
        check_topology(s.at(0), symmetric=True)  # every static generator is symmetric
    assert 0.0 <= s.rho_effective() < 1.0


@pytest.mark.parametrize(("name", "n"), CASES)
def test_consensus_error_shrinks_by_rho_per_round(name: str, n: int) -> None:
    """||X_k - mean|| <= c^k ||X_0 - mean||, c = contraction(), at the end of each period."""
    s = build_schedule(name, n, **(_params(name, n) or {}))
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 5))
    mean = X.mean(axis=0)
    err0 = np.linalg.norm(X - mean)
    c = s.contraction()
    for t in range(3 * s.period):
        X = s.at(t).W @ X
        np.testing.assert_allclose(X.mean(axis=0), mean, atol=1e-12)  # the average is kept
        if (t + 1) % s.period == 0:
            assert np.linalg.norm(X - mean) <= c ** (t + 1) * err0 + 1e-12
    if s.static and n > 1:  # rho is the worst case: its eigenvector attains it
        top = s.at(0)
        lam, vec = np.linalg.eigh(top.W)
        v = vec[:, np.argmax(np.where(np.isclose(lam, 1.0), -1.0, np.abs(lam)))]
        assert np.linalg.norm(top.W @ v) == pytest.approx(top.rho(), abs=1e-12)


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("n", [3, 4, 5, 8, 9, 16, 101])
def test_ring_rho_closed_form(n: int) -> None:
    assert ring(n).rho() == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / n), abs=1e-12)


def test_ring_small_n() -> None:
    np.testing.assert_array_equal(ring(1).W, [[1.0]])
    np.testing.assert_allclose(ring(2).W, [[1 / 3, 2 / 3], [2 / 3, 1 / 3]])  # neighbours merged
    assert ring(2).rho() == pytest.approx(1 / 3)
    assert ring(3).rho() == pytest.approx(0.0, abs=1e-12)  # the 3-ring is complete


@pytest.mark.parametrize("n", SIZES)
def test_complete_rho_is_zero(n: int) -> None:
    assert complete(n).rho() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", POW2)
def test_hypercube_rho_closed_form(n: int) -> None:
    L = n.bit_length() - 1
    top = hypercube(n)
    assert top.degree == L
    assert top.rho() == pytest.approx(max(L - 1, 0) / (L + 1), abs=1e-12)


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (1, 2), (1, 7), (2, 2), (2, 4), (3, 3), (4, 4), (3, 5)])
def test_torus_spectrum_closed_form(rows: int, cols: int) -> None:
    top = torus(rows * cols, rows=rows, cols=cols)
    expect = sorted(
        (1 + 2 * math.cos(2 * math.pi * a / rows) + 2 * math.cos(2 * math.pi * b / cols)) / 5
        for a in range(rows)
        for b in range(cols)
    )
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(top.W)), expect, atol=1e-12)
    assert top.rho() == pytest.approx(max((abs(x) for x in expect[:-1]), default=0.0), abs=1e-12)


def test_torus_shape() -> None:
    assert torus(8).name == "torus(2x4)" and torus(9).name == "torus(3x3)" and torus(7).name == "torus(1x7)"
    assert torus(12, cols=6).name == "torus(2x6)"
    assert torus(16).degree == 4 and torus(16).diameter() == 4


@pytest.mark.parametrize("n", [2, 3, 5, 8, 12, 16, 33])
def test_exponential_spectrum_closed_form(n: int) -> None:
    top = exponential(n)
    offsets = [j for j in range(1, n) if top.W[0, j]]
    assert offsets == sorted(
        {p % n for k in range(n.bit_length()) if (p := 1 << k) < n}
        | {-p % n for k in range(n.bit_length()) if (p := 1 << k) < n}
    )
    d = len(offsets)
    lam = [(1 + sum(math.cos(2 * math.pi * j * s / n) for s in offsets)) / (d + 1) for j in range(n)]
    assert top.degree == d
    assert top.rho() == pytest.approx(max(abs(x) for x in lam[1:]), abs=1e-12)


@pytest.mark.parametrize("n", [3, 4, 5, 8, 16])
def test_star_metropolis_closed_form(n: int) -> None:
    top = star(n)
    assert top.W[0, 0] == pytest.approx(1 / n) and top.W[1, 1] == pytest.approx(1 - 1 / n)
    assert top.rho() == pytest.approx(1 - 1 / n, abs=1e-12)
    assert top.diameter() == 2 and top.degree == n - 1


# ---------------------------------------------------------------- time-varying


@pytest.mark.parametrize("n", POW2)
def test_one_peer_exponential_averages_exactly_over_a_period(n: int) -> None:
    s = one_peer_exponential(n)
    assert s.period == max(1, n.bit_length() - 1)
    np.testing.assert_allclose(s.product(), _J(n), atol=1e-15)
    assert s.rho_effective() == pytest.approx(0.0, abs=1e-12)
    for t, top in enumerate(s.steps):
        peer = (1 << t) % n
        for i in range(n):
            assert top.in_neighbors(i) == ([(i + peer) % n] if n > 1 else [])
            assert top.out_neighbors(i) == ([(i - peer) % n] if n > 1 else [])
        assert top.degree == (1 if n > 1 else 0)


@pytest.mark.parametrize("n", [3, 5, 6, 9, 12])
def test_one_peer_exponential_not_a_power_of_two(n: int) -> None:
    s = one_peer_exponential(n)
    assert s.period == math.ceil(math.log2(n)) and not s.static
    assert not np.allclose(s.product(), _J(n))
    assert 0.0 < s.rho_effective() < 1.0
    assert s.at(0) is s.at(s.period) is s.at(-s.period)


def test_schedule_basics() -> None:
    top = ring(4)
    s = Schedule.of(top)
    assert s.static and s.period == 1 and s.at(12345) is top and s.rho_effective() == top.rho()
    with pytest.raises(TopologyError, match="mixes topologies"):
        Schedule("bad", (ring(3), ring(4)))
    with pytest.raises(TopologyError, match="no steps"):
        Schedule("empty", ())


# ---------------------------------------------------------------- the Topology API


def test_topology_accessors_on_a_directed_w() -> None:
    top = one_peer_exponential(8).at(1)  # i receives from i + 2
    assert not top.symmetric
    assert top.in_neighbors(0) == [2] and top.out_neighbors(0) == [6]
    assert top.self_weight(0) == 0.5 and top.weights_from(0) == {2: 0.5}
    assert top.rho() == pytest.approx(1.0)  # one step alone does not contract: P^2 has 2 cycles
    assert top.diameter() is None
    with pytest.raises(IndexError):
        top.in_neighbors(8)


def test_topology_copies_and_freezes_w() -> None:
    W = np.eye(2)
    top = Topology("eye", W)
    W[0, 0] = 5.0
    assert top.W[0, 0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        top.W[0, 0] = 2.0
    with pytest.raises(TopologyError, match="square"):
        Topology("bad", np.ones((2, 3)))
    assert ring(1).diameter() == 0 and ring(8).diameter() == 4


def test_random_regular_is_seeded_and_regular() -> None:
    a, b, c = (
        random_regular(16, k=4, seed=1),
        random_regular(16, k=4, seed=1),
        random_regular(16, k=4, seed=2),
    )
    np.testing.assert_array_equal(a.W, b.W)
    assert not np.array_equal(a.W, c.W)
    deg = (a.W != 0).sum(axis=1) - 1
    assert set(deg.tolist()) == {4}
    np.testing.assert_allclose(a.W[a.W != 0], 1 / 5)


# ---------------------------------------------------------------- checks


def test_check_rejects_non_doubly_stochastic() -> None:
    W = np.array([[0.5, 0.5, 0.0], [0.2, 0.5, 0.2], [0.0, 0.3, 0.7]])
    with pytest.raises(TopologyError, match=r"row 1 of W sums to 0\.9, not 1 \(worst row"):
        check(W)
    cols = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])  # rows fine
    with pytest.raises(TopologyError, match=r"column 1 of W sums to 1\.5, not 1 .* the average drifts"):
        check(cols)


def test_check_rejects_disconnected() -> None:
    W = np.kron(np.eye(2), np.full((2, 2), 0.5))
    with pytest.raises(
        TopologyError, match=r"disconnected \(2 components\): ranks \[2, 3\] are cut off from rank 0"
    ):
        check(W)
    check(W, connected=False)


def test_check_rejects_wrong_size_negative_nonfinite_nonsquare() -> None:
    with pytest.raises(TopologyError, match=r"^W is 3x3 but the job has 4 ranks$"):
        check(_J(3), 4)
    W = np.array([[1.5, -0.5], [-0.5, 1.5]])
    with pytest.raises(TopologyError, match=r"W\[0, 1\] = -0\.5 is negative: .*\(2 negative entries\)"):
        check(W)
    W = _J(2).copy()
    W[1, 0] = np.nan
    with pytest.raises(TopologyError, match=r"W\[1, 0\] = nan: every weight must be finite"):
        check(W)
    with pytest.raises(TopologyError, match=r"non-empty square matrix \(got 2x3\)"):
        check(np.ones((2, 3)) / 3)


def test_check_symmetric_and_periodic() -> None:
    W = one_peer_exponential(4).at(0).W
    check(W)
    with pytest.raises(TopologyError, match=r"not symmetric: W\[\d, \d\] = 0\.5 but W\[\d, \d\] = 0"):
        check(W, symmetric=True)
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # connected, doubly stochastic, never mixes
    with pytest.raises(TopologyError, match="spectral radius 1 >= 1"):
        check(swap)


def test_uniform_weights_rejected_on_a_star_metropolis_passes() -> None:
    with pytest.raises(TopologyError, match=r"star\(uniform\): column 0 of W sums to 2\.2"):
        build_schedule("star", 5, weights="uniform")
    build_schedule("star", 5, weights="metropolis")
    edges = [(0, j) for j in range(1, 5)]
    np.testing.assert_allclose(uniform(5, edges).sum(axis=1), 1.0)  # rows are fine
    check(metropolis(5, edges), symmetric=True)
    check(uniform(4, [(0, 1), (1, 2), (2, 3), (3, 0)]))  # regular: uniform is doubly stochastic


def test_schedule_check_names_the_step() -> None:
    bad = Topology("bad", np.array([[0.5, 0.5], [0.6, 0.4]]))
    with pytest.raises(TopologyError, match=r"^mix, step 1 of 2: column"):
        check_schedule(Schedule("mix", (complete(2), bad)))
    ident = Topology("id", np.eye(3))
    with pytest.raises(TopologyError, match=r"over a period of 2 steps: the graph is disconnected"):
        check_schedule(Schedule("still", (ident, ident)))


def test_from_edges_errors() -> None:
    with pytest.raises(TopologyError, match=r"edge 1 \[3, 8\] names rank 8 but the job has 8 ranks"):
        from_edges(8, [(0, 1), (3, 8)])
    with pytest.raises(TopologyError, match="self-loop"):
        from_edges(3, [(1, 1)])
    with pytest.raises(TopologyError, match="a pair of ranks"):
        from_edges(3, [(0, 1, 2)])
    with pytest.raises(TopologyError, match="weights must be one of"):
        from_edges(3, [(0, 1)], "max")


# ---------------------------------------------------------------- build_schedule


@pytest.mark.parametrize(
    ("name", "n", "params", "message"),
    [
        ("rnig", 4, {}, r"unknown topology 'rnig': not one of ring, torus"),
        ("ring", 4, {"k": 2}, r"^ring takes no parameters \(got k\)$"),
        ("random_regular", 8, {"kk": 2}, r"random_regular takes k, seed, weights \(got kk\)"),
        ("random_regular", 8, {"k": "3"}, r"k must be an integer >= 0 \(got '3'\)"),
        ("random_regular", 7, {"k": 3}, r"n x k must be even"),
        ("random_regular", 8, {"k": 1}, r"disconnected; use k >= 2"),
        ("random_regular", 4, {"k": 4}, r"k must be < n"),
        ("hypercube", 6, {}, r"power of 2 ranks \(got 6\)"),
        ("torus", 8, {"rows": 3}, r"rows x cols = 3 x 2 = 6 but the job has 8 ranks"),
        ("ring", 0, {}, r"integer >= 1 \(got 0\)"),
        ("missing.toml", 4, {}, r"missing\.toml: no such topology file"),
        ("two_racks", 4, {}, r"two_racks\.toml is for 8 workers but the job has 4 ranks"),
        ("two_racks", 8, {"k": 1}, r"parameters apply to generated topologies only"),
    ],
)
def test_build_schedule_errors(name: str, n: int, params: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        build_schedule(name, n, **params)


def test_build_schedule_unchecked() -> None:
    s = build_schedule("star", 5, check=False, weights="uniform")
    assert s.at(0).name == "star(uniform)"


# ---------------------------------------------------------------- files


def test_shipped_files() -> None:
    assert {"ring8_explicit", "two_racks"} <= {p.stem for p in TOPOLOGY_DIR.glob("*.toml")}
    assert (TOPOLOGY_DIR / "README.md").is_file()
    r8 = build_schedule("ring8_explicit", 8).at(0)
    assert r8.name == "ring8_explicit" and r8.degree == 2
    assert r8.rho() == pytest.approx(0.5 + 0.5 * math.cos(2 * math.pi / 8), abs=1e-12)
    for ref in ("two_racks", "two_racks.toml", str(TOPOLOGY_DIR / "two_racks.toml")):
        racks = build_schedule(ref, 8).at(0)
        assert racks.name == "two_racks"
    assert racks.in_neighbors(3) == [0, 1, 2, 4] and racks.in_neighbors(0) == [1, 2, 3]
    assert racks.W[3, 4] == pytest.approx(1 / 5) and racks.W[0, 1] == pytest.approx(1 / 4)
    assert racks.W[0, 3] == pytest.approx(1 / 5) and racks.W[3, 3] == pytest.approx(1 - 4 / 5)
    assert racks.diameter() == 3 and racks.symmetric
    assert load_topology(TOPOLOGY_DIR / "two_racks.toml").n == 8  # size from `workers`


def test_load_explicit_and_edges(tmp_path: Path) -> None:
    (tmp_path / "w.toml").write_text("W = [[0.5, 0.5], [0.5, 0.5]]\n")
    top = load_topology(tmp_path / "w.toml")
    assert top.name == "w" and top.n == 2 and top.rho() == pytest.approx(0.0)
    (tmp_path / "path3.toml").write_text(
        'name = "p3"\nedges = [[0, 1], [1, 2], [2, 1]]\nweights = "uniform"\n'
    )
    top = load_topology(tmp_path / "path3.toml", 3)
    np.testing.assert_allclose(top.W, uniform(3, [(0, 1), (1, 2)]))
    with pytest.raises(TopologyError, match=r"p3: column 1 of W sums to"):
        build_schedule(tmp_path / "path3.toml", 3)
    (tmp_path / "path4.toml").write_text("edges = [[0, 1], [1, 2], [2, 3]]\n")  # metropolis by default
    s = build_schedule(str(tmp_path / "path4.toml"), 4)
    np.testing.assert_allclose(s.at(0).W, metropolis(4, [(0, 1), (1, 2), (2, 3)]))


@pytest.mark.parametrize(
    ("text", "n", "message"),
    [
        ("W = [[1.0, 0.0]\n", 2, r"bad\.toml: not valid TOML"),
        ("W = [[1.0]]\nedges = [[0, 1]]\n", 1, r"either W .* or edges .*, not both"),
        ('name = "x"\n', 2, r"either W .* or edges .*, not neither"),
        ("W = [[1.0]]\nwieghts = 1\n", 1, r"unknown key\(s\) wieghts"),
        ("W = [[0.5, 0.5], [1.0]]\n", 2, r"W row 1 must be a list of 2 numbers \(got 1 entries\)"),
        ('W = [[0.5, "a"], [0.5, 0.5]]\n', 2, r"W\[0, 1\] = 'a' is not a number"),
        ("W = [[0.5, 0.5], [0.5, 0.5]]\n", 3, r"W is 2x2 but the job has 3 ranks"),
        ('W = [[1.0]]\nweights = "uniform"\n', 1, r"an explicit W needs none"),
        ("workers = 4\nedges = [[0, 1]]\n", 3, r"is for 4 workers but the job has 3 ranks"),
        ("workers = true\nedges = [[0, 1]]\n", 3, r"workers must be an integer >= 1"),
        ("edges = [[0, 1]]\n", None, r"an edge list needs the number of ranks"),
        ("edges = [[0, 5]]\n", 3, r"bad\.toml: edge 0 \[0, 5\] names rank 5"),
        ('edges = [[0, 1]]\nweights = "fast"\n', 3, r"weights must be one of 'metropolis', 'uniform'"),
        ("edges = 3\n", 3, r"edges must be a list of \[i, j\] pairs"),
        ('name = ""\nW = [[1.0]]\n', 1, r"name must be a non-empty string"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, n: int | None, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TopologyError, match=message):
        load_topology(path, n)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no such topology file"):
        load_topology(tmp_path / "nope.toml", 2)
    with pytest.raises(TopologyError, match="no such topology file"):
        build_schedule(str(tmp_path / "nope.toml"), 2)


# ---------------------------------------------------------------- CLI


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_static(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(capsys, "ring", "--workers", "8")
    assert rc == 0 and err == ""
    assert "ring (static)" in out and "degree             2" in out and "diameter           4 hops" in out
    assert "rho                0.804738" in out
    assert "10x smaller in   11 rounds" in out and "1000x smaller in 32 rounds" in out  # 0.8047^11 = 0.092
    assert (
        "doubly stochastic  yes" in out
        and "symmetric          yes" in out
        and "checks             pass" in out
    )


def test_cli_time_varying_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(capsys, "one_peer_exponential", "-n", "8", "--json")
    r = json.loads(out)
    assert rc == 0 and r["period"] == 3 and not r["static"] and r["symmetric"] is False
    assert r["rho_effective"] == pytest.approx(0.0, abs=1e-12)
    assert r["rounds_10x"] == 3  # exact only at the end of a period
    assert [st["rho"] for st in r["steps"]] == pytest.approx([math.cos(math.pi / 8), 1.0, 1.0])
    rc, out, _ = _cli(capsys, "one_peer_exponential", "-n", "8")
    assert "rho_effective      0 per step  (||W_2 W_1 W_0 - J||_2^(1/3), worst start)" in out


def test_cli_params_files_and_failing_checks(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(capsys, "random_regular", "-n", "16", "--param", "k=4", "--param", "seed=3", "--json")
    assert rc == 0 and json.loads(out)["name"] == "random_regular(k=4, seed=3)"
    rc, out, _ = _cli(capsys, "two_racks")  # the file says workers = 8
    assert rc == 0 and "workers            8" in out
    rc, out, _ = _cli(capsys, "star", "-n", "5", "-p", "weights=uniform")
    assert rc == 1 and "doubly stochastic  no" in out and "column 0 of W sums to 2.2" in out
    rc, out, _ = _cli(capsys, "--list")
    assert rc == 0 and "one_peer_exponential" in out and "two_racks" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rnig", "-n", "4"], "unknown topology 'rnig'"),
        (["ring", "-n", "4", "-p", "k=2"], "ring takes no parameters (got k)"),
        (["ring", "-n", "4", "-p", "k"], "--param takes key=value (got 'k')"),
        (["hypercube", "-n", "6"], "power of 2 ranks (got 6)"),
        (["ring"], "--workers N is required for ring"),
        (["ring", "-n", "0"], "--workers must be >= 1"),
        (["ring", "-n", "four"], "argument --workers/-n: invalid int value: 'four'"),
        ([], "give a topology NAME"),
    ],
)
def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mpiml topology: error: ") and message in err


def test_cli_help_and_helpers(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(capsys, "--help")
    assert rc == 0 and "--workers" in out
    assert parse_param("k=4") == ("k", 4) and parse_param("x=0.5") == ("x", 0.5)
    assert parse_param("weights=uniform") == ("weights", "uniform") and parse_param("f=True") == ("f", True)
    assert rounds_to(0.1, 0.0) == 1 and rounds_to(0.1, 1.0) is None and rounds_to(0.1, 0.5) == 4
    assert rounds_to(0.1, 0.5, period=3) == 6  # 0.5^3 per period: 2 periods reach 1/64


def test_no_mpi_import() -> None:
    code = "import sys, mpiml.topology; sys.exit('mpi4py' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_rho_effective_is_the_worst_starting_round() -> None:
    """Non-commuting steps: the bound must hold from any round, not just round 0."""

    def mix(name: str, perm: list[int]) -> Topology:  # x_i <- (x_i + x_perm[i]) / 2
        return Topology(name, (np.eye(4) + np.eye(4)[perm]) / 2)

    swap, cycle = mix("swap", [0, 1, 3, 2]), mix("cycle", [1, 2, 0, 3])
    s = Schedule("mixed", (swap, cycle, swap))
    norms = [float(np.linalg.norm(s.product(t) - _J(4), 2)) for t in range(3)]
    assert norms[0] < max(norms) - 0.05  # round 0 is not the worst start
    assert s.rho_effective() == pytest.approx(max(norms) ** (1 / 3))
    check_schedule(s)
    rng = np.random.default_rng(0)
    for start in range(3):
        X = rng.standard_normal((4, 3))
        e0 = np.linalg.norm(X - X.mean(axis=0))
        for t in range(start, start + 6):
            X = s.at(t).W @ X
        assert np.linalg.norm(X - X.mean(axis=0)) <= s.rho_effective() ** 6 * e0 + 1e-12
