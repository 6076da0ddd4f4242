"""seqgan.py against its paper: the oracle, Monte Carlo rewards, the policy gradient, D, and
the whole schedule from the command line (resume, Ctrl-C, --mle-only, --text).

Paper defaults and the shortened schedule, G's and the oracle's init with one bias per gate, D's
1,720 filters, highway and dropout, D's forward written out by hand (ReLU convs, max over time,
ReLU highway), samples following the probabilities of the forward pass (start token,
temperature), the MLE and policy-gradient updates clipping the global gradient norm, the policy
gradient scoring tokens by G_β's rollouts, the adversarial phase starting G_β as the pretrained G
with D's negatives from G_θ and separate Adam states, a fresh N(0, 1) oracle drawn from the
seed, the inverse-CDF sampler against the categorical distribution, the oracle loader (the
official pickle through an unpickler that admits only numpy arrays, and the .npz form)
against the documented equations in numpy and its errors, the paper's
oracle's reference NLLs (skipped unless the oracle file is found: SEQGAN_ORACLE names it),
rollouts keeping each prefix, rewards in [0, 1] with the last one D itself and Monte Carlo
values of the prefix, pg_loss, d_loss and the MLE loss against their closed forms, the policy
gradient under a constant Q as that constant times the likelihood gradient, policy-gradient
steps learning what D rewards and touching only G, β ← θ and the official delayed copy, D
learning to tell real from generated, `--text` vocabulary, padding, truncation and split, a
text run's held-out NLL and generated text, a tiny run through every phase that resumes exactly
after Ctrl-C, `--mle-only` identical up to the fork, `--oracle`, the sequence NLL against numbers
worked by hand and G read token by token, bad input refused with exit status 2 and one sentence.
"""
import math
import os
import pickle
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import read_metrics

import common
import seqgan

SHARED_ORACLE = Path(os.environ.get("SEQGAN_ORACLE", Path(__file__).resolve().parents[2]
                                    / "shared" / "seqgan" / "oracle_params.npz"))
OFFICIAL_PICKLE = SHARED_ORACLE.with_name("target_params_py3.pkl")   # the official file, byte for byte
# vocabulary 12, length 6, 64 training sequences in batches of 16, a D of 20 filters: a whole
# schedule (3 MLE epochs, 2 D rounds, 3 adversarial epochs) in a few seconds on a CPU
TINY = ["--device", "cpu", "--vocab-size", "12", "--seq-len", "6", "--emb-dim", "8", "--hidden-dim", "8",
        "--d-emb-dim", "8", "--d-filter-scale", "0.02", "--batch-size", "16", "--num-samples", "64",
        "--eval-samples", "64", "--rollout-num", "4", "--k-epochs", "1", "--d-steps", "2", "--eval-every", "2"]
SCHEDULE = ["--pretrain-epochs", "3", "--d-pretrain-rounds", "2", "--epochs", "3"]
METRICS = ("nll_oracle", "nll_test", "loss_mle", "loss_D", "D_acc", "loss_pg", "reward")


@pytest.fixture(autouse=True)
def _one_thread():
    # These networks are tiny: one thread is faster than two, and far faster when other jobs
    # share the two cores (each op otherwise waits for a descheduled second thread).
    torch.set_num_threads(1)


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


class ConstantD(nn.Module):
    """A discriminator whose probability of "real" is p for every sequence."""

    def __init__(self, p):
        super().__init__()
        self.logit = math.log(p / (1 - p))

    def forward(self, tokens):
        return torch.tensor([0.0, self.logit]).expand(len(tokens), 2)


class CountD(nn.Module):
    """P(real) = (number of `token` in the sequence + 0.5) / (T + 1): rewards one token."""

    def __init__(self, token=1):
        super().__init__()
        self.token = token

    def forward(self, tokens):
        f = ((tokens == self.token).sum(1) + 0.5) / (tokens.size(1) + 1)
        return torch.stack([torch.zeros_like(f), torch.log(f / (1 - f))], 1)


def _uniform_G(V, seed=0):
    torch.manual_seed(seed)
    G = seqgan.Generator(V, 4, 4)
    with torch.no_grad():
        G.out.weight.zero_()
        G.out.bias.zero_()      # logits 0: every token has probability 1/V at every step
    return G


def _fake_npz(path, V=7, E=3, H=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"embedding": rng.normal(size=(V, E)), "W_out": rng.normal(size=(H, V)), "b_out": rng.normal(size=V)}
    for g in "ifoc":
        arrays |= {f"W_{g}": rng.normal(size=(E, H)), f"U_{g}": rng.normal(size=(H, H)), f"b_{g}": rng.normal(size=H)}
    np.savez(path, **{k: v.astype(np.float32) for k, v in arrays.items()})
    return arrays


def _numpy_log_likelihood(a, seq):
    """The oracle's equations (official target_lstm.py; seqgan.ORACLE_ARRAYS), in numpy."""
    sig = lambda z: 1 / (1 + np.exp(-z))
    h = c = np.zeros(a["U_i"].shape[0])
    prev, total = 0, 0.0
    for y in seq:
        x = a["embedding"][prev]
        gate = {g: x @ a[f"W_{g}"] + h @ a[f"U_{g}"] + a[f"b_{g}"] for g in "ifoc"}
        c = sig(gate["f"]) * c + sig(gate["i"]) * np.tanh(gate["c"])
        h = sig(gate["o"]) * np.tanh(c)
        logits = h @ a["W_out"] + a["b_out"]
        total += logits[y] - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        prev = y
    return total


# --- defaults and networks -------------------------------------------------------------------
def test_paper_defaults():
    a = seqgan.parse_args([])
    assert (a.vocab_size, a.seq_len, a.emb_dim, a.hidden_dim, a.num_samples, a.batch_size) == (5000, 20, 32, 32,
                                                                                             10000, 64)
    assert (a.g_lr, a.grad_clip, a.d_lr, a.d_emb_dim, a.d_dropout, a.d_l2) == (0.01, 5.0, 1e-4, 64, 0.25, 0.2)
    assert (a.pretrain_epochs, a.g_steps, a.d_steps, a.k_epochs, a.rollout_num) == (120, 1, 5, 3, 16)
    assert a.rollout_update_rate == 0 and not a.mle_only and a.dataset == "oracle"
    assert (a.d_pretrain_rounds, a.epochs) == (10, 20)   # shortened; the paper's are 50 and 200
    full = seqgan.parse_args(["--d-pretrain-rounds", "50", "--epochs", "200"])
    assert (full.d_pretrain_rounds, full.epochs) == (50, 200)


def test_generator_and_oracle_init():
    torch.manual_seed(0)
    G, oracle = seqgan.Generator(5000, 32, 32), seqgan.Oracle(5000, 32, 32)
    assert abs(G.embedding.weight.std().item() - 0.1) < 0.005 and abs(G.out.weight.std().item() - 0.1) < 0.005
    assert abs(oracle.embedding.weight.std().item() - 1) < 0.05 and abs(oracle.out.weight.std().item() - 1) < 0.05
    for net in (G, oracle):  # one bias per gate, as the official LSTM cell
        assert net.lstm.bias_hh_l0.abs().max() == 0 and not net.lstm.bias_hh_l0.requires_grad
    assert not any(p.requires_grad for p in oracle.parameters())
    log_probs = G(torch.randint(5000, (3, 20)))
    assert log_probs.shape == (3, 20, 5000) and torch.allclose(log_probs.exp().sum(-1), torch.ones(3, 20))


def test_samples_follow_the_probabilities_the_forward_pass_gives():
    # sample() (start token 0, temperature 1) and forward() are one model: the frequency of every
    # sequence of length 2 over V = 3 matches exp(Σ_t log G(y_t | Y_{<t})).
    torch.manual_seed(0)
    G = seqgan.Generator(3, 4, 4, init_std=1.0)                              # far from uniform
    every = torch.cartesian_prod(torch.arange(3), torch.arange(3))           # (9, 2)
    p = G(every).gather(2, every[..., None]).sum((1, 2)).exp()
    counts = torch.bincount((lambda s: s[:, 0] * 3 + s[:, 1])(G.sample(40000, 2)), minlength=9)
    assert torch.allclose(counts / 40000, p, atol=0.01), (counts / 40000, p)


def _chi_square(counts, p):
    expected = p * counts.sum()
    keep = p > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_inverse_cdf_draws_the_softmax_distribution_and_never_a_zero_probability_token():
    # 400,000 draws of a fixed distribution with zeros (the first, inner and last tokens): the
    # chi-square statistic of the counts (4 degrees of freedom) stays below 30 (p < 1e-5 by chance).
    p = torch.tensor([0.0, 0.05, 0.3, 0.0, 0.15, 0.4, 0.1, 0.0])
    counts = torch.bincount(seqgan.sample_categorical(p.log().expand(400_000, 8).clone(),
                                                      torch.Generator().manual_seed(0)), minlength=8)
    assert counts[p == 0].sum() == 0 and len(counts) == 8
    assert _chi_square(counts.double(), p.double()) < 30, (counts, p)
    # a wide one, V = 5,000 at the scale of the N(0, 1) oracle's logits: the 10 likeliest tokens
    # and the rest together, 20,000 draws (10 degrees of freedom, below 40: p < 1e-5 by chance)
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(1)) * 3
    rng = torch.Generator().manual_seed(2)
    draws = torch.cat([seqgan.sample_categorical(logits.expand(2000, 5000).clone(), rng) for _ in range(10)])
    top = logits.softmax(-1).double().topk(10)
    p_bins = torch.cat([top.values, 1 - top.values.sum(0, keepdim=True)])
    counts = torch.cat([(draws[:, None] == top.indices).sum(0), (~torch.isin(draws, top.indices)).sum()[None]])
    assert _chi_square(counts.double(), p_bins) < 40, (counts, p_bins * 20_000)


def test_inverse_cdf_never_steps_past_the_last_token_of_positive_probability(monkeypatch):
    # u·S_V can round up to S_V; simulated with u = 1 the draw is the last token that can occur
    rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.ones_like(rand(*a, **k)))
    logits = torch.tensor([[0.0, 1.0, 2.0, -math.inf, -math.inf], [0.0, 1.0, 2.0, 3.0, 4.0]])
    assert seqgan.sample_categorical(logits).tolist() == [2, 4]


def test_sampling_is_deterministic_under_a_seed_and_moves_only_its_generator():
    torch.manual_seed(0)
    G = seqgan.Generator(50, 4, 4, init_std=1.0)
    a = G.sample(100, 7, generator=torch.Generator().manual_seed(3))
    state = torch.get_rng_state()
    b = G.sample(100, 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)    # the global RNG did not move
    torch.manual_seed(4)
    c = G.sample(100, 7)
    torch.manual_seed(4)
    assert torch.equal(c, G.sample(100, 7)) and not torch.equal(a, c)


def test_discriminator_has_1720_filters_highway_and_dropout():
    D = seqgan.Discriminator(5000, 20)
    assert [(c.kernel_size[0], c.out_channels) for c in D.convs] == list(seqgan.WINDOWS)
    assert sum(c.out_channels for c in D.convs) == 1720 and D.convs[0].in_channels == 64
    assert D.transform.in_features == D.gate.out_features == D.out.in_features == 1720
    assert D.dropout.p == 0.25 and D.out.out_features == 2
    assert torch.all(D.out.bias == 0.1) and D.out.weight.abs().max() <= 0.2   # truncated N(0, 0.1)
    x = torch.randint(5000, (8, 20))
    D.eval()
    assert torch.equal(D(x), D(x)) and D(x).shape == (8, 2)
    D.train()
    assert not torch.equal(D(x), D(x))                                       # dropout is on in training
    short = seqgan.Discriminator(50, seq_len=6)                              # windows > T are left out
    assert [c.kernel_size[0] for c in short.convs] == [1, 2, 3, 4, 5, 6] and short.out.in_features == 1000


def test_discriminator_forward_is_relu_convs_max_over_time_then_a_relu_highway():
    # D written out by hand (dropout off): each window as a sum over its positions, ReLU, max
    # over time; highway τ·ReLU(W_H c + b_H) + (1 - τ)·c with τ = σ(W_T c + b_T); linear output.
    torch.manual_seed(0)
    D = seqgan.Discriminator(7, 5, 3, windows=((1, 2), (3, 2))).eval()
    tokens = torch.randint(7, (4, 5))
    e = D.embedding.weight[tokens]                                           # (B, T, E)
    features = []
    for conv in D.convs:
        k = conv.kernel_size[0]
        at = [torch.einsum("bje,nej->bn", e[:, p:p + k], conv.weight) + conv.bias for p in range(5 - k + 1)]
        features.append(torch.stack(at, 2).relu().max(2).values)            # (B, n): max over time
    c = torch.cat(features, 1)
    tau = torch.sigmoid(c @ D.gate.weight.t() + D.gate.bias)
    c = tau * (c @ D.transform.weight.t() + D.transform.bias).relu() + (1 - tau) * c
    with torch.no_grad():
        assert torch.allclose(D(tokens), c @ D.out.weight.t() + D.out.bias, atol=1e-5)


# --- the oracle ------------------------------------------------------------------------------
def test_a_fresh_n01_oracle_scores_its_own_samples_low_and_uniform_tokens_high():
    torch.manual_seed(1)
    oracle = seqgan.Oracle(5000, 32, 32)
    torch.manual_seed(1)
    assert _same(_params(oracle), _params(seqgan.Oracle(5000, 32, 32)))  # drawn from the seed
    own = seqgan.oracle_nll(oracle, oracle.sample(100, 20))
    uniform = seqgan.oracle_nll(oracle, torch.randint(5000, (100, 20)))
    assert own < 7 and uniform > 10, (own, uniform)


def test_npz_loader_reproduces_the_documented_equations(tmp_path):
    a = _fake_npz(tmp_path / "o.npz")
    oracle = seqgan.Oracle.from_file(tmp_path / "o.npz")
    assert oracle.out.out_features == 7 and oracle.lstm.hidden_size == 4
    seqs = torch.randint(7, (4, 9))
    ours = oracle(seqs).gather(2, seqs[..., None]).sum((1, 2)).double()
    ref = torch.tensor([_numpy_log_likelihood(a, s) for s in seqs.tolist()])
    assert torch.allclose(ours, ref, atol=1e-4), (ours, ref)


def test_npz_errors_are_one_sentence(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "partial.npz", embedding=np.zeros((5, 3), np.float32))
    for name in ("bad.npz", "partial.npz", "missing.npz"):
        with pytest.raises(ValueError, match="--oracle"):     # the loader: a plain Python exception
            seqgan.Oracle.from_file(tmp_path / name)
        with pytest.raises(common.UserError, match="--oracle"):  # the command line: one sentence
            seqgan.main(TINY + ["--oracle", str(tmp_path / name)])


class _RunsACommand:
    """Unpickled by plain pickle.load, this would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_official_pickle_format_loads_as_the_npz_does(tmp_path):
    # a list of 15 arrays in the official order (target_lstm.py's params), pickled as the official
    # file is (protocol 3) or by today's default (4): the same oracle as the .npz of the same arrays
    a = _fake_npz(tmp_path / "o.npz", V=7, E=3, H=4)
    for protocol in (3, 4):
        (tmp_path / "o.pkl").write_bytes(pickle.dumps([a[k].astype(np.float32) for k in seqgan.ORACLE_ARRAYS],
                                                      protocol=protocol))
        loaded = seqgan.read_oracle_arrays(tmp_path / "o.pkl")
        assert list(loaded) == list(seqgan.ORACLE_ARRAYS)
        assert all(np.array_equal(loaded[k], a[k].astype(np.float32)) for k in seqgan.ORACLE_ARRAYS)
        sd_pkl, sd_npz = (seqgan.Oracle.from_file(tmp_path / f).state_dict() for f in ("o.pkl", "o.npz"))
        assert all(torch.equal(sd_pkl[k], sd_npz[k]) for k in sd_npz)


def test_a_pickle_that_asks_for_more_than_numpy_arrays_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    payloads = {"system": _RunsACommand(marker),                                   # posix.system
                "hidden in the list": [np.zeros(3, np.float32), _RunsACommand(marker)],
                "another numpy function": None}
    (tmp_path / "system.pkl").write_bytes(pickle.dumps(payloads["system"], protocol=3))
    (tmp_path / "list.pkl").write_bytes(pickle.dumps(payloads["hidden in the list"], protocol=3))
    (tmp_path / "numpy.pkl").write_bytes(b"cnumpy\nload\n(S'x.npy'\ntR.")           # numpy.load('x.npy')
    for name, asked in (("system.pkl", "system"), ("list.pkl", "system"), ("numpy.pkl", "numpy.load")):
        with pytest.raises(ValueError, match=f"asks for .*{asked}.*only numpy arrays"):
            seqgan.read_oracle_arrays(tmp_path / name)
        with pytest.raises(ValueError, match=f"--oracle .*{name}.*asks for"):
            seqgan.Oracle.from_file(tmp_path / name)
    assert not marker.exists()
    pickle.loads((tmp_path / "system.pkl").read_bytes())                           # the payload does work
    assert marker.exists()


@pytest.mark.parametrize("content, error", [
    (pickle.dumps({"embedding": np.zeros((5, 3), np.float32)}, protocol=3), "holds a dict, not a list of 15"),
    (pickle.dumps([np.zeros((5, 3), np.float32)] * 3, protocol=3), "holds a list of 3, not a list of 15"),
    (pickle.dumps([np.zeros((5, 3), np.float32)] * 15, protocol=3), "W_i has shape"),
    (pickle.dumps([np.zeros((5, 3), np.int64)] * 15, protocol=3), "embedding holds int64"),
    (pickle.dumps(list(range(15)), protocol=3), "not a list of 15 numpy arrays"),
    (b"\x80\x03]q\x00(cnumpy", "neither an .npz nor a pickle"),                     # cut short
    (b"not an oracle", "neither an .npz nor a pickle"),
])
def test_a_pickle_that_is_not_the_oracle_is_refused(tmp_path, content, error):
    (tmp_path / "bad.pkl").write_bytes(content)
    with pytest.raises(ValueError, match=error):
        seqgan.read_oracle_arrays(tmp_path / "bad.pkl")


def test_a_bad_oracle_file_is_one_sentence_on_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_RunsACommand(tmp_path / "ran"), protocol=3))
    monkeypatch.setattr(sys, "argv", ["seqgan.py", *TINY, "--oracle", "evil.pkl"])
    with pytest.raises(SystemExit) as exit_:
        common.cli(seqgan.main)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and not (tmp_path / "ran").exists()
    assert err.count("\n") == 1 and err.startswith("seqgan.py: error: --oracle evil.pkl is not an oracle's "
                                                   "parameters: the pickle asks for posix.system"), err


@pytest.mark.skipif(not OFFICIAL_PICKLE.is_file(), reason=f"the official oracle file is not at {OFFICIAL_PICKLE}")
def test_the_official_file_as_downloaded_loads_to_the_papers_oracle():
    loaded = seqgan.read_oracle_arrays(OFFICIAL_PICKLE)
    with np.load(SHARED_ORACLE) as npz:
        assert sorted(npz.files) == sorted(loaded)
        assert all(loaded[k].dtype == npz[k].dtype and np.array_equal(loaded[k], npz[k]) for k in npz.files)
    a, b = (seqgan.Oracle.from_file(f).state_dict() for f in (OFFICIAL_PICKLE, SHARED_ORACLE))
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.skipif(not SHARED_ORACLE.is_file(), reason=f"the paper's oracle is not at {SHARED_ORACLE}")
def test_the_papers_oracle_reproduces_its_reference_nlls():
    oracle = seqgan.Oracle.from_file(SHARED_ORACLE)
    assert oracle.out.out_features == 5000 and oracle.embedding.embedding_dim == oracle.lstm.hidden_size == 32
    torch.manual_seed(0)
    own = seqgan.oracle_nll(oracle, oracle.sample(1000, 20))        # standard error about 0.017
    uniform = seqgan.oracle_nll(oracle, torch.randint(5000, (1000, 20)))
    assert abs(own - 5.74) < 0.08 and abs(uniform - 11.44) < 0.08, (own, uniform)   # the reference NLLs


def test_sequence_nll_is_the_mean_per_token_nll():
    # worked by hand: a G that ignores its input and gives p = (1/2, 1/4, 1/4) at every step;
    # the six tokens cost ln 2, ln 4, ln 4, ln 2, ln 2, ln 4 = 9 ln 2, so 1.5 ln 2 a token
    G = seqgan.Generator(3, 4, 4)
    with torch.no_grad():
        G.out.weight.zero_()
        G.out.bias.copy_(torch.tensor([0.5, 0.25, 0.25]).log())
    assert math.isclose(seqgan.sequence_nll(G, torch.tensor([[0, 1, 2], [0, 0, 1]])), 1.5 * math.log(2),
                        rel_tol=1e-6)
    # each token under the distribution the sampler draws it from: G read token by token from
    # the start token 0 (step), y_t scored by softmax(out(h_t)) after y_1 .. y_{t-1}
    torch.manual_seed(0)
    G = seqgan.Generator(9, 4, 4)
    x = torch.randint(9, (5, 7))
    total, state, prev = 0.0, None, torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        for t in range(7):
            state = G.step(prev, state)
            log_p = G.out(state[0][0]).log_softmax(-1)                    # (5, 9)
            total -= log_p.gather(1, x[:, t:t + 1]).sum().item()
            prev = x[:, t]
    assert math.isclose(seqgan.sequence_nll(G, x), total / 35, rel_tol=1e-5)


# --- Monte Carlo rewards ----------------------------------------------------------------------
def test_rollouts_keep_each_prefix_and_sample_the_rest():
    G = _uniform_G(50)
    tokens = torch.randint(50, (3, 6))
    rolls = seqgan.rollouts(G, tokens, num=5)
    assert rolls.shape == (5, 5, 3, 6)                                  # (T-1, N, B, T)
    for t in range(1, 6):
        assert torch.equal(rolls[t - 1, :, :, :t], tokens[:, :t].expand(5, 3, t))
        assert (rolls[t - 1, :, :, t:] != tokens[:, t:]).float().mean() > 0.8   # resampled, 49/50 differ


def test_rollouts_continue_each_prefix_with_G_betas_conditional_distribution():
    # G_β far from uniform (V = 3, T = 4): the completions of the prefix Y_{1:t} occur as often
    # as G_β(y_{t+1} | Y_{1:t}) ··· G_β(y_T | Y_{1:T-1}) says; a rollout started from the wrong
    # state (the prefix one token short or long, another sequence's) would not.
    torch.manual_seed(0)
    G = seqgan.Generator(3, 4, 4, init_std=1.5)
    tokens = torch.tensor([[2, 0, 1, 1], [1, 2, 2, 0]])
    torch.manual_seed(1)
    rolls = seqgan.rollouts(G, tokens, num=20000)                          # (3, N, 2, 4)
    for t in range(1, 4):
        for b in range(2):
            tails = torch.cartesian_prod(*[torch.arange(3)] * (4 - t)).view(-1, 4 - t)   # every completion
            seqs = torch.cat([tokens[b, :t].expand(len(tails), t), tails], 1)
            p = G(seqs)[:, t:].gather(2, tails[..., None]).sum((1, 2)).exp().detach()  # G_β(completion | prefix)
            code = lambda x: (x * 3 ** torch.arange(x.size(-1) - 1, -1, -1)).sum(-1)  # completion -> index
            counts = torch.bincount(code(rolls[t - 1, :, b, t:]), minlength=len(tails))
            assert torch.equal(rolls[t - 1, :, b, :t], tokens[b, :t].expand(20000, t))
            assert _chi_square(counts.double(), p.double()) < 3 * len(tails) + 30, (t, b, counts, p * 20000)


def test_rollouts_draw_only_the_tokens_after_each_prefix(monkeypatch):
    # N·B rollouts of each prefix length t = 1..T-1 draw T - t tokens each: N·B·T(T-1)/2 draws in
    # all, none for a position its prefix fixes (half of what drawing every position would cost)
    drawn, sample = [], seqgan.sample_categorical
    monkeypatch.setattr(seqgan, "sample_categorical",
                        lambda logits, *a: drawn.append(len(logits)) or sample(logits, *a))
    seqgan.rollouts(_uniform_G(9), torch.randint(9, (3, 6)), num=5)
    assert sum(drawn) == 5 * 3 * 6 * 5 // 2


def test_rewards_shape_range_and_the_last_one_is_D_itself():
    torch.manual_seed(0)
    G, D = seqgan.Generator(10, 4, 4), seqgan.Discriminator(10, 6, 8, windows=((1, 4), (3, 4)))
    D.train()
    tokens = G.sample(4, 6)
    rewards = seqgan.rollout_rewards(G, D, tokens, num=3)
    assert rewards.shape == (4, 6) and rewards.min() >= 0 and rewards.max() <= 1
    D.eval()
    assert torch.equal(rewards[:, -1], D(tokens).softmax(-1)[:, 1])    # t = T: exactly D(Y_{1:T}), dropout off
    D.train()
    seqgan.rollout_rewards(G, D, tokens, num=3)
    assert D.training                                                    # D's mode is given back


def test_a_constant_D_gives_constant_rewards():
    rewards = seqgan.rollout_rewards(_uniform_G(8), ConstantD(0.3), torch.randint(8, (5, 7)), num=4)
    assert torch.allclose(rewards, torch.full((5, 7), 0.3))


def test_rewards_are_monte_carlo_values_of_the_prefix_including_y_t():
    # G uniform over V tokens, D = (count of token 1 + 0.5) / (T + 1): the value of the prefix
    # Y_{1:t} is (ones in Y_{1:t} + (T - t) / V + 0.5) / (T + 1) exactly.
    V, T = 4, 5
    torch.manual_seed(0)
    tokens = torch.tensor([[1, 1, 0, 2, 1], [3, 2, 1, 1, 0], [0, 0, 0, 0, 1]])
    rewards = seqgan.rollout_rewards(_uniform_G(V), CountD(1), tokens, num=3000)
    t = torch.arange(1, T + 1)
    expected = ((tokens == 1).cumsum(1) + (T - t) / V + 0.5) / (T + 1)
    assert torch.allclose(rewards, expected, atol=0.012), (rewards, expected)


# --- losses ---------------------------------------------------------------------------------
def test_pg_loss_closed_form():
    log_probs = torch.log(torch.tensor([[[0.5, 0.5], [0.2, 0.8]]]))          # (B=1, T=2, V=2)
    tokens, rewards = torch.tensor([[0, 1]]), torch.tensor([[1.0, 3.0]])
    expected = -(math.log(0.5) * 1.0 + math.log(0.8) * 3.0)                  # -Σ log G(y_t) Q_t
    assert math.isclose(seqgan.pg_loss(log_probs, tokens, rewards).item(), expected, rel_tol=1e-6)
    two = seqgan.pg_loss(log_probs.repeat(2, 1, 1), tokens.repeat(2, 1), rewards.repeat(2, 1))
    assert math.isclose(two.item(), 2 * expected, rel_tol=1e-6)            # a sum over the batch


def test_with_constant_Q_the_policy_gradient_is_c_times_the_likelihood_gradient():
    torch.manual_seed(0)
    G = seqgan.Generator(9, 4, 4)
    tokens, c = G.sample(6, 5), 0.7
    rewards = torch.full((6, 5), c, requires_grad=True)
    grads = torch.autograd.grad(seqgan.pg_loss(G(tokens), tokens, rewards), list(G.parameters())[:4])
    log_likelihood = -F.cross_entropy(G(tokens).transpose(1, 2), tokens, reduction="sum")   # Σ_b log G(Y_b)
    ref = torch.autograd.grad(log_likelihood, list(G.parameters())[:4])
    for g, r in zip(grads, ref):
        assert torch.allclose(g, -c * r, atol=1e-6)                         # descent on pg_loss = ascent on c·log G
    assert seqgan.pg_loss(G(tokens), tokens, rewards).grad_fn is not None
    assert torch.autograd.grad(seqgan.pg_loss(G(tokens), tokens, rewards), rewards, allow_unused=True)[0] is None


def test_d_loss_and_mle_loss_closed_forms():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1])
    w, b = torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])
    ce = (math.log(1 + math.exp(2)) + math.log(1 + math.exp(-1))) / 2        # -log softmax[label]
    assert math.isclose(seqgan.d_loss(logits, labels, w, b, 0.2).item(), ce + 0.2 * (1 + 4 + 9) / 2, rel_tol=1e-6)
    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]])) + torch.tensor([[[3.0], [-1.0]]])  # unnormalised
    assert math.isclose(seqgan.mle_loss(logits, torch.tensor([[1, 0]])).item(),
                        -(math.log(0.75) + math.log(0.5)) / 2, rel_tol=1e-6)


# --- steps ------------------------------------------------------------------------------------
def test_policy_gradient_steps_learn_what_D_rewards_and_touch_only_G():
    V = 4
    torch.manual_seed(0)
    G, G_beta, D = seqgan.Generator(V, 8, 8), seqgan.Generator(V, 8, 8), CountD(1)
    seqgan.update_rollout(G_beta, G, 0.0)
    opt = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=0.05)
    share = lambda: (G.sample(2000, 5) == 1).float().mean().item()
    before, beta0 = share(), _params(G_beta)
    for _ in range(15):
        loss, reward = seqgan.pg_step(G, G_beta, D, opt, 32, 5, 4, clip=5.0)
    assert share() > before + 0.1, (before, share())
    assert _same(_params(G_beta), beta0) and all(p.grad is None for p in G_beta.parameters())


def test_policy_gradient_step_scores_tokens_by_rollouts_of_G_beta():
    # G_β always writes token 1 and D counts 1s, so Q(Y_{1:t}) = (1s in Y_{1:t} + T - t + 0.5) / (T + 1)
    # exactly (rollouts by G_θ would score less); the loss is pg_loss of these Q before the update.
    V, T, B = 4, 5, 6
    torch.manual_seed(0)
    G, G_beta = seqgan.Generator(V, 4, 4), seqgan.Generator(V, 4, 4)
    with torch.no_grad():
        G_beta.out.weight.zero_()
        G_beta.out.bias.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0]))
    torch.manual_seed(1)
    tokens = G.sample(B, T)
    q = ((tokens == 1).cumsum(1) + (T - torch.arange(1, T + 1)) + 0.5) / (T + 1)
    expected = seqgan.pg_loss(G(tokens), tokens, q).item()
    opt = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=0.01)
    torch.manual_seed(1)                                                     # pg_step draws the same Y ~ G_θ
    loss, reward = seqgan.pg_step(G, G_beta, CountD(1), opt, B, T, 3, clip=5.0)
    assert reward.item() == pytest.approx(q.mean().item(), abs=1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mle_and_policy_gradient_updates_clip_the_global_gradient_norm():
    # Under SGD with lr 1 an update is minus the gradient: its global norm is the clip when the
    # gradient is larger (official tf.clip_by_global_norm).
    torch.manual_seed(0)
    G, G_beta = seqgan.Generator(6, 4, 4), seqgan.Generator(6, 4, 4)
    data = torch.randint(6, (8, 5))
    steps = {"mle": lambda opt, clip: seqgan.mle_epoch(G, opt, data, 8, clip),
             "pg": lambda opt, clip: seqgan.pg_step(G, G_beta, CountD(1), opt, 8, 5, 2, clip)}
    for name, step in steps.items():
        norms = []
        for clip in (1e6, 1e-3):
            before = _params(G)
            step(torch.optim.SGD([p for p in G.parameters() if p.requires_grad], lr=1.0), clip)
            norms.append(torch.cat([(a - b).flatten() for a, b in zip(_params(G), before)]).norm().item())
        assert norms[0] > 0.01 and norms[1] == pytest.approx(1e-3, rel=1e-3), (name, norms)


def test_update_rollout_is_beta_gets_theta_or_the_official_delayed_copy():
    torch.manual_seed(0)
    G, G_beta = seqgan.Generator(6, 3, 3), seqgan.Generator(6, 3, 3).requires_grad_(False)
    theta, beta = dict(G.named_parameters()), {k: v.clone() for k, v in G_beta.named_parameters()}
    seqgan.update_rollout(G_beta, G, 0.8)
    for name, p in G_beta.named_parameters():
        want = theta[name] if name.startswith("embedding") else 0.8 * beta[name] + 0.2 * theta[name]
        assert torch.allclose(p, want), name
    seqgan.update_rollout(G_beta, G, 0.0)
    assert _same(_params(G_beta), _params(G))


def test_d_epochs_learn_to_tell_real_from_generated_and_leave_G_alone():
    torch.manual_seed(0)
    D = seqgan.Discriminator(5, 4, 8, windows=((1, 8), (2, 8)))
    opt = torch.optim.Adam(D.parameters(), lr=1e-2)
    real, fake = torch.full((64, 4), 1), torch.randint(2, 5, (64, 4))
    d0 = _params(D)
    loss, acc = seqgan.d_epochs(D, opt, real, fake, 16, 3, 0.2)
    assert not _same(_params(D), d0) and torch.isfinite(loss) and 0 <= acc <= 1
    seqgan.d_epochs(D, opt, real, fake, 16, 5, 0.2)
    assert seqgan.real_prob(D, real).min() > 0.5 > seqgan.real_prob(D, fake).max()


# --- --text ----------------------------------------------------------------------------------
def test_read_text_vocabulary_padding_truncation_and_split(tmp_path):
    f = tmp_path / "lines.txt"
    f.write_text("a b c d e f g\n\na a b\n  \nb a x\nc a b\n", encoding="utf-8")
    vocab, train, test = seqgan.read_text(f, "word", vocab_size=4, seq_len=5, test_fraction=0.25, seed=0)
    assert len(train) == 3 and len(test) == 1 and train.shape[1] == 5        # 4 non-empty lines
    assert vocab[:2] == ["<pad>", "<unk>"] and len(vocab) == 4             # capped: <pad>, <unk>, 2 tokens
    assert vocab[2] == "a"                                                  # the most frequent training token
    lines = seqgan.decode(torch.cat([train, test]), vocab)
    assert all(len(line.split()) <= 5 for line in lines)
    rows = {tuple(r) for r in torch.cat([train, test]).tolist()}
    assert (2, 3, 1, 1, 1) in rows or (3, 2, 1, 1, 1) in rows  # "a b c d e f g" cut to 5 tokens, c d e unknown
    assert any(r[3:] == (0, 0) for r in rows)                   # three-token lines padded with <pad> = 0
    vocab_c, train_c, _ = seqgan.read_text(f, "char", vocab_size=50, seq_len=6, test_fraction=0.25, seed=0)
    assert " " in vocab_c and all(len(t) == 1 for t in vocab_c[2:])
    assert seqgan.decode(train_c[:1], vocab_c, char=True)[0] in ("a b c ", "a a b", "b a x", "c a b")
    with pytest.raises(ValueError, match="no such file"):
        seqgan.read_text(tmp_path / "none.txt")


def test_text_run_reports_held_out_nll_and_generates_text(tmp_path, capsys):
    words = ["the cat sat", "a dog ran far", "the dog sat", "a cat ran", "the cat ran far away"]
    (tmp_path / "t.txt").write_text("\n".join(words * 8) + "\n", encoding="utf-8")
    seqgan.main(TINY + ["--text", "t.txt", "--pretrain-epochs", "8", "--d-pretrain-rounds", "1", "--epochs", "1",
                        "--out", "run"])
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["nll_test"] and "nll_oracle" not in rows[0] and rows[-1]["loss_pg"]
    assert float(rows[8]["nll_test"]) < float(rows[0]["nll_test"]) - 0.15  # MLE learns the held-out lines
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["vocab"][:2] == ["<pad>", "<unk>"] and ckpt["args"]["dataset"] == "text"
    out = seqgan.main(["--generate", "5", "--resume", "run"])
    lines = Path(out["path"]).read_text(encoding="utf-8").splitlines()
    vocab = set(" ".join(words).split()) | {"<unk>"}
    assert len(lines) == 5 and all(set(line.split()) <= vocab for line in lines)
    assert (tmp_path / "run" / "samples" / "final.txt").is_file()


# --- the whole schedule from the command line -------------------------------------------------
def _metric_rows(run):
    return [{k: r.get(k, "") for k in ("step", "epoch", *METRICS)} for r in read_metrics(run)]


def test_tiny_run_trains_every_phase_and_resumes_exactly_after_ctrl_c(tmp_path, monkeypatch):
    seqgan.main(TINY + SCHEDULE + ["--out", "straight"])
    rows = read_metrics(tmp_path / "straight")
    assert [int(r["step"]) for r in rows] == list(range(9))              # 3 MLE + 2 D rounds + 3 adversarial
    assert [float(r["epoch"]) for r in rows] == [0, 1, 2, 3, 3, 3, 4, 5, 6]   # G's epochs (Fig. 2 axis)
    assert all(rows[i]["loss_mle"] for i in (1, 2, 3)) and all(rows[i]["loss_D"] for i in (4, 5))
    assert all(rows[i]["loss_pg"] and rows[i]["reward"] and rows[i]["loss_D"] for i in (6, 7, 8))
    evaluated = [int(r["step"]) for r in rows if r["nll_oracle"]]
    assert evaluated == [0, 2, 3, 6, 8]          # before training, every 2 G epochs, end of pretraining, end
    assert all(math.isfinite(float(r["nll_oracle"])) and math.isfinite(float(r["nll_test"]))
               for r in rows if r["nll_oracle"])
    assert float(rows[3]["nll_oracle"]) < float(rows[0]["nll_oracle"])   # MLE pretraining learns the oracle
    for name in ("config.json", "checkpoint.pt", "samples/pretrained.txt", "samples/final.txt"):
        assert (tmp_path / "straight" / name).is_file(), name
    nets = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["modules"]
    assert all(torch.equal(nets["G"][k], nets["G_beta"][k]) for k in nets["G"])   # β ← θ after each G update

    calls, mle_epoch = [], seqgan.mle_epoch

    def ctrl_c_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)     # the first Ctrl-C: stop after this step
        return mle_epoch(*args, **kwargs)

    monkeypatch.setattr(seqgan, "mle_epoch", ctrl_c_in_the_second_epoch)
    with pytest.raises(common.Interrupted, match="--resume"):
        seqgan.main(TINY + SCHEDULE + ["--out", "split"])
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["step"] == 2
    seqgan.main(["--resume", "split", "--max-steps", "7"])             # stop again, in the adversarial phase
    seqgan.main(["--resume", "split", "--max-steps", "100"])
    straight, split = _metric_rows(tmp_path / "straight"), _metric_rows(tmp_path / "split")
    losses = lambda r: {k: v for k, v in r.items() if not k.startswith("nll")}
    assert [losses(r) for r in split] == [losses(r) for r in straight]
    # the same NLLs; the run stopped at step 7 also evaluated there
    assert [r["nll_oracle"] for r in split] == [r["nll_oracle"] or split[7]["nll_oracle"] * (i == 7)
                                                for i, r in enumerate(straight)]
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["modules"] for r in ("straight", "split"))
    for net in ("G", "G_beta", "D"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net


def test_adversarial_phase_starts_G_beta_as_the_pretrained_G_and_D_sees_G_thetas_samples(tmp_path, monkeypatch):
    seen, negatives, last = [], [], {}
    pg_step, d_epochs, sample = seqgan.pg_step, seqgan.d_epochs, seqgan.Generator.sample

    def pg_spy(G, G_beta, *args, **kwargs):                                  # θ and β as each G step sees them
        seen.append((_params(G), {k: v.detach().clone() for k, v in G_beta.named_parameters()}))
        return pg_step(G, G_beta, *args, **kwargs)

    def sample_spy(self, *args, **kwargs):
        last.update(by=self, out=sample(self, *args, **kwargs))
        return last["out"]

    def d_spy(D, opt, real, fake, *args, **kwargs):                         # who drew D's negatives
        negatives.append(fake is last["out"] and last["by"].out.weight.requires_grad)   # G_θ (G_β is frozen)
        return d_epochs(D, opt, real, fake, *args, **kwargs)

    monkeypatch.setattr(seqgan, "pg_step", pg_spy)
    monkeypatch.setattr(seqgan, "d_epochs", d_spy)
    monkeypatch.setattr(seqgan.Generator, "sample", sample_spy)
    seqgan.main(TINY + ["--pretrain-epochs", "1", "--d-pretrain-rounds", "1", "--epochs", "2",
                        "--rollout-update-rate", "0.8", "--out", "run"])
    assert negatives == [True] * 5                                           # 1 pretraining round + 2 × 2 d-steps
    (theta0, beta0), (theta1, beta1) = seen
    assert _same(list(beta0.values()), theta0)                               # G_β starts as the pretrained G
    for (name, b1), b0, t1 in zip(beta1.items(), beta0.values(), theta1):   # then β ← 0.8β + 0.2θ
        assert torch.allclose(b1, t1 if name.startswith("embedding") else 0.8 * b0 + 0.2 * t1), name
    nets = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["modules"]
    # separate Adam states: 4 MLE batches (64 sequences / 16) and 2 policy-gradient steps
    assert [float(nets[o]["state"][0]["step"]) for o in ("opt_mle", "opt_pg")] == [4, 2]


def test_mle_only_is_the_same_pretraining_then_more_mle_epochs(tmp_path):
    seqgan.main(TINY + SCHEDULE + ["--out", "gan"])
    seqgan.main(TINY + SCHEDULE + ["--mle-only", "--out", "mle"])
    gan, mle = _metric_rows(tmp_path / "gan"), _metric_rows(tmp_path / "mle")
    assert mle[:4] == gan[:4]                                            # identical up to the fork
    assert [float(r["epoch"]) for r in mle] == [0, 1, 2, 3, 4, 5, 6]     # the same G epochs, no D rounds
    assert all(r["loss_mle"] and not r["loss_pg"] and not r["loss_D"] for r in mle[1:])
    assert mle[-1]["nll_oracle"] and gan[-1]["nll_oracle"]               # Table 1's pair, at the same epoch


def test_oracle_flag_loads_the_file(tmp_path):
    arrays = _fake_npz(tmp_path / "o.npz", V=7, E=3, H=4)
    out = seqgan.main(TINY + ["--oracle", "o.npz", "--mle-only", "--pretrain-epochs", "1", "--epochs", "1",
                              "--out", "run"])
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["args"]["vocab_size"] == 7 and ckpt["modules"]["G"]["out.weight"].shape == (7, 8)
    assert torch.equal(ckpt["state"]["oracle"]["embedding.weight"], torch.from_numpy(arrays["embedding"]).float())
    assert ckpt["state"]["train"].max() < 7 and math.isfinite(out["nll_oracle"])
    written = seqgan.main(["--generate", "3", "--resume", "run"])["path"]
    assert [len(line.split()) for line in Path(written).read_text().splitlines()] == [6, 6, 6]


@pytest.mark.parametrize("argv, message", [
    (["--oracle", "a.npz", "--text", "b.txt"], "--oracle and --text exclude each other"),
    (["--image-size", "32"], "--image-size is for the image scripts; seqgan.py trains on an oracle"),
    (["--dataset", "mnist"], "--dataset is for the image scripts; seqgan.py trains on an oracle"),
    (["--seq-len", "1"], "--seq-len must be 2 or more"),
    (["--text", "missing.txt"], "--text missing.txt: no such file."),
    (["--oracle", "missing.npz"], "--oracle missing.npz: no such file."),
    (["--batch-size", "100"], "--batch-size 100 is larger than the training set (64 sequences)."),
])
def test_bad_input_is_refused(argv, message, tmp_path, monkeypatch, capsys):
    # `python seqgan.py ...`: exit status 2, one sentence on stderr (after argparse's usage, for
    # a bad flag), no traceback, and no run folder left behind
    monkeypatch.setattr(sys, "argv", ["seqgan.py", *TINY, *argv])
    with pytest.raises(SystemExit) as e:
        common.cli(seqgan.main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and lines[0].startswith("seqgan.py: error: ") and message in lines[0], err
    assert list(tmp_path.iterdir()) == []
