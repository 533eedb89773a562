"""The docs point somewhere: no citation of paper text files the repository does not hold
(issue #17.8; docs/papers.md gives the references), and every relative link in README.md
and docs/*.md reaches an existing file and, where it names one, an existing heading."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a path to a paper's text: what the docs used to cite (the folder, a name, ".txt")
PAPER_FILE = re.compile(r"papers/[A-Za-z0-9_.-]+\.txt")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout
        return [ROOT / f for f in out.split("\0") if f]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: the source folders
        folders = ("mpiml", "docs", "benchmarks", "examples", "launch", "tests", "topologies")
        return [ROOT / "README.md", *(p for d in folders for p in (ROOT / d).rglob("*") if p.is_file())]


def test_no_file_cites_a_paper_text_file() -> None:
    hits = []
    for path in _tracked():
        if path.suffix in (".h5", ".svg", ".png", ".so") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if PAPER_FILE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "cite the paper (title, authors, arXiv id; docs/papers.md), not a file:\n" + "\n".join(
        hits
    )


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        k = seen.get(slug, 0)
        seen[slug] = k + 1
        out.add(slug if k == 0 else f"{slug}-{k}")
    return out


def _links(path: Path) -> list[tuple[int, str]]:
    out = []
    fenced = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        out += [(n, m.group(1)) for m in LINK.finditer(line)]
    return out


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_heading(doc: Path) -> None:
    bad = []
    for n, target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            bad.append(f"{doc.name}:{n}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{doc.name}:{n}: {target}: no heading #{anchor} in {dest.name}")
    assert not bad, "\n".join(bad)


def test_slug_follows_github() -> None:
    assert _slug(" qsgd, pr_sgd, qpr_sgd, dqpr_sgd: Quantized-PR-SGD and its baselines") == (
        "qsgd-pr_sgd-qpr_sgd-dqpr_sgd-quantized-pr-sgd-and-its-baselines"
    )
    assert _slug(" Mixing time: `mpiml mixing`") == "mixing-time-mpiml-mixing"


def test_documented_variants_of_a_named_example_name_their_own_run() -> None:
    """The plain command of an example writes results/<its run.name>; a documented
    variant of it (an example with --set overrides) that kept the name would stop with
    "already holds a run" when followed after the plain one (issue #17.4)."""
    variant = re.compile(r"mpiml train (examples/[\w.-]+\.toml)([^\n`]*--set[^\n`]*)")
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.toml")]
    bad = [
        f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
        for path in files
        for m in variant.finditer(path.read_text())
        if "run.name=" not in m.group(2)
    ]
    assert not bad, "variants that reuse the example's run folder:\n" + "\n".join(bad)
