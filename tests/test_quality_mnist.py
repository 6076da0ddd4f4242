"""benchmarks/quality.py's MNIST tier: the matching of InfoGAN's code values to digits, the
handwriting measures (slant, ink, stroke width) on hand-drawn strokes, the correlation of a code
with them, the tier's configurations (each run within its CPU budget, the scripts' own flags)
and tables; with MNIST in shared/data beside the repository (skipped without it): the digit
classifier and the tier's path end to end on a few hundred digits with tiny networks.
"""
import importlib
import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import quality  # noqa: E402

import infogan  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny networks: faster on one thread of a shared CPU
MNIST = ROOT.parent / "shared" / "data"
needs_mnist = pytest.mark.skipif(not (MNIST / "MNIST" / "raw").is_dir(), reason="no MNIST beside the repository")
# The tier's path needs a digit classifier, not a good one: this one trains in a second.
TINY_DIGITS = {"n_train": 512, "n_test": 200, "epochs": 2, "width": 4, "features": 16, "batch_size": 64}


# ----------------------------------------------------------------------------------------------
# Matching code values to digits
# ----------------------------------------------------------------------------------------------
def test_best_matching_finds_what_greedy_misses_and_handles_ties_and_rectangles():
    # greedy takes the 5 and is left with 0; the best matching is 4 + 4
    assert quality.best_matching([[5, 4], [4, 0]]) == ([1, 0], 8)
    # a permuted diagonal: the permutation back
    perm = [3, 0, 4, 1, 2]
    confusion = torch.zeros(5, 5, dtype=torch.long)
    confusion[range(5), perm] = torch.tensor([7, 8, 9, 10, 11])
    assert quality.best_matching(confusion) == (perm, 45)
    # ties: every matching of the first two codes is as good; the third code takes the third label
    mapping, matched = quality.best_matching([[2, 2, 0], [2, 2, 0], [0, 0, 1]])
    assert matched == 5 and sorted(mapping[:2]) == [0, 1] and mapping[2] == 2
    mapping, matched = quality.best_matching([[3, 3], [3, 3]])
    assert matched == 6 and sorted(mapping) == [0, 1]
    assert quality.best_matching([[0, 0], [0, 0]])[1] == 0
    # more codes than labels: a code is left over (-1); more labels than codes: a label is
    assert quality.best_matching([[5, 0], [4, 1], [0, 6]]) == ([0, -1, 1], 11)
    assert quality.best_matching([[1, 5, 0], [0, 5, 2]]) == ([1, 2], 7)


def test_best_matching_agrees_with_brute_force_and_the_scripts_own():
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        rows, cols = torch.randint(1, 7, (2,), generator=g).tolist()
        m = torch.randint(0, 4, (rows, cols), generator=g)
        mapping, matched = quality.best_matching(m)
        if rows <= cols:
            brute = max(sum(int(m[i, p[i]]) for i in range(rows)) for p in itertools.permutations(range(cols), rows))
        else:
            brute = max(sum(int(m[p[j], j]) for j in range(cols)) for p in itertools.permutations(range(rows), cols))
        assert matched == brute
        used = [label for label in mapping if label >= 0]
        assert len(used) == len(set(used)) == min(rows, cols)                # one to one
        assert sum(int(m[c, label]) for c, label in enumerate(mapping) if label >= 0) == matched
        assert infogan.matched_accuracy(m) == pytest.approx(matched / max(1, int(m.sum())))


def test_matched_error_of_a_relabelled_code_and_the_digit_order():
    labels = torch.arange(10).repeat(30)
    code_of_digit = torch.tensor([4, 7, 0, 9, 1, 3, 8, 2, 6, 5])
    codes = code_of_digit[labels].clone()
    codes[:10] = (codes[:10] + 1) % 10                      # 10 of 300 digits get another code
    mapping, matched = quality.best_matching(quality.confusion_matrix(codes, labels, 10))
    assert matched == 290 and quality.code_accuracy(codes, labels, 10) == pytest.approx(290 / 300)
    assert [mapping[c] for c in code_of_digit] == list(range(10))
    assert quality.digit_order(mapping) == code_of_digit.tolist()   # grid row d: the code of digit d
    assert quality.digit_order([1, -1, 0]) == [2, 0, 1]             # a code left over comes last


# ----------------------------------------------------------------------------------------------
# Handwriting measures on drawn strokes
# ----------------------------------------------------------------------------------------------
def stroke(slant=0.0, width=3.0, top=4, bottom=23, size=28):
    """A straight stroke drawn as ink (255) on black: its axis moves `slant` pixels to the right
    per pixel upwards; its width `width` pixels measured across the stroke (upright: exactly
    `width` pixels in each row, the axis on a pixel's centre for an odd width, between two for
    an even one)."""
    y = torch.arange(size, dtype=torch.float64).view(-1, 1)
    x = torch.arange(size, dtype=torch.float64).view(1, -1)
    axis = (14.0 if round(width) % 2 else 13.5) + slant * ((top + bottom) / 2 - y)
    across = (x - axis).abs() / math.sqrt(1 + slant ** 2)   # distance from the axis
    ink = (across < width / 2) & (y >= top) & (y <= bottom)
    return (ink.to(torch.uint8) * 255)[None, None]             # (1, 1, size, size)


@pytest.mark.parametrize("s", [-0.5, -0.25, 0.0, 0.25, 0.5])
def test_slant_is_the_slant_a_stroke_was_drawn_with(s):
    for width in (2.0, 4.0):
        assert quality.slant(stroke(s, width)).item() == pytest.approx(s, abs=0.03)
    assert quality.slant(torch.flip(stroke(s), [-1])).item() == pytest.approx(-s, abs=0.03)  # mirrored


def test_slant_of_an_image_without_ink_or_height_is_zero():
    assert quality.slant(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)).item() == 0.0
    flat = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    flat[0, 0, 14, 5:20] = 255                                      # one row: no height to lean over
    assert quality.slant(flat).item() == 0.0


def test_a_thicker_stroke_has_more_ink_and_a_wider_stroke_width():
    thin, thick = stroke(0.3, 2.0), stroke(0.3, 5.0)
    assert quality.ink_area(thick).item() > 2 * quality.ink_area(thin).item()
    assert quality.stroke_width(thick).item() > 2 * quality.stroke_width(thin).item()
    for width in (2.0, 3.0, 4.0, 5.0):
        # the width drawn, less the share of the stroke's two ends: w L / (L + w) for length L...
        for s in (0.0, 0.25, 0.5):
            assert quality.stroke_width(stroke(s, width)).item() == pytest.approx(width * 20 / (20 + width), rel=0.15)
        # ...as much for a short stroke, which has less ink
        short = quality.stroke_width(stroke(0.0, width, top=9, bottom=18)).item()
        assert short == pytest.approx(width * 10 / (10 + width), rel=0.15)
    assert quality.ink_area(stroke(0.0, 3.0)).item() > 1.8 * quality.ink_area(stroke(0.0, 3.0, top=9, bottom=18)).item()
    assert quality.stroke_width(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)).item() == 0.0
    assert quality.ink_area(torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)).item() == 16


def test_within_group_correlation_sees_only_the_change_within_each_group():
    c = torch.linspace(-1, 1, 10).repeat(20)
    offsets = torch.randn(20, generator=torch.Generator().manual_seed(1)).repeat_interleave(10) * 100
    assert quality.within_group_correlation(c, 0.1 * c + offsets, 10) == pytest.approx(1.0)
    assert quality.within_group_correlation(c, -c + offsets, 10) == pytest.approx(-1.0)
    noise = torch.randn(200, generator=torch.Generator().manual_seed(2))
    assert abs(quality.within_group_correlation(c, noise + offsets, 10)) < 0.3
    v = 0.1 * c + offsets
    v[3] = float("nan")                                              # its group is dropped
    assert quality.within_group_correlation(c, v, 10) == pytest.approx(1.0)


class StrokeGenerator(torch.nn.Module):
    """An InfoGAN-shaped G whose first continuous code is the slant and whose second is the
    stroke width of the stroke it draws: code_correlations must find each."""

    def __init__(self, nz, cat_dim):
        super().__init__()
        self.first_code = nz + cat_dim

    def forward(self, latent):
        c2, c3 = latent[:, self.first_code], latent[:, self.first_code + 1]
        images = [stroke(0.4 * float(a), 3.0 + 1.5 * float(b)) for a, b in zip(c2, c3)]
        return torch.cat(images).float().div(127.5).sub(1)


def test_code_correlations_tell_the_slant_code_from_the_width_code():
    args = infogan.parse_args(["--device", "cpu"])
    out = quality.code_correlations(StrokeGenerator(args.nz, args.cat_dim), infogan, args, 200, "cpu")
    assert out["c2_corr_slant"] > 0.95 and abs(out["c2_corr_width"]) < 0.3
    assert out["c3_corr_width"] > 0.95 and out["c3_corr_ink"] > 0.95 and abs(out["c3_corr_slant"]) < 0.3


# ----------------------------------------------------------------------------------------------
# The tier's configurations and tables
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_root(tmp_path):
    """A --data-root that holds an (empty) MNIST/raw/: enough to plan the tier's runs."""
    (tmp_path / "data" / "MNIST" / "raw").mkdir(parents=True)
    return tmp_path / "data"


# What an MNIST run may change besides the laptop tier's sizes: the data and, for infogan, nothing
# (its networks are the paper's, the script's defaults).
_MNIST_MAY_CHANGE = {"image_size", "final_size", "channels", "ngf", "ndf", "width", "ch", "n_filters", "fc_units",
                     "kernel_size", "fmap_base", "fmap_max", "nz", "batch_size", "dataset_size", "epochs",
                     "images_per_phase", "seed", "device", "attention_res", "dataset", "data_root"}


@pytest.mark.parametrize("script", quality.MNIST_SCRIPTS)
def test_mnist_runs_are_the_laptop_preset_on_digits_within_half_an_hour(script, tmp_path, fake_root):
    module = importlib.import_module(script)
    a = quality.parse_args(["--tier", "mnist", "--script", script, "--device", "cpu", "--data-root", str(fake_root),
                            "--results-dir", str(tmp_path / "results")])
    jobs = quality.plan(script, a, tmp_path / "work")
    default = vars(module.parse_args([]))
    for job in jobs:
        args = vars(module.parse_args(job["argv"]))
        assert args["dataset"] == "mnist" and Path(args["data_root"]) == fake_root.resolve()
        assert args["channels"] == 1 and args.get("image_size") == (28 if script == "infogan" else 32)
        extra = quality.SPECS[script].variants.get(job["run"], ((), None))[0]
        own = {k for k, v in vars(module.parse_args(list(extra))).items() if v != default[k]}
        assert {k for k in default if args[k] != default[k]} <= _MNIST_MAY_CHANGE | own, job["run"]
        assert job["images"] == quality.mnist_images(script, job["run"])
        assert job["images"] == args["epochs"] * (args["dataset_size"] or quality.MNIST_TRAIN)
        assert quality.mnist_minutes(script, job["run"]) <= quality.MNIST_MINUTES
        assert job["threads"] == 1 and job["resume"] and job["dir"].startswith(str(tmp_path / "work"))
        if job["run"] == "main":   # the preset, then the tier's overrides
            laptop = vars(module.parse_args(quality.laptop_preset(script)))
            laptop["dataset_size"] = laptop["dataset_size"] or quality.MNIST_TRAIN   # (all of them)
            overridden = {k for k in laptop if args[k] != laptop[k]} - {"seed", "device", "dataset", "data_root"}
            assert overridden == {k.lstrip("-").replace("-", "_") for k in quality.MNIST_OVERRIDES[script]}
    if script == "infogan":        # the paper's MNIST networks (Table 1): the script's defaults
        args = vars(module.parse_args(jobs[0]["argv"]))
        assert all(args[k] == default[k] for k in ("ngf", "ndf", "fc_units", "q_units", "nz", "batch_size"))
    if script == "relativistic_gan":
        assert {j["run"] for j in jobs} == {"main", "small-sgan", "small-rasgan"}
        for j in jobs[1:]:
            if j["run"] != "main":
                assert j["argv"][j["argv"].index("--dataset-size") + 1] == "2000"
    seeds = {}
    for job in jobs:
        seeds.setdefault(job["run"], []).append(job["seed"])
    compared = {r for c in quality.tier_comparisons(script, "mnist") for r in c[1:3]}
    compared |= {"main"} if script in quality.CURVE_CLAIMS else set()
    assert seeds == {run: [0, 1, 2] if run in compared else [0] for run in seeds}
    assert set(seeds) == {"main", *quality.MNIST_VARIANTS.get(script, ())}


def test_mnist_tier_defaults_and_refusals(tmp_path, fake_root, capsys):
    a = quality.parse_args(["--tier", "mnist", "--data-root", str(fake_root), "--results-dir", str(tmp_path)])
    assert a.script == list(quality.MNIST_SCRIPTS) and (a.jobs, a.threads, a.suffix) == (2, 1, "-mnist")
    assert a.work == str(ROOT / "benchmarks" / ".work" / "mnist") and a.resume_runs
    (tmp_path / "quality-dcgan-mnist.json").write_text("{}")
    again = quality.parse_args(["--tier", "mnist", "--data-root", str(fake_root), "--results-dir", str(tmp_path)])
    assert "dcgan" not in again.script and len(again.script) == 7 and "skipped" in capsys.readouterr().out
    for argv, says in ((["--script", "cyclegan"], "cyclegan needs two domains"),
                       (["--n-eval", "6000"], "at most 5,000"),
                       (["--classifier", "styles=[\"filled\"]"], "KEY one of version"),
                       (["--classifier", "n_test=20000"], "at most MNIST's"),
                       (["--data-root", str(tmp_path / "nowhere")], "holds no MNIST/raw/")):
        argv = ["--tier", "mnist", "--data-root", str(fake_root), "--results-dir", str(tmp_path), *argv]
        with pytest.raises(SystemExit) as e:
            quality.parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and "Traceback" not in err, err


def test_benchmarks_readme_lists_the_mnist_tiers_configurations_as_they_are():
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert quality.mnist_table() in readme
    assert "python benchmarks/quality.py --tier mnist --data-root DIR" in readme


def test_mnist_results_table_reads_the_digit_measures(tmp_path):
    def metric(*values):
        return quality.summarise(list(values))

    main = {"fd_mnist": metric(3.2), "fd_position": metric(0.01), "classes_covered": metric(10),
            "confident_rate": metric(0.9), "code_acc_q_real": metric(0.93), "c2_corr_slant": metric(0.8),
            "c2_corr_width": metric(0.1), "c2_corr_ink": metric(0.05), "c3_corr_slant": metric(-0.1),
            "c3_corr_width": metric(0.7), "c3_corr_ink": metric(0.75), "train_cpu_s": metric(1380.0)}
    runs = {"main": {"flags": quality.mnist_config("infogan"), "metrics": main}}
    (tmp_path / "quality-infogan-mnist.json").write_text(json.dumps({"runs": runs}))
    sagan = {"main": {"flags": list(quality.with_flags(quality.mnist_config("sagan"), {"--epochs": 1})),
                      "metrics": {"fd_mnist": metric(5.0, 6.0, 7.0), "fd_position": metric(0.02, 0.02, 0.02),
                                  "classes_covered": metric(10, 10, 10), "confident_rate": metric(0.8, 0.8, 0.8)}},
             "no-attention": {"metrics": {"fd_mnist": metric(9.0, 10.0, 11.0)}}}
    (tmp_path / "quality-sagan-mnist.json").write_text(json.dumps({"runs": sagan}))
    header, rule, infogan_row, sagan_row = quality.results_table(tmp_path, "-mnist").splitlines()
    assert "FD-MNIST (fd_position)" in header
    assert infogan_row.startswith("| infogan.py | 3.2 (0.01) | 10/10 | 90% | missed: matched error <= 5% |")
    assert "matched error <= 5%: 0.07" in infogan_row and "| 23 min |" in infogan_row
    assert "c2: ρ slant 0.80, width 0.10, ink 0.05" in infogan_row and "c3: ρ slant -0.10, width 0.70" in infogan_row
    assert sagan_row.startswith("| sagan.py (an earlier configuration) | 6.0 ± 1.0 (0.02) | 10/10 | 80% | met |")
    assert "FD-MNIST main 6 ± 1 against no-attention 10 ± 1 (agrees)" in sagan_row
    rgan = quality.comparisons("relativistic_gan", {}, "mnist")
    assert [c["claim"] for c in rgan] == ["RaSGAN beats SGAN on 2,000 digits (lower FD)"]
    assert rgan[0]["measure"] == "fd_mnist" and rgan[0]["missing"]


# ----------------------------------------------------------------------------------------------
# With MNIST: the digit classifier, the reference sets, the tier end to end
# ----------------------------------------------------------------------------------------------
@needs_mnist
def test_digit_classifier_is_deterministic_and_cached(tmp_path):
    net, report, cfg = quality.digit_classifier("cpu", MNIST, TINY_DIGITS, cache=tmp_path, log=lambda s: None)
    assert cfg["channels"] == 1 and report["n_test"] == 200 and 0 <= report["test_accuracy"] <= 1
    assert report["cache"].startswith("digits-") and (tmp_path / report["cache"]).exists()
    again, report2, _ = quality.digit_classifier("cpu", MNIST, TINY_DIGITS, cache=tmp_path,
                                                 log=lambda s: pytest.fail("trained again"))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters()))
    assert report2["test_accuracy"] == report["test_accuracy"]
    fresh, _, _ = quality.digit_classifier("cpu", MNIST, TINY_DIGITS, cache=None, log=lambda s: None)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), fresh.parameters()))   # the same seed
    features, logits, factors = net(torch.zeros(3, 1, 32, 32))
    assert features.shape == (3, 16) and logits.shape == (3, 10) and factors.shape == (3, 0)


@needs_mnist
def test_mnist_reference_and_floor_sets_are_the_two_halves_of_the_test_digits():
    test, labels = quality.mnist_digits(MNIST, "test", 32)
    assert test.shape == (10000, 1, 32, 32) and test.dtype == torch.uint8 and labels[:3].tolist() == [7, 2, 1]
    ref, other = quality.real_sets("dcgan", type("Args", (), {"image_size": 32})(), 64, "cpu", MNIST)
    assert torch.equal(ref, test[:64]) and torch.equal(other, test[64:128])
    assert quality.mnist_digits(MNIST, "test", 28)[0].shape[-1] == 28


@needs_mnist
def test_mnist_tier_end_to_end_on_a_few_hundred_digits(tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["--tier", "mnist", "--tiny", "--script", "infogan", "began", "sagan", "--budget", "768", "--n-eval", "64",
            "--seeds", "1", "--jobs", "1", "--device", "cpu", "--data-root", str(MNIST), "--results-dir", str(results),
            "--cache", str(tmp_path / "cache"), "--work", str(tmp_path / "work"),
            "--classifier", *[f"{k}={json.dumps(v)}" for k, v in TINY_DIGITS.items()]]
    out = quality.main(argv)
    assert set(out) == {"infogan", "began", "sagan"}
    for s in out:
        r = json.loads((results / f"quality-{s}-mnist.json").read_text())
        assert r["tier"] == "mnist" and "MNIST" in r["protocol"] and r["classifier"]["mnist"]["n_test"] == 200
        main = r["runs"]["main"]
        assert main["images_shown_to_D"] == 768 and "--dataset" in main["flags"]
        assert main["flags"][main["flags"].index("--data-root") + 1] == "DIR"   # (not this machine's folder)
        for key in ("fd_mnist", "kid_mnist", "classes_covered", "confident_rate", "fd_ceiling", "fd_position"):
            assert main["metrics"][key]["n"] == 1, (s, key)
        assert "fd_shapes" not in main["metrics"] and r["anchors"]["fd_floor"] >= 0
        assert len(r["targets"]) == (4 if s == "infogan" else 3)
        assert (results / f"quality-{s}-mnist.png").stat().st_size > 0
    info = json.loads((results / "quality-infogan-mnist.json").read_text())["runs"]["main"]
    m, seed0 = info["metrics"], info["per_seed"]["0"]
    assert m["code_error_q_test"]["mean"] == pytest.approx(1 - m["code_acc_q_real"]["mean"])
    assert sorted(seed0["code_to_digit"]) == list(range(10)) and len(seed0["code_acc_per_epoch"]) == 3
    for code, measure in itertools.product(("c2", "c3"), ("slant", "ink", "width")):
        assert -1 <= m[f"{code}_corr_{measure}"]["mean"] <= 1
    for name in ("c1", "c2", "c3"):
        assert (results / f"quality-infogan-mnist-traversal-{name}.png").stat().st_size > 0
    began = json.loads((results / "quality-began-mnist.json").read_text())
    assert len(began["runs"]["main"]["per_seed"]["0"]["fd_mnist_at_checkpoints"]) == 3
    curve = began["comparisons"][0]
    assert curve["measure"] == "spearman_M_global_vs_fd" and "FD-MNIST" in curve["claim"]
    sagan = json.loads((results / "quality-sagan-mnist.json").read_text())
    assert sagan["comparisons"][0]["measure"] == "fd_mnist" and not sagan["comparisons"][0].get("missing")
    config = json.loads((tmp_path / "work" / "sagan" / "main-seed0" / "config.json").read_text())
    assert config["args"]["num_classes"] == 10                      # class-conditional on the digit
    capsys.readouterr()
    quality.main(["--tier", "mnist", "--table", "--results-dir", str(results), "--data-root", str(MNIST)])
    table = capsys.readouterr().out
    assert quality.mnist_table() in table and "| infogan.py (an earlier configuration) |" in table
    assert (results / "quality-real-mnist.png").stat().st_size > 0
