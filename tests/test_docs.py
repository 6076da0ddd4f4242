"""The documentation as a reader meets it: README.md short enough to read in minutes, a LICENSE,
and text that speaks only of the project itself.

Every text file of the product (README.md, docs/, the scripts and common.py, tests/, benchmarks/
with its results, shell scripts) is searched for words about how the project is built rather
than what it is (FORBIDDEN: figures promised for later, the tools and machines of its making,
tracker numbers, paths outside the repository), in one test that lists every offending line. A
test may still look for the SeqGAN oracle beside the repository by building the path in code.

Every `python NAME.py ...` command of each script's docstring (its "Run:" and "On a CPU:" lines)
parses with that script's parse_args.
"""
import ast
import importlib
import re
import shlex
from pathlib import Path

import torch

import common

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
                  and not {".cache", ".work", "__pycache__"} & set(p.parts)]  # (ignored: caches, run folders)
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


def test_no_word_about_how_the_project_is_developed():
    for sample in ("a " + "sess" + "ion", "see " + "issue" + " 12", "." + "./" + "shared/x"):
        assert FORBIDDEN.search(sample), sample                      # the pattern catches its words
    hits = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}" for path in product_files()
            for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert not hits, f"{len(hits)} lines speak of how the project is developed:\n" + "\n".join(hits)


SCRIPTS = ("dcgan", "wgan", "relativistic_gan", "infogan", "began", "vaegan", "sagan", "progan", "cyclegan",
           "seqgan")


def docstring_commands(script: str) -> list:
    """The commands of a script's docstring, from its "Run:" line to its end, as (script file,
    argv): each `python NAME.py` and its words, up to two spaces, "(" or ";"."""
    lines = ast.get_docstring(ast.parse((ROOT / f"{script}.py").read_text(encoding="utf-8"))).splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Run:")), None)
    assert start is not None, f"{script}.py: no Run: line"
    return [(m[1], shlex.split(m[2])) for line in lines[start:]
            for m in re.finditer(r"python (\S+)((?: (?! )[^ ;(]+)*)", line)]


def test_the_run_commands_in_every_docstring_parse(tmp_path, capsys):
    # Each command through its script's parse_args, as printed. A command that continues a run
    # (--resume runs/NAME-shapes-<time>, --resume RUN) makes parse_args read that run's flags
    # from its checkpoint: a stand-in checkpoint holding the script's default flags is written at
    # the command's own path, so the flags are checked, not what the run would train or draw.
    # Placeholders for data (./data, lines.txt, an oracle file) are only parsed, never read.
    failures, count = [], 0
    for script in SCRIPTS:
        module = importlib.import_module(script)
        commands = docstring_commands(script)
        if not any(argv[:2] == ["--preset", "laptop"] for _, argv in commands):
            failures.append(f"{script}.py: no `python {script}.py --preset laptop` command")
        for name, argv in commands:
            count += 1
            command = " ".join(["python", name, *argv])
            if name != f"{script}.py":
                failures.append(f"{script}.py: {command}: names another script")
                continue
            if "--resume" in argv:
                run = tmp_path / argv[argv.index("--resume") + 1]
                run.mkdir(parents=True, exist_ok=True)
                torch.save({"script": script, "args": vars(module.parse_args([])), "step": 0, "batches_drawn": 0,
                            "state": {}, "rng": {}, "modules": {}}, run / "checkpoint.pt")
            try:
                module.parse_args(argv)
            except (SystemExit, common.UserError) as e:
                said = [line for line in capsys.readouterr().err.splitlines() if line.strip()
                        and not line.startswith(("usage:", " "))]
                failures.append(f"{script}.py: {command}: {' '.join(said) or e}")
    assert not failures, "\n".join(failures)
    assert count >= 3 * len(SCRIPTS)
