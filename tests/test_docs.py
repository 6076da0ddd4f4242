"""The documentation as a reader meets it: README.md short enough to read in minutes, a LICENSE,
and text that speaks only of the project itself.

Every text file of the product (README.md, docs/, the scripts and common.py, tests/, benchmarks/
with its results, shell scripts) is searched for words about how the project is built rather
than what it is (FORBIDDEN: figures promised for later, the tools and machines of its making,
tracker numbers, paths outside the repository). A test may still look for the SeqGAN oracle
beside the repository by building the path in code.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".sh", ".txt", ".json", ".csv", ".toml", ""}

# Assembled from pieces so that this file does not match itself.
FORBIDDEN = re.compile("|".join([
    r"\b" + "ow" + r"ed\b",
    r"\b" + "sess" + r"ions?\b",
    "len" + "t to",
    "timeout" + "_s",
    "carry" + "=",
    "issue" + r" [0-9]",
    r"\.\./" + "shared",
    "development" + " machine",
    "device" + " tool",
]), re.IGNORECASE)


def product_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "LICENSE", *ROOT.glob("*.py"), *ROOT.glob("*.sh")]
    for folder in ("docs", "tests", "benchmarks", ".ci"):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file()
                  and ".cache" not in p.parts and "__pycache__" not in p.parts]
    return sorted(p for p in files if p.is_file() and p.suffix in TEXT_SUFFIXES)


def test_readme_is_at_most_300_lines_and_starts_with_samples_and_the_quickstart():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines"
    head = "\n".join(lines[:40])
    assert "![" in "\n".join(lines[:10]), "no image on the README's first screen"
    for command in ("pip install -r requirements.txt", "python dcgan.py", "python -m pytest"):
        assert command in head, f"{command!r} is not in the README's first 40 lines"


def test_the_readme_images_and_links_exist():
    for folder, name in ((ROOT, "README.md"), (ROOT / "benchmarks", "README.md"),
                         (ROOT / "docs", "fast.md"), (ROOT / "docs", "multi-gpu.md")):
        text = (folder / name).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (folder / target).exists(), f"{name} links to a missing {target}"


def test_license_is_mit_and_named_in_the_readme():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "Copyright (c)" in text
    assert "[LICENSE](LICENSE)" in (ROOT / "README.md").read_text(encoding="utf-8").split("\n## ")[-1]


def test_product_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in product_files()}
    for expected in ("README.md", "dcgan.py", "common.py", "benchmarks/README.md", "benchmarks/quality.py",
                     "benchmarks/speed_gpu.sh", "tests/test_seqgan.py", "docs/multi-gpu.md"):
        assert expected in names


@pytest.mark.parametrize("path", product_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_word_about_how_the_project_is_developed(path):
    hits = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
            for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert not hits, "\n".join(hits)
