"""benchmarks/quality.py: the measures (FD, KID, coverage, matching, rank correlation), the
feature network, the budget's translation into each script's flags, and the CPU path end to end.

FD exact on scaled and shifted sets, KID unbiased with subsets of at most half the set,
coverage, matching, rank correlation with NaN points dropped, the budget's flags per script,
curve points taken by the step each segment ended at, CycleGAN's reference set independent of
its paired targets, a failed run named while the other scripts are still scored, a script with
a failed comparison run scored from the rest, bad `--classifier` values and existing results
refused, the CPU path end to end with a tiny feature network, the workers stopped with
checkpoints when the command is killed (SIGKILL) or stopped (SIGTERM, then resumed), a run
folder or --work folder in use by another process left alone; slow (`-m slow`, about 3 minutes on
a 2-core CPU): the real feature network separating shapes from noise.
"""
import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402

import common  # noqa: E402
import data  # noqa: E402

# The CPU path needs a feature network, not a good one: TINY_CLASSIFIER trains in a second or two.
# Whether the network separates shapes from noise needs the real one: the default configuration
# (slow: about 3 minutes on 2 CPU cores).
TINY_CLASSIFIER = {"n_train": 512, "n_test": 100, "epochs": 1, "width": 8, "features": 16,
                   "render_sizes": [32], "styles": ["filled"], "batch_size": 64}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    torch.set_num_threads(2)
    cache = tmp_path_factory.mktemp("cache")
    for channels in (1, 3):  # (the laptop tier trains on 1 channel)
        quality.classifier(channels, "cpu", TINY_CLASSIFIER, cache=cache, log=lambda s: None)
    return cache


# ----------------------------------------------------------------------------------------------
# Measures
# ----------------------------------------------------------------------------------------------
def test_frechet_distance_is_zero_for_a_set_and_exact_for_a_scaled_set():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    x = x + 1.5
    assert abs(quality.frechet_distance(x, x)) < 1e-8
    # y = 2x: Σ_y = 4Σ_x, Tr (Σ_x Σ_y)^½ = 2 Tr Σ_x, so FD = ‖μ‖² + Tr Σ_x exactly
    expected = x.mean(0).square().sum() + torch.cov(x.T).trace()
    assert quality.frechet_distance(x, 2 * x) == pytest.approx(float(expected), rel=1e-8)
    # a shift of the mean adds its squared length and nothing else
    shift = torch.linspace(0.1, 0.8, 8, dtype=torch.float64)
    assert quality.frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-8)
    assert quality.frechet_distance(x, x + 2 * shift) > quality.frechet_distance(x, x + shift)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 1000, 8, generator=g)
    same, same_std = quality.kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted, _ = quality.kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-4       # unbiased: centred on 0 (it can be negative)
    assert shifted > 20 * max(abs(same), same_std)


def test_kid_subsets_are_at_most_half_the_set_so_the_std_is_a_spread():
    # n_eval <= 1000 with the default subset size: subsets of the whole set would all be the
    # same set (std 0 up to rounding); half-size subsets differ
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 200, 8, generator=g)
    mean, std = quality.kernel_inception_distance(a, b + 0.3)
    assert std > 1e-3 * abs(mean) and std > 1e-8


def test_coverage_counts_confident_classes_only():
    probs = torch.full((6, 10), 0.01)
    probs[[0, 1, 2, 3], [0, 0, 4, 7]] = 0.91  # four confident samples of classes 0, 0, 4, 7
    probs[4, 2] = 0.85                         # not confident
    cov = quality.coverage(probs)
    assert cov["classes_covered"] == 3
    assert cov["confident_rate"] == pytest.approx(4 / 6)
    assert cov["class_histogram"][0] == 2 and cov["class_histogram"][2] == 0


def test_code_accuracy_recovers_a_permuted_labelling_like_brute_force():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(5, (300,), generator=g)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert quality.code_accuracy(perm[labels], labels, 5) == 1.0
    noisy = torch.where(torch.rand(300, generator=g) < 0.3, torch.randint(5, (300,), generator=g), perm[labels])
    brute = max(sum(int(p[c]) == int(y) for c, y in zip(noisy, labels)) for p in itertools.permutations(range(5)))
    assert quality.code_accuracy(noisy, labels, 5) == pytest.approx(brute / 300)


def test_spearman_and_circular_linear():
    assert quality.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert quality.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # a pair with a NaN (on either side) is dropped, not ranked as the largest value
    nan = float("nan")
    assert quality.spearman([nan, 1, 2, 3, 4], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert quality.spearman([1, 2, 3, 4, 5], [5, 4, nan, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(quality.spearman([nan, 1, 2], [3, 2, 1]))  # fewer than 3 pairs left
    c = torch.linspace(-1, 1, 200)
    assert quality.circular_linear(c, c * 2.5) > 0.9                     # the angle follows c
    g = torch.Generator().manual_seed(3)
    assert quality.circular_linear(c, torch.rand(200, generator=g) * 6.28) < 0.3


# ----------------------------------------------------------------------------------------------
# The feature network
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_classifier_separates_shapes_from_noise_and_is_cached(tmp_path):
    cache = tmp_path / "cache"
    net, report, cfg = quality.classifier(3, "cpu", None, cache=cache, log=lambda s: None)
    assert report["heldout_accuracy"] > 0.98, report  # else the measures built on it mean little
    real = data.render_shapes(data.shape_factors(300, stream=1), 32, 3)
    e = quality.embed(net, real, cfg, "cpu")
    cov = quality.coverage(e["probs"])
    assert cov["confident_rate"] > 0.7 and cov["classes_covered"] == 10
    noise = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    assert quality.coverage(quality.embed(net, noise, cfg, "cpu")["probs"])["confident_rate"] < 0.1
    # FD in its features: real vs real far below real vs noise
    other = data.render_shapes(data.shape_factors(300, stream=0), 32, 3)
    floor = quality.frechet_distance(e["features"], quality.embed(net, other, cfg, "cpu")["features"])
    assert floor < 0.2 * quality.frechet_distance(e["features"], quality.embed(net, noise, cfg, "cpu")["features"])
    # the second call reads the cache: the same weights, no training
    again, report2, _ = quality.classifier(3, "cpu", None, cache=cache,
                                           log=lambda s: pytest.fail("trained again"))
    assert torch.equal(next(again.parameters()), next(net.parameters()))
    assert report2["heldout_accuracy"] == report["heldout_accuracy"]


def test_cyclegan_reference_is_independent_of_the_paired_targets():
    # G_AB(a) is scored against outlines of other shapes, never a's own paired targets (a perfect
    # translator would score FD 0, below the floor); the floor is those targets against that set
    args = argparse.Namespace(image_size=16, channels=3)
    ref, other = quality.real_sets("cyclegan", args, 64, "cpu")
    _, test_B = common.load_unpaired("shapes", image_size=16, channels=3, size=64, split="test")
    assert torch.equal(other, test_B.images.cpu())
    assert not (ref == test_B.images.cpu()).flatten(1).all(1).any()
    assert not (ref == other).flatten(1).all(1).any()


def test_to_input_handles_channels_and_size():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    y = quality.to_input(x, 3, 32)
    assert y.shape == (2, 3, 32, 32) and torch.allclose(y, torch.ones_like(y))
    z = quality.to_input(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), 1, 32)
    assert z.shape == (2, 1, 32, 32) and torch.allclose(z, -torch.ones_like(z))


# ----------------------------------------------------------------------------------------------
# Budgets and the command line
# ----------------------------------------------------------------------------------------------
def test_budget_becomes_each_scripts_flags():
    flags, images = quality.budget_flags("dcgan", None, None, False)
    assert flags[:4] == ("--dataset-size", "60000", "--epochs", "5") and images == 300_000
    flags, images = quality.budget_flags("relativistic_gan", 300_000, 2000, False)
    assert flags[:4] == ("--dataset-size", "2000", "--epochs", "150") and images == 300_000
    flags, images = quality.budget_flags("cyclegan", None, None, False)  # the README's quick schedule
    assert flags == ("--dataset-size", "1000", "--n-epochs", "3", "--n-epochs-decay", "2") and images == 5000
    flags, images = quality.budget_flags("wgan", 100, None, True)
    assert flags[:4] == ("--dataset-size", "100", "--epochs", "1") and "--ngf" in flags


def test_bad_input_is_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        quality.parse_args(["--script", "nope"])
    assert e.value.code == 2
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x").write_text("keep me")
    with pytest.raises(common.UserError, match="already holds files"):
        quality.main(["--script", "dcgan", "--work", str(tmp_path / "w"), "--device", "cpu",
                      "--results-dir", str(tmp_path / "results")])
    assert (tmp_path / "w" / "x").read_text() == "keep me"


@pytest.mark.parametrize("item, says", [
    ("styles=filled", "must be JSON"),                         # was a JSONDecodeError
    ("batch_size=128", "must not exceed n_train"),             # with n_train=100: OneCycleLR's ValueError
    ("render_sizes=[8]", "render_sizes must be"),
    ("epochs=0", "epochs must be a positive integer"),
])
def test_bad_classifier_settings_are_one_sentence(item, says, capsys):
    with pytest.raises(SystemExit) as e:
        quality.parse_args(["--script", "dcgan", "--classifier", "n_train=100", item])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_existing_results_are_kept_without_overwrite(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "quality-dcgan.png").write_text("keep me")
    # refused before anything trains (not even the feature network)
    monkeypatch.setattr(quality, "classifier", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(SystemExit) as e:
        quality.main(["--script", "wgan", "dcgan", "--results-dir", str(results), "--device", "cpu"])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (results / "quality-dcgan.png").read_text() == "keep me"
    assert quality.parse_args(["--script", "dcgan", "--results-dir", str(results), "--overwrite"]).overwrite
    assert quality.parse_args(["--script", "dcgan", "--results-dir", str(results), "--suffix=-b"])


def test_cpu_tiny_path_writes_every_field(tmp_path, tiny_cache):
    cache = tiny_cache
    results = tmp_path / "results"
    argv = ["--script", "dcgan", "--tiny", "--budget", "256", "--n-eval", "64", "--device", "cpu",
            "--results-dir", str(results), "--cache", str(cache), "--work", str(tmp_path / "work"),
            "--classifier", *[f"{k}={json.dumps(v)}" for k, v in TINY_CLASSIFIER.items()]]
    quality.main(argv)
    out = json.loads((results / "quality-dcgan.json").read_text())
    for key in ("device", "device_name", "torch", "date", "n_eval", "seeds", "anchors", "runs", "targets",
                "wall_s", "classifier", "protocol"):
        assert key in out, key
    assert 0 <= out["classifier"]["3ch"]["heldout_accuracy"] <= 1 and out["classifier"]["3ch"]["cache"]
    main = out["runs"]["main"]
    assert main["images_shown_to_D"] == 256 and "--epochs" in main["flags"]
    for metric in ("fd_shapes", "kid_shapes", "classes_covered", "confident_rate", "fd_ceiling", "fd_position"):
        assert set(main["metrics"][metric]) >= {"mean", "std", "n", "values"}, metric
    assert main["metrics"]["fd_shapes"]["n"] == 1 and main["metrics"]["fd_shapes"]["mean"] > 0
    a = out["anchors"]
    assert a["fd_floor"] >= 0 and a["fd_ceiling"]["n"] == 1 and 0 <= a["real_confident_rate"] <= 1
    assert len(main["per_seed"]["0"]["class_histogram"]) == 10
    assert all("met" in t and "value" in t for t in out["targets"].values())
    assert (results / "quality-dcgan.png").stat().st_size > 0
    assert not list((tmp_path / "work").glob("*/main-seed0/checkpoint.pt.tmp"))


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_run_is_named_and_the_other_scripts_are_still_scored(jobs, tmp_path, tiny_cache, capsys):
    # dcgan cannot train on 16 images (batch 32); progan (batch 8) can: progan's JSON is written,
    # dcgan's failure is named with its sentence, and the command fails at the end
    results = tmp_path / "results"
    argv = ["--script", "dcgan", "progan", "--tiny", "--budget", "16", "--n-eval", "16", "--device", "cpu",
            "--jobs", str(jobs), "--results-dir", str(results), "--cache", str(tiny_cache),
            "--work", str(tmp_path / "work"),
            "--classifier", *[f"{k}={json.dumps(v)}" for k, v in TINY_CLASSIFIER.items()]]
    with pytest.raises(common.TrainingError, match="dcgan main seed 0"):
        quality.main(argv)
    out = capsys.readouterr().out
    assert "FAILED dcgan main seed 0: --batch-size 32 is larger than the dataset (16 images)." in out
    assert "dcgan: not scored" in out
    assert not (results / "quality-dcgan.json").exists()
    progan = json.loads((results / "quality-progan.json").read_text())
    assert set(progan["runs"]) == {"main", "fixed-size"}
    assert "Traceback" in (tmp_path / "work" / "dcgan" / "main-seed0.log").read_text()


def _metrics(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["step", "epoch", "images_per_s", "W_estimate", "loss_G"])
        w.writeheader()
        w.writerows(rows)


def test_curve_rows_belong_to_the_segment_of_their_step_not_their_epoch(tmp_path):
    # WGAN: a step draws several critic batches, so the row of a segment's last step carries an
    # epoch just past the segment's end (1.067 at the end of epoch 1)
    run = tmp_path / "main-seed0"
    run.mkdir()
    epochs = [0.4, 0.8, 1.067, 1.4, 1.8, 2.028, 2.4, 2.8, 3.004]
    _metrics(run / "metrics.csv", [{"step": i + 1, "epoch": e, "images_per_s": 1.0, "loss_G": 0.0,
                                     "W_estimate": (i // 3 + 1) * (1 if i % 3 == 2 else 10)}
                                    for i, e in enumerate(epochs)])   # last row of segment k: k + 1
    g = torch.Generator().manual_seed(6)
    for k in range(3):
        torch.save(torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=g), run / f"curve-{k:02d}.pt")
    net, cfg = quality.ShapesNet(3, 4, 8).eval(), {"channels": 3, "input_size": 32}
    real = quality.embed(net, torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=g), cfg, "cpu")
    job = {"dir": str(run), "segments": [1, 2, 3], "segment_steps": [3, 6, 9]}
    out = quality.score_curve("wgan", job, net, cfg, "cpu", real)
    assert out["W_estimate_at_checkpoints"] == [1.0, 2.0, 3.0]
    assert len(out["fd_shapes_at_checkpoints"]) == 3


def test_curve_segments_record_the_step_each_ended_at(tmp_path):
    # a real tiny wgan run in 3 segments: 11 batches an epoch, 5 critic batches a step, so each
    # segment's last row is past its epoch boundary; each curve point is that segment's own row
    job = {"script": "wgan", "run": "main", "seed": 0, "device": "cpu", "dir": str(tmp_path / "main-seed0"),
           "argv": ["--seed", "0", "--device", "cpu", "--dataset-size", "352", "--critic-schedule", "constant",
                    *quality.SPECS["wgan"].tiny],
           "segments": [1, 2, 3], "curve_n": 8, "images": None}
    done = quality.train_job(job)
    assert "error" not in done, done.get("error")
    rows = {int(r["step"]): r for r in quality.read_rows(job["dir"])}
    steps = done["segment_steps"]
    assert steps == [3, 5, 7] and steps[-1] == max(rows)
    assert all(float(rows[s]["epoch"]) > e for s, e in zip(steps, job["segments"]))
    net, cfg = quality.ShapesNet(3, 4, 8).eval(), {"channels": 3, "input_size": 32}
    real = quality.embed(net, torch.load(tmp_path / "main-seed0" / "curve-00.pt"), cfg, "cpu")
    out = quality.score_curve("wgan", done, net, cfg, "cpu", real)
    assert out["W_estimate_at_checkpoints"] == [float(rows[s]["W_estimate"]) for s in steps]


def test_a_failed_comparison_run_leaves_the_script_scored_from_the_others(tmp_path, tiny_cache, capsys,
                                                                          monkeypatch):
    # progan's fixed-size comparison run fails; its main run is scored and the JSON says what failed
    train_job = quality.train_job

    def failing(job):
        return {**job, "error": "loss_D became nan by step 1; stopping.", "wall_s": 0.0,
                "log": "x.log"} if job["run"] != "main" else train_job(job)

    monkeypatch.setattr(quality, "train_job", failing)
    results = tmp_path / "results"
    argv = ["--script", "progan", "--tiny", "--budget", "16", "--n-eval", "16", "--device", "cpu",
            "--results-dir", str(results), "--cache", str(tiny_cache), "--work", str(tmp_path / "work"),
            "--classifier", *[f"{k}={json.dumps(v)}" for k, v in TINY_CLASSIFIER.items()]]
    with pytest.raises(common.TrainingError, match="progan fixed-size seed 0"):
        quality.main(argv)
    assert "(partial: fixed-size seed 0 failed)" in capsys.readouterr().out
    progan = json.loads((results / "quality-progan.json").read_text())
    assert set(progan["runs"]) == {"main"}
    assert progan["failed_runs"] == {"fixed-size seed 0": "loss_D became nan by step 1; stopping."}


# ----------------------------------------------------------------------------------------------
# The laptop tier
# ----------------------------------------------------------------------------------------------
# What a laptop configuration may change: sizes, widths, batch, budget; never a loss, an
# optimiser setting or the update schedule (sagan's attention_res and cyclegan's load_size follow the image size).
_LAPTOP_MAY_CHANGE = {"image_size", "final_size", "channels", "ngf", "ndf", "width", "ch", "n_filters", "fc_units",
                      "kernel_size", "fmap_base", "fmap_max", "nz", "n_blocks", "batch_size", "dataset_size", "epochs",
                      "n_epochs", "n_epochs_decay", "images_per_phase", "seed", "device", "attention_res", "load_size",
                      "num_samples", "eval_samples", "pretrain_epochs", "d_pretrain_rounds", "eval_every", "oracle",
                      "preset"}


@pytest.mark.parametrize("script", quality.SCRIPTS)
def test_laptop_runs_are_the_scripts_own_flags_and_keep_its_method(script, tmp_path):
    import importlib
    module = importlib.import_module(script)
    a = quality.parse_args(["--tier", "laptop", "--script", script, "--device", "cpu",
                            "--results-dir", str(tmp_path)])
    jobs = quality.plan(script, a, tmp_path)
    assert jobs and jobs[0]["run"] == ("seqgan" if script == "seqgan" else "main")
    default = vars(module.parse_args([]))
    for job in jobs:
        args = vars(module.parse_args(job["argv"]))      # the script's own parser accepts them all
        changed = {k for k in default if args[k] != default[k]}
        # a comparison run also changes what its own flags change (--loss sgan, --no-attention, ...)
        extra = ["--mle-only"] if job["run"] == "mle" else list(quality.SPECS.get(script, quality.Spec()).variants
                                                                   .get(job["run"], ((), None))[0])
        own = {k for k, v in vars(module.parse_args(extra)).items() if v != default[k]}
        assert changed <= _LAPTOP_MAY_CHANGE | own, (job["run"], changed)
        assert job["threads"] == 1 and job["resume"]
        if script != "seqgan":
            assert args["channels"] == 1 and args.get("image_size", 0) in (28, 32)
        as_user_runs_it = vars(module.parse_args(["--preset", "laptop", *job["argv"]]))
        assert args == {**as_user_runs_it, "preset": None}  # the run is the preset
    if script == "relativistic_gan":  # the comparison runs on 2,000 images see as many images as one another
        small = [j for j in jobs if j["run"].startswith("small-")]
        assert {j["images"] for j in small} == {quality.LAPTOP_VARIANT_IMAGES[script]}
        assert all(j["argv"][j["argv"].index("--dataset-size") + 1] == "2000" for j in small)
    # seeds 0-2 for every run a comparison or a curve claim rests on; seed 0 alone for the others
    seeds = {}
    for job in jobs:
        seeds.setdefault(job["run"], []).append(job["seed"])
    compared = {r for claim in quality.COMPARISONS.get(script, []) for r in claim[1:3]}
    compared |= {"main"} if script in quality.CURVE_CLAIMS else set()
    assert seeds == {run: [0, 1, 2] if run in compared else [0] for run in seeds}
    assert [j["seed"] for j in jobs] == sorted(j["seed"] for j in jobs)  # every seed 0 first


def test_laptop_tier_runs_all_ten_and_skips_scored_scripts(tmp_path, capsys):
    a = quality.parse_args(["--tier", "laptop", "--results-dir", str(tmp_path)])
    assert a.script == list(quality.SCRIPTS) and (a.jobs, a.threads, a.suffix) == (2, 1, "-laptop")
    (tmp_path / "quality-wgan-laptop.json").write_text("{}")
    a = quality.parse_args(["--tier", "laptop", "--results-dir", str(tmp_path)])
    assert "wgan" not in a.script and len(a.script) == 9 and "skipped" in capsys.readouterr().out
    assert quality.parse_args(["--tier", "laptop", "--results-dir", str(tmp_path), "--overwrite"]).script == \
        list(quality.SCRIPTS)
    with pytest.raises(SystemExit):
        quality.parse_args(["--results-dir", str(tmp_path)])  # the paper tier names its scripts


def test_laptop_targets_and_comparisons_carry_their_sign():
    def runs(classes_min, confident, position, fd_a, fd_b):
        m = {"classes_covered": {"mean": classes_min, "min": classes_min}, "confident_rate": {"mean": confident},
             "fd_position": {"mean": position}, "fd_shapes": {"mean": fd_a}}
        return {"main": {"metrics": m}, "no-attention": {"metrics": {"fd_shapes": {"mean": fd_b}}}}

    met = quality.targets("sagan", runs(10, 0.65, 0.05, 1, 2), {}, "laptop")
    assert all(t["met"] for t in met.values()) and len(met) == 3
    missed = quality.targets("sagan", runs(9, 0.64, 0.051, 1, 2), {}, "laptop")
    assert not any(t["met"] for t in missed.values())
    assert not any(t["met"] for t in quality.targets("sagan", runs(9, 0.5, 0.3, 1, 2), {}, "paper").values())
    better, = quality.comparisons("sagan", runs(8, 0.5, 0.3, 1.0, 2.0))
    worse, = quality.comparisons("sagan", runs(8, 0.5, 0.3, 3.0, 2.0))
    assert better["verdict"] == worse["verdict"] == "one seed"
    assert better["agrees_with_paper"] and better["difference"] == -1.0
    assert not worse["agrees_with_paper"] and worse["difference"] == 1.0
    seq = {"seqgan": {"metrics": {"nll_oracle_final": {"mean": 9.0}}},
           "mle": {"metrics": {"nll_oracle_final": {"mean": 9.1}}},
           "comparison": {"metrics": {"mle_minus_seqgan": {"mean": 0.1}}}}
    assert quality.targets("seqgan", seq, {}, "laptop")["SeqGAN below MLE at the end (NLL_oracle)"]["met"]
    assert quality.comparisons("seqgan", seq)[0]["agrees_with_paper"]


def test_a_claim_agrees_or_disagrees_only_beyond_twice_its_standard_error():
    def seeds(*values):
        return quality.summarise(list(values))

    low, high = seeds(1.0, 1.1, 0.9), seeds(2.0, 2.1, 1.9)         # means 1 and 2, each std 0.1
    assert quality.verdict(low, high) == "agrees"                   # lower is better, 1 < 2 by 12 SE
    assert quality.verdict(high, low) == "disagrees"
    assert quality.verdict(high, low, lower=False) == "agrees"
    wide = seeds(1.0, 2.0, 3.0)                                      # mean 2, std 1: SE of 1 vs 2 is 0.58
    assert quality.verdict(seeds(1.0, 1.1, 0.9), wide) == "within noise"  # 1.0 < 2 * 0.58
    assert quality.verdict(seeds(0.0, 0.1, -0.1), seeds(1.3, 1.4, 1.2)) == "agrees"  # 1.3 > 2 * 0.082
    assert quality.verdict(seeds(1.0), seeds(2.0)) == "one seed"
    assert quality.verdict(seeds(0.9, 0.95, 0.85)) == "agrees"      # a correlation above 0
    assert quality.verdict(seeds(0.5, -0.4, 0.2)) == "within noise"


def test_a_stopped_laptop_run_resumes_and_a_finished_one_is_reused(tmp_path, monkeypatch):
    import subprocess
    import time as _time
    job = {"script": "dcgan", "run": "main", "seed": 0, "device": "cpu", "dir": str(tmp_path / "main-seed0"),
           "argv": ["--seed", "0", "--device", "cpu", "--dataset-size", "64", "--epochs", "200",
                    *quality.SPECS["dcgan"].tiny], "images": None, "threads": 1, "resume": True}
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import quality; "
            f"quality.train_job(json.loads({json.dumps(json.dumps(job))}))")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root)
    ckpt = tmp_path / "main-seed0" / "checkpoint.pt"
    deadline = _time.time() + 120
    while not ckpt.exists() and proc.poll() is None and _time.time() < deadline:
        _time.sleep(0.02)
    proc.kill()  # killed outright (a machine switched off): no Ctrl-C, no final checkpoint
    proc.wait()
    stopped_at = int(torch.load(ckpt, weights_only=False)["step"])
    assert stopped_at < 200 * 2, "the run finished before it could be stopped"
    done = quality.train_job(job)
    assert "error" not in done, done.get("error")
    assert list((tmp_path / "main-seed0").glob("config-resume-*.json")), "trained again instead of resumed"
    assert int(common.read_checkpoint(job["dir"], "dcgan")["step"]) == 200 * 2   # 64 images, batch 32
    assert done["wall_s"] > 0 and 0 < done["cpu_s"] <= 1.5 * done["wall_s"]
    monkeypatch.setattr(quality.importlib.import_module("dcgan"), "main",
                        lambda argv: pytest.fail("a finished run was trained again"))
    again = quality.train_job(job)
    assert again["reused"] and again["wall_s"] == done["wall_s"] and again["cpu_s"] == done["cpu_s"]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "main-seed0").iterdir() if p.name != ".lock"}
    changed = quality.train_job({**job, "argv": [*job["argv"], "--epochs", "300"]})  # a configuration changed
    assert "was trained with other flags" in changed["error"] and "reused" not in changed
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "main-seed0").iterdir() if p.name != ".lock"} == before


def test_results_table_shows_each_scored_script_with_its_measures_and_signs(tmp_path):
    def metric(v):
        return {"mean": v, "std": 0.0, "min": v, "max": v, "n": 1, "values": [v]}

    main = {k: metric(v) for k, v in (("fd_shapes", 12.3), ("fd_position", 0.25), ("classes_covered", 9),
                                     ("confident_rate", 0.61), ("train_wall_s", 1500.0))}
    runs = {"main": {"metrics": main}, "no-attention": {"metrics": {"fd_shapes": metric(15.0),
                                                                     "train_wall_s": metric(1700.0)}}}
    out = {"runs": runs, "targets": quality.targets("sagan", runs, {}, "laptop"),
           "comparisons": quality.comparisons("sagan", runs)}
    (tmp_path / "quality-sagan-laptop.json").write_text(json.dumps(out))
    table = quality.results_table(tmp_path).splitlines()
    assert len(table) == 3   # header, rule, sagan (the nine without a JSON are left out)
    row = table[2]
    assert row.startswith("| sagan.py | 12.3 (0.25) | 9/10 | 61% | missed: all ten classes covered, confident-sample "
                          "rate >= 65%, fd_position <= 0.05 |")
    assert "FD-shapes main 12.3 against no-attention 15 (one seed)" in row
    assert row.endswith("| 28 min |")  # the longest run
    runs["main"]["metrics"]["train_cpu_s"] = metric(1200.0)   # CPU time, where recorded, over wall time
    runs["no-attention"]["metrics"]["train_cpu_s"] = metric(1260.0)
    (tmp_path / "quality-sagan-laptop.json").write_text(json.dumps(out))
    assert quality.results_table(tmp_path).splitlines()[2].endswith("| 21 min |")


def test_benchmarks_readme_lists_the_laptop_tiers_configurations_as_they_are():
    readme = (Path(__file__).resolve().parents[1] / "benchmarks" / "README.md").read_text()
    assert quality.laptop_table() in readme


# ----------------------------------------------------------------------------------------------
# Worker processes and run folders: one writer per run, no worker outlives the benchmark
# ----------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def _tiny_laptop(epochs: int, dataset_size: int):
    """A laptop_preset() whose dcgan configuration is tiny: its tiny networks, `epochs` of
    `dataset_size` images."""
    real = quality.laptop_preset

    def preset(script):
        if script != "dcgan":
            return real(script)
        return [*quality.SPECS["dcgan"].tiny, "--channels", "1", "--epochs", str(epochs), "--dataset-size",
                str(dataset_size)]
    return preset


def _laptop_argv(tmp_path, cache) -> list:
    """--tier laptop (resumable runs in --work), dcgan's two seeds trained at once in workers."""
    return ["--tier", "laptop", "--script", "dcgan", "--seeds", "2", "--jobs", "2", "--n-eval", "32",
            "--device", "cpu", "--work", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results"),
            "--cache", str(cache), "--classifier", *[f"{k}={json.dumps(v)}" for k, v in TINY_CLASSIFIER.items()]]


def _laptop_command(tmp_path, cache, epochs: int, dataset_size: int) -> list:
    """quality.py with _laptop_argv() and _tiny_laptop(epochs, dataset_size), as a command."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); sys.path.insert(0, 'tests'); import common, quality; "
            f"from test_quality import _tiny_laptop; quality.laptop_preset = _tiny_laptop({epochs}, {dataset_size}); "
            "common.cli(quality.main)")
    return [sys.executable, "-c", code, *_laptop_argv(tmp_path, cache)]


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True


def _training_workers(runs: list, proc, timeout: float = 120) -> list:
    """Wait until each run folder has a lock file naming its writer and a first metrics row; the
    writers' PIDs (the worker processes)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        locks = [run / ".lock" for run in runs]
        if all(lock.exists() and lock.read_text().strip() and (run / "metrics.csv").exists()
               for lock, run in zip(locks, runs)):
            return [int(lock.read_text()) for lock in locks]
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the workers did not start training (exit status {proc.poll()})")


def _gone_within(pids: list, seconds: float) -> list:
    """The PIDs still running after `seconds` (killed then, so that the test leaves none behind)."""
    deadline = time.time() + seconds
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return left


def _step(run) -> int:
    return int(torch.load(run / "checkpoint.pt", weights_only=False)["step"])


posix_signals = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


@posix_signals
def test_workers_stop_and_save_when_the_benchmark_is_killed(tmp_path, tiny_cache):
    # SIGKILL to the benchmark alone (no chance to stop its workers): each worker stops as on
    # SIGTERM (a checkpoint) and exits, long before its run (20 epochs of 500 steps) would end
    runs = [tmp_path / "work" / "dcgan" / f"main-seed{s}" for s in (0, 1)]
    proc = subprocess.Popen(_laptop_command(tmp_path, tiny_cache, 20, 16000), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = _training_workers(runs, proc)
    assert proc.pid not in workers
    proc.kill()
    proc.wait()
    assert not _gone_within(workers, 30), "a worker outlived the benchmark"   # (the test kills it then)
    for run in runs:
        assert "SIGTERM: stopping after this step" in run.with_suffix(".log").read_text()
        assert 0 < _step(run) < 20 * 500


@posix_signals
def test_sigterm_stops_the_workers_with_checkpoints_and_the_same_command_resumes(tmp_path, tiny_cache,
                                                                                   monkeypatch):
    runs = [tmp_path / "work" / "dcgan" / f"main-seed{s}" for s in (0, 1)]
    proc = subprocess.Popen(_laptop_command(tmp_path, tiny_cache, 10, 640), cwd=ROOT,   # 200 steps a run
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = _training_workers(runs, proc)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        left = _gone_within(workers, 5)   # (killed then: the test leaves no process behind)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM: stopped; run the same command again" in err, err
    assert not left, "a worker outlived the benchmark"
    stopped = [_step(run) for run in runs]
    assert all(0 < s < 200 for s in stopped), stopped
    # the same command again (here, in this process): each run goes on from its checkpoint
    monkeypatch.setattr(quality, "laptop_preset", _tiny_laptop(10, 640))
    results = quality.main(_laptop_argv(tmp_path, tiny_cache))
    for run, step in zip(runs, stopped):
        assert (run / f"config-resume-{step}.json").exists(), "trained again instead of resumed"
        assert _step(run) == 200
    assert results["dcgan"]["runs"]["main"]["metrics"]["fd_shapes"]["n"] == 2


def _hold_lock(folder):
    """Another process holding a folder's lock (until its stdin closes)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, common; common.lock_folder(sys.argv[1]); "
                               "print('locked', flush=True); sys.stdin.read()", str(folder)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_run_folder_in_use_by_another_process_is_neither_removed_nor_trained(tmp_path, monkeypatch):
    # a run stopped before its first checkpoint is started again from an empty folder, but not
    # while another process (a worker of an earlier benchmark, say) writes there
    run = tmp_path / "dcgan" / "main-seed0"
    (run / "samples").mkdir(parents=True)
    (run / "metrics.csv").write_text("step,loss_D\n1,0.7\n")
    (run / "samples" / "step-0000001.png").write_bytes(b"png")
    job = {"script": "dcgan", "run": "main", "seed": 0, "device": "cpu", "dir": str(run), "images": None,
           "argv": ["--seed", "0", "--device", "cpu", *quality.SPECS["dcgan"].tiny], "threads": 1, "resume": True}
    monkeypatch.setattr(quality.importlib.import_module("dcgan"), "main",
                        lambda argv: pytest.fail("trained a run another process is training"))
    holder = _hold_lock(run)
    try:
        out = quality.train_job(job)
    finally:
        holder.communicate("")
    assert f"in use by another process (PID {holder.pid})" in out["error"]
    assert (run / "metrics.csv").read_text() == "step,loss_D\n1,0.7\n"
    assert (run / "samples" / "step-0000001.png").read_bytes() == b"png"
    assert not (tmp_path / "dcgan" / "main-seed0.progress.json").exists()


def test_a_second_benchmark_on_the_same_work_folder_is_refused_at_start(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(quality, "classifier", lambda *a, **k: pytest.fail("started beside another benchmark"))
    holder = _hold_lock(work)
    try:
        with pytest.raises(common.UserError, match=f"in use by another process \\(PID {holder.pid}\\)"):
            quality.main(["--tier", "laptop", "--script", "dcgan", "--device", "cpu", "--work", str(work),
                          "--results-dir", str(tmp_path / "results")])
    finally:
        holder.communicate("")


@posix_signals
def test_a_worker_whose_benchmark_died_stops_like_sigterm(tmp_path):
    # where the kernel cannot be asked to signal it (no PR_SET_PDEATHSIG), the worker's heartbeat
    # sees its parent gone and stops the run as SIGTERM does: a checkpoint, then Interrupted
    run = tmp_path / "main-seed0"
    job = {"script": "dcgan", "run": "main", "seed": 0, "device": "cpu", "dir": str(run), "images": None,
           "argv": ["--seed", "0", "--device", "cpu", "--dataset-size", "16000", "--epochs", "20",
                    *quality.SPECS["dcgan"].tiny], "threads": 1, "resume": True}
    code = textwrap.dedent(f"""
        import json, os, sys, threading, time
        sys.path.insert(0, "benchmarks")
        import common, quality
        quality._parent, quality._kernel_stops_orphans = os.getppid(), False

        def parent_dies_once_training():
            while not os.path.exists({str(run / "metrics.csv")!r}):
                time.sleep(0.05)
            quality._parent = -1   # (its parent is now another process)

        threading.Thread(target=parent_dies_once_training, daemon=True).start()
        try:
            quality.train_job(json.loads({json.dumps(json.dumps(job))}))
        except common.Interrupted as e:
            sys.exit(f"stopped: {{e}}")
        """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("stopped: interrupted at step"), done.stderr[-2000:]
    assert "SIGTERM: stopping after this step" in run.with_suffix(".log").read_text()
    assert 0 < _step(run) < 20 * 500
