"""SeqGAN: Sequence Generative Adversarial Nets with Policy Gradient — Yu, Zhang, Wang, Yu (2017), arXiv:1609.05473

A GAN cannot pass D's gradient through discrete tokens, so SeqGAN treats the generator as a
reinforcement-learning policy: the state is the prefix generated so far, the action the next
token, and the reward D's probability that a *complete* sequence is real. An unfinished prefix
gets its value by Monte Carlo search: a rollout policy G_β finishes it N times and D scores
the results. G follows the policy gradient (REINFORCE) of those values; D is retrained on
fresh samples between generator updates. The paper's test bed is synthetic: an LSTM with
random weights is the "real" data distribution (the oracle), so the quality of G's samples
can be measured exactly as their NLL under the oracle.

Paper -> code:
  Eq. (1)-(2): J(θ) = E[R_T], the reward of a finished sequence is D(Y_{1:T})  -> real_prob
  Eq. (3)-(4): Q(Y_{1:t-1}, y_t) by N-time Monte Carlo search with G_β           -> rollouts, rollout_rewards
  Eq. (5): D minimises the cross-entropy of real vs generated sequences           -> d_loss, d_epochs
  Eq. (6)-(8): the policy gradient Σ_t E[∇ log G_θ(y_t|Y_{1:t-1}) Q] and ascent   -> pg_loss, pg_step
  Alg. 1: MLE pretraining of G; D pretraining; then repeat {g-steps policy-gradient updates;
      β update; d-steps × (fresh negatives, k epochs of D)}                       -> mle_epoch, train
  "The Generative Model for Sequences": LSTM generator                             -> Generator
  "The Discriminative Model for Sequences": CNN, max-over-time, highway, dropout   -> Discriminator
  "Synthetic Data Experiments": oracle LSTM with N(0, 1) parameters, 10,000 sequences of
      length 20, vocabulary 5,000; NLL_oracle = -E_{Y~G_θ}[Σ_t log G_oracle(y_t|Y_{1:t-1})] -> Oracle, oracle_nll
  The paper's own oracle: the official save/target_params_py3.pkl, read as it is    -> read_oracle_arrays
  Hyperparameters, schedule and initialisation follow the official code (LantaoYu/SeqGAN:
  sequence_gan.py, generator.py, discriminator.py, rollout.py, target_lstm.py).

Rollouts are batched: every prefix length and all N rollouts of every sequence are one batch of
(T-1)·N·B rows, filled by one loop over the T positions, G_β reading each sequence once. Tokens
are drawn by inverse CDF (sample_categorical), the same categorical distribution as
torch.multinomial, and cheaper.

Deviations from the paper and the official code (each tagged `# DEVIATION:` below):
  1. The default schedule is shortened so a run takes minutes on a GPU: 10 rounds of D
     pretraining and 20 adversarial epochs (official: 50 and 200). MLE pretraining keeps the
     official 120 epochs. The paper's full schedule: --d-pretrain-rounds 50 --epochs 200.
  2. D's windows longer than the sequence are left out (only with --seq-len < 20, where they
     have no valid position); at length 20 D has all 12 window sizes, 1,720 filters.
  3. --text (real text) is an extension, scored by held-out NLL; the paper's real-data
     experiments (poems, speeches, music) are scored with BLEU.
Choices where the paper is silent or the sources differ:
  - Rollout policy: Alg. 1's β ← θ after every iteration (--rollout-update-rate 0, the default);
    the official code's β ← 0.8β + 0.2θ (embedding copied) is --rollout-update-rate 0.8.
  - pg_loss sums over batch and time, as the official g_loss (no baseline, no discount, no
    mean); the paper writes an expectation.
  - G and the oracle: one bias per gate as the official LSTM cell (PyTorch's second LSTM bias
    is held at zero). Separate Adam states for MLE and policy gradient, as the official code.
  - Data order as the official loaders: MLE batches in a fixed order; D's real + generated set
    shuffled once per d-step and passed k times (last partial batch dropped).
  - --num-samples and --eval-samples 10,000 each, the paper's training set; the official
    generate_samples makes 9,984 (156 batches of 64): --num-samples 9984 --eval-samples 9984.
  - NLL is evaluated before training and every --eval-every generator epochs, on samples drawn
    with their own RNG, so evaluating never changes the run. The MLE baseline (--mle-only)
    pretrains identically, then continues MLE for --epochs epochs instead of adversarial ones.
  - Highway layers: TF's default init (Glorot uniform, biases too) as the official code.

The oracle: a fresh N(0, 1) oracle drawn from --seed, or the paper's own, the official
save/target_params_py3.pkl (not shipped here), given as --oracle FILE; it is checkpointed. The
last nll_oracle of an --mle-only run and of a SeqGAN run are Table 1's MLE and SeqGAN entries
(paper: 9.038 and 8.736).

Outputs: 32 samples in samples/pretrained.txt and samples/final.txt; `--generate N` writes N
sequences to RUN/generated-<time>.txt, one a line (text up to the first <pad>, or token ids with
their NLL_oracle printed). --text FILE: one sequence a line, --tokens word or char, 10% of the
lines held out (--test-fraction), the most frequent training tokens with <pad> (also the start
token) and <unk>. No images: the image flags are refused, and a run is one process (no torchrun).
The checkpoint is rewritten after every evaluation and at the end of each phase.

A step is one unit of the schedule: an MLE epoch, a D-pretraining round or an adversarial epoch
(--max-steps counts all three). An epoch is one of G's epochs, MLE or adversarial (the x-axis of
the paper's Fig. 2); --epochs counts adversarial epochs (with --mle-only, the MLE ones).

Logged (metrics.csv, a row every step, each step's numbers averaged over its updates; besides
step, epoch and images_per_s, which here counts the sequences that went through a training
update of G or D per second):
  nll_oracle  NLL_oracle, the paper's measure: the oracle's NLL per token of --eval-samples
              (10,000) sequences sampled from G, before training (step 0), every --eval-every
              (5) G epochs, at the end of pretraining and at the end (oracle runs only)
  nll_test    G's NLL per token of held-out sequences (fresh oracle sequences, or the held-out
              lines of --text, pads included), at the same points; it rises if G loses diversity
  loss_mle    mean NLL per token of the training batches (MLE epochs)
  loss_D      D's cross-entropy on its mixed real/generated batches plus the L2 term: ln 2 ≈
              0.693 plus the L2 term when D cannot tell
  D_acc       D's accuracy on those batches (dropout on); 0.5 when D cannot tell
  loss_pg     the policy-gradient loss -Σ_{b,t} log G(y_t) Q_t on the batch of 64 (a sum, as the
              official code)
  reward      mean Q over the batch and positions: how real D finds G's (completed) samples

Samples, scores and the evidence behind the choices: benchmarks/README.md.
Run:  python seqgan.py --epochs 5                         (a fresh N(0, 1) oracle from --seed)
      python seqgan.py --oracle target_params_py3.pkl     (the paper's oracle, the official file as it is)
      python seqgan.py --mle-only                         (the MLE baseline, same schedule)
      python seqgan.py --text lines.txt --tokens word     (your text, one sequence a line)
      python seqgan.py --generate 20 --resume RUN
      python seqgan.py --preset laptop --oracle target_params_py3.pkl   (for a CPU: up to an hour on one core)
"""
from __future__ import annotations

import argparse
import math
import pickle
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

PAD, UNK = "<pad>", "<unk>"  # --text: index 0 pads (and is the start token), 1 is unknown
# (window size, filters) of D: official sequence_gan.py, 1,720 filters in all
WINDOWS = ((1, 100), (2, 200), (3, 200), (4, 200), (5, 200), (6, 100), (7, 100), (8, 100),
           (9, 100), (10, 100), (15, 160), (20, 160))
IMAGE_FLAGS = ("data_root", "download", "image_size", "channels", "dataset_size", "sample_every", "channels_last")


# --preset laptop: the laptop tier's configuration (benchmarks/README.md), made of this script's
# own flags for a 2-core CPU: the paper's oracle, networks and pretraining on 2,000 sequences, 10 adversarial epochs.
# The losses, optimiser settings and update schedule stay the paper's.
PRESETS = {"laptop": "--num-samples 2000 --eval-samples 2000 --pretrain-epochs 120 --d-pretrain-rounds 10 "
                     "--epochs 10"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SeqGAN (Yu et al., 2017)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--oracle", metavar="FILE", default=None,
                   help="fixed oracle parameters: the paper's oracle, save/target_params_py3.pkl of the official "
                        "code (github.com/LantaoYu/SeqGAN), as it is, or an .npz of named arrays (see "
                        "read_oracle_arrays); default: a fresh oracle with N(0, 1) parameters drawn from --seed "
                        "(official target_lstm.py)")
    d.add_argument("--text", metavar="FILE", default=None, help="train on your text: one sequence per line")
    d.add_argument("--tokens", choices=("word", "char"), default="word",
                   help="--text tokens: whitespace-separated words or characters")
    d.add_argument("--test-fraction", type=common.unit_interval, default=0.1,
                   help="--text: share of the lines held out for nll_test")
    d.add_argument("--vocab-size", type=common.positive_int, default=5000,
                   help="oracle vocabulary (synthetic experiment: 5,000; --oracle FILE sets it); with "
                        "--text the largest vocabulary kept, <pad> and <unk> included")
    d.add_argument("--seq-len", type=common.positive_int, default=20, help="sequence length T (synthetic data: 20)")
    d.add_argument("--num-samples", type=common.positive_int, default=10000,
                   help="oracle sequences in the training set (synthetic experiment: 10,000)")
    d.add_argument("--eval-samples", type=common.positive_int, default=10000,
                   help="G samples scored for nll_oracle; held-out oracle sequences for nll_test (official: 9,984, "
                        "156 batches of 64)")
    d.add_argument("--eval-every", type=common.positive_int, default=5, help="NLL every N G epochs (official: 5)")
    m = p.add_argument_group("networks and optimisers (official code)")
    m.add_argument("--emb-dim", type=common.positive_int, default=32, help="G's embedding size")
    m.add_argument("--hidden-dim", type=common.positive_int, default=32, help="G's LSTM size")
    m.add_argument("--g-lr", type=common.positive_float, default=0.01,
                   help="Adam learning rate of G, MLE and policy gradient")
    m.add_argument("--grad-clip", type=common.positive_float, default=5.0, help="G's global gradient-norm clip")
    m.add_argument("--d-emb-dim", type=common.positive_int, default=64, help="D's embedding size")
    m.add_argument("--d-filter-scale", type=common.positive_float, default=1.0,
                   help="multiply the number of D's filters of every window (not in the paper; 1: 1,720 filters)")
    m.add_argument("--d-dropout", type=common.unit_interval, default=0.25,
                   help="dropout before D's output layer (keep probability 0.75)")
    m.add_argument("--d-l2", type=float, default=0.2, help="L2 weight on D's output layer")
    m.add_argument("--d-lr", type=common.positive_float, default=1e-4, help="Adam learning rate of D")
    s = p.add_argument_group("schedule (Alg. 1; the official values in brackets)")
    s.add_argument("--pretrain-epochs", type=common.non_negative_int, default=120, help="MLE epochs of G [120]")
    s.add_argument("--d-pretrain-rounds", type=common.non_negative_int, default=10,
                   help="D pretraining rounds, each on fresh negatives for --k-epochs epochs [50]")
    s.add_argument("--g-steps", type=common.positive_int, default=1,
                   help="policy-gradient updates of G per adversarial epoch, each on a fresh batch [1]")
    s.add_argument("--d-steps", type=common.positive_int, default=5,
                   help="D rounds per adversarial epoch, each on fresh negatives [5]")
    s.add_argument("--k-epochs", type=common.positive_int, default=3, help="D's epochs on each set of negatives, k [3]")
    s.add_argument("--rollout-num", type=common.positive_int, default=16, help="Monte Carlo rollouts N per prefix [16]")
    s.add_argument("--rollout-update-rate", type=common.unit_interval, default=0.0,
                   help="β ← rate·β + (1-rate)·θ after each adversarial epoch; 0 is Alg. 1's β ← θ "
                        "(official code: 0.8)")
    s.add_argument("--mle-only", action="store_true",
                   help="the MLE baseline: after pretraining, --epochs MLE epochs instead of adversarial ones")
    # DEVIATION: 10 D-pretraining rounds and 20 adversarial epochs by default (deviation 1).
    common.add_run_args(
        p, presets=PRESETS, batch_size=64, epochs=20, log_every=1, dataset="oracle", channels_last=False,
        hide=IMAGE_FLAGS + ("dataset", "workers", "fast"),  # the image flags of the other scripts do not apply
        help={"epochs": "adversarial epochs (Alg. 1's outer loop; --mle-only: MLE ones) [200]",
              "amp": "bf16 autocast for D, the heavy network (CUDA); G stays fp32",
              "max_steps": "stop after N steps in all; a step is an MLE epoch, a D pretraining round or an "
                           "adversarial epoch",
              "log_every": "write a metrics.csv row every N steps",
              "batch_size": "sequences per batch of G and D (official: 64)",
              "seed": "seed for the fresh oracle, its samples, weights and sampling"})
    args = common.parse_args(p, argv, "seqgan")
    used = [f for f in IMAGE_FLAGS if getattr(args, f) != p.get_default(f)]
    if used or args.dataset not in ("oracle", "text"):
        p.error(f"--{(used or ['dataset'])[0].replace('_', '-')} is for the image scripts; seqgan.py "
                f"trains on an oracle (--oracle FILE) or on --text FILE")
    if args.fast:
        p.error("--fast captures the fixed training step of the image scripts as a CUDA graph; seqgan.py's "
                "phases and rollouts are not one such step (use --amp or --compile)")
    if args.oracle and args.text:
        p.error("--oracle and --text exclude each other: one is synthetic data, the other yours")
    if args.seq_len < 2:
        p.error("--seq-len must be 2 or more (a rollout needs a prefix and a token to sample)")
    if args.text and args.test_fraction == 0:
        p.error("--test-fraction must be above 0 with --text (nll_test needs held-out lines)")
    args.dataset = "text" if args.text else "oracle"  # names the run folder
    return args


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def chunk_rows(device: torch.device, row_size: int) -> int:
    """Rows per chunk of the wide (rows, V) tensors of sampling and scoring: about 2**20 elements
    on a CPU, so that a chunk's logits stay in the cache between the projection that writes them
    and the sampler or loss that reads them (measured about twice as fast there); 2**24 elsewhere."""
    return max(1, (2**20 if device.type == "cpu" else 2**24) // row_size)


def sample_categorical(logits: torch.Tensor, generator=None) -> torch.Tensor:
    """One token a row from softmax(logits): logits (n, V) -> (n,), by inverse CDF.

    With the cumulative sums S_k = Σ_{j≤k} softmax(l)_j and u ~ U[0, 1), the token is the first
    k with S_k > u·S_V: P(k) = (S_k - S_{k-1}) / S_V = softmax(l)_k (S_V is 1 up to rounding),
    the categorical distribution of torch.multinomial, as exact as float32 sums are. A token of
    probability 0 has S_k = S_{k-1} and is never drawn. On a CPU this costs about a tenth of
    torch.multinomial, which draws V exponentials a row."""
    cdf = logits.softmax(-1).cumsum_(-1)                                   # (n, V)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=cdf.device, dtype=cdf.dtype) * total
    # u·S_V may round up to S_V; keep u below it so that the draw is a token of positive probability
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(1)              # first k with S_k > u


class Generator(nn.Module):
    """G_θ: an LSTM language model. tokens (B, T) -> log G(y_t | Y_{1:t-1}) (B, T, V).

    Embedding -> one LSTM layer -> linear map of h_t to the logits; the first input is the
    embedding of the start token 0. Every parameter ~ N(0, 0.1) (official init_matrix)."""

    def __init__(self, vocab_size=5000, emb_dim=32, hidden_dim=32, init_std=0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim)
        self.lstm = nn.LSTM(emb_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, vocab_size)
        for param in self.parameters():
            nn.init.normal_(param, 0.0, init_std)
        # one bias per gate, as the official cell: PyTorch's second bias stays zero
        nn.init.zeros_(self.lstm.bias_hh_l0).requires_grad_(False)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) -> the logits of G(y_t | Y_{1:t-1}) (B, T, V), the first input the start token 0."""
        start = tokens.new_zeros(tokens.size(0), 1)
        h, _ = self.lstm(self.embedding(torch.cat([start, tokens[:, :-1]], 1)))  # (B, T, H)
        return self.out(h).float()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits(tokens).log_softmax(-1)                       # (B, T, V)

    def step(self, x: torch.Tensor, state=None):
        """Read one token a row: x (n,) and the LSTM state (h, c) -> the new state."""
        return self.lstm(self.embedding(x)[:, None], state)[1]

    def draw(self, state, generator=None) -> torch.Tensor:
        """The next token of each row, ~ softmax(out(h)) at temperature 1: state (h, c) -> (n,)."""
        h = state[0][0]                                                   # (n, H)
        return torch.cat([sample_categorical(self.out(part).float(), generator)
                          for part in h.split(chunk_rows(h.device, self.out.out_features))])

    @torch.no_grad()
    def sample(self, n: int, seq_len: int, generator=None) -> torch.Tensor:
        """n sequences (n, T) from G: y_t ~ G(· | Y_{1:t-1}), y_1 after the start token 0."""
        x, state, out = torch.zeros(n, dtype=torch.long, device=self.out.weight.device), None, []
        for _ in range(seq_len):
            state = self.step(x, state)
            x = self.draw(state, generator)
            out.append(x)
        return torch.stack(out, 1)                                        # (n, T)


# The oracle's 15 arrays, in the order of the official save/target_params_py3.pkl (target_lstm.py's
# params[0..14]): embedding (V, E); W_g (E, H), U_g (H, H), b_g (H,) for the gates g = i, f, o and
# the candidate c (gate = x W_g + h U_g + b_g); W_out (H, V), b_out (V,) (logits = h W_out + b_out).
ORACLE_ARRAYS = ("embedding", "W_i", "U_i", "b_i", "W_f", "U_f", "b_f", "W_o", "U_o", "b_o",
                 "W_c", "U_c", "b_c", "W_out", "b_out")


class _Refused(pickle.UnpicklingError):
    """A pickle asked for something other than numpy arrays."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and dtypes and nothing else: a pickle can name any
    importable function to call (os.system, say), so every global it asks for is refused except
    the three a pickled array uses. numpy 2 renamed numpy.core to numpy._core: both names of the
    array reconstructor resolve to the function itself, without importing the old module."""

    _ADMITTED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                 ("numpy.core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
                 ("numpy._core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0]}

    def find_class(self, module, name):
        if (module, name) not in self._ADMITTED:
            raise _Refused(f"the pickle asks for {module}.{name}, and only numpy arrays are admitted")
        return self._ADMITTED[module, name]

    def persistent_load(self, pid):
        raise _Refused("the pickle asks for a persistent object, and only numpy arrays are admitted")


def read_oracle_arrays(path) -> dict:
    """The oracle's parameters as {name: float32 array} (names and shapes: ORACLE_ARRAYS) from
    either of two files:
      - the official save/target_params_py3.pkl of LantaoYu/SeqGAN (download it from
        https://github.com/LantaoYu/SeqGAN/tree/master/save), a pickle of the 15 arrays as a
        list; it is read by an unpickler that admits numpy arrays and dtypes only (a pickle that
        asks for anything else is refused before anything runs), never by plain pickle.load;
      - an .npz with the 15 arrays under their names.
    Raises FileNotFoundError, or ValueError saying what is wrong with the file."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":                                  # a zip: .npz
            f.seek(0)
            try:
                with np.load(f) as npz:                                   # allow_pickle=False
                    arrays = {k: npz[k] for k in ORACLE_ARRAYS if k in npz.files}
            except Exception as e:
                raise ValueError(f"it is not a readable .npz ({type(e).__name__})") from None
            missing = [k for k in ORACLE_ARRAYS if k not in arrays]
            if missing:
                raise ValueError(f"the .npz lacks {', '.join(missing)}")
        else:
            f.seek(0)
            try:
                params = _NumpyOnlyUnpickler(f).load()
            except _Refused as e:
                raise ValueError(str(e)) from None
            except Exception as e:                                        # truncated, not a pickle, ...
                raise ValueError(f"it is neither an .npz nor a pickle of numpy arrays ({type(e).__name__})") from None
            if not (isinstance(params, list) and len(params) == len(ORACLE_ARRAYS)
                    and all(isinstance(a, np.ndarray) for a in params)):
                what = f"a list of {len(params)}" if isinstance(params, list) else f"a {type(params).__name__}"
                raise ValueError(f"the pickle holds {what}, not a list of 15 numpy arrays")
            arrays = dict(zip(ORACLE_ARRAYS, params))
    for name, a in arrays.items():
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{name} holds {a.dtype}, not floating-point numbers")
    emb, u = arrays["embedding"].shape, arrays["U_i"].shape
    if len(emb) != 2 or len(u) != 2 or min(emb + u) < 1:
        raise ValueError(f"embedding has shape {emb} and U_i {u}, where (V, E) and (H, H) belong")
    (V, E), H = emb, u[0]
    expected = {"embedding": (V, E), "W_out": (H, V), "b_out": (V,)}
    expected |= {f"{m}_{g}": shape for g in "ifoc" for m, shape in (("W", (E, H)), ("U", (H, H)), ("b", (H,)))}
    for name in ORACLE_ARRAYS:
        if arrays[name].shape != expected[name]:
            raise ValueError(f"{name} has shape {arrays[name].shape}, not {expected[name]} (V {V}, E {E}, H {H})")
    return {k: a.astype(np.float32) for k, a in arrays.items()}


class Oracle(Generator):
    """G_oracle, the synthetic data's true model: G's LSTM with every parameter ~ N(0, 1)
    (official target_lstm.py), frozen. `Oracle.from_file(path)` loads fixed parameters."""

    def __init__(self, vocab_size=5000, emb_dim=32, hidden_dim=32):
        super().__init__(vocab_size, emb_dim, hidden_dim, init_std=1.0)
        self.requires_grad_(False)

    @classmethod
    def from_state_dict(cls, sd: dict) -> Oracle:
        with torch.random.fork_rng(devices=[]):  # the placeholder init must not move the caller's RNG
            oracle = cls(*sd["embedding.weight"].shape, sd["lstm.weight_hh_l0"].shape[1])
        oracle.load_state_dict(sd)
        return oracle

    @classmethod
    def from_file(cls, path) -> Oracle:
        """The oracle of --oracle FILE (the official pickle or an .npz: read_oracle_arrays)."""
        try:
            a = {k: torch.from_numpy(v) for k, v in read_oracle_arrays(path).items()}
        except FileNotFoundError:
            raise ValueError(f"--oracle {path}: no such file.") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"--oracle {path} is not an oracle's parameters: {e}; it takes the official "
                             f"save/target_params_py3.pkl or an .npz of the arrays embedding, W_i, U_i, b_i, "
                             f"..., W_out, b_out.") from None
        gates = "ifco"  # PyTorch stacks the gates as (input, forget, cell candidate, output)
        return cls.from_state_dict({
            "embedding.weight": a["embedding"],
            "lstm.weight_ih_l0": torch.cat([a[f"W_{g}"].t() for g in gates]),  # (4H, E)
            "lstm.weight_hh_l0": torch.cat([a[f"U_{g}"].t() for g in gates]),  # (4H, H)
            "lstm.bias_ih_l0": torch.cat([a[f"b_{g}"] for g in gates]),
            "lstm.bias_hh_l0": torch.zeros(4 * a["U_i"].shape[0]),
            "out.weight": a["W_out"].t(), "out.bias": a["b_out"]})


class Discriminator(nn.Module):
    """D_φ: tokens (B, T) -> logits (B, 2) of (generated, real).

    Kim's CNN: embedding (64, U(-1, 1)), a conv of each window size over the whole embedding
    (weights truncated N(0, 0.1), bias 0.1), ReLU, max over time; one highway layer; dropout;
    a linear output layer (truncated N(0, 0.1), bias 0.1)."""

    def __init__(self, vocab_size=5000, seq_len=20, emb_dim=64, dropout=0.25, windows=WINDOWS):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim)
        nn.init.uniform_(self.embedding.weight, -1.0, 1.0)
        # DEVIATION: windows longer than the sequence have no valid position; left out (deviation 2).
        windows = [(size, n) for size, n in windows if size <= seq_len]
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, n, size) for size, n in windows)
        width = sum(n for _, n in windows)                       # 1720 at T = 20
        self.transform, self.gate = nn.Linear(width, width), nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, 2)
        for layer in (*self.convs, self.out):
            nn.init.trunc_normal_(layer.weight, std=0.1, a=-0.2, b=0.2)  # TF truncates at 2 std
            nn.init.constant_(layer.bias, 0.1)
        bound = math.sqrt(6 / (2 * width))                               # TF's Glorot uniform default
        for layer in (self.transform, self.gate):
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.uniform_(layer.bias, -bound, bound)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.embedding(tokens).transpose(1, 2)                         # (B, E, T)
        c = torch.cat([conv(e).relu().amax(2) for conv in self.convs], 1)  # (B, 1720): max over time
        # highway: τ = σ(W_T c + b_T) (gate bias offset 0, official), C = τ·ReLU(W_H c + b_H) + (1-τ)·c
        tau = torch.sigmoid(self.gate(c))
        c = tau * F.relu(self.transform(c)) + (1 - tau) * c
        return self.out(self.dropout(c))                                   # (B, 2)


@torch.no_grad()
def real_prob(D: nn.Module, tokens: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """D_φ(Y) (B,): D's probability that each sequence is real, dropout off (official: keep 1.0)."""
    was_training = D.training
    D.eval()
    p = torch.cat([D(part).float().softmax(-1)[:, 1] for part in tokens.split(chunk)])
    D.train(was_training)
    return p


# ---------------------------------------------------------------------------------------------
# Monte Carlo search and the losses
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def rollouts(G_beta: Generator, tokens: torch.Tensor, num: int) -> torch.Tensor:
    """Eq. (3): {Y^1_{1:T}, ..., Y^N_{1:T}} = MC^{G_β}(Y_{1:t}; N) for every t = 1..T-1 at once.
    tokens (B, T) -> (T-1, N, B, T); [t-1, n, b] keeps tokens[b, :t] and completes it with G_β.

    G_β reads each sequence once; after its prefix Y_{1:t} the N rollouts of that prefix join
    the batch with G_β's state there, and from then on every row samples one token a position:
    no row samples a token that its prefix fixes, and no prefix is read twice."""
    B, T = tokens.shape
    prefix = G_beta.step(tokens.new_zeros(B))                 # the state after the start token
    state, rows = None, tokens.expand(T - 1, num, B, T).clone().view(-1, T)
    for t in range(1, T):
        prefix = G_beta.step(tokens[:, t - 1], prefix)        # after Y_{1:t}: y_{t+1} is drawn here
        joining = tuple(s.repeat(1, num, 1) for s in prefix)  # (1, N·B, H): row n·B + b
        if state is None:
            state = joining
        else:                                                 # earlier rollouts read their last token
            state = G_beta.step(rows[: (t - 1) * num * B, t - 1], state)
            state = tuple(torch.cat(pair, 1) for pair in zip(state, joining))
        rows[: t * num * B, t] = G_beta.draw(state)           # rows of prefix lengths 1..t, in that order
    return rows.view(T - 1, num, B, T)


@torch.no_grad()
def rollout_rewards(G_beta: Generator, D: nn.Module, tokens: torch.Tensor, num: int = 16) -> torch.Tensor:
    """Eq. (4): Q(Y_{1:t-1}, y_t) = (1/N) Σ_n D(Y^n_{1:T}) for t < T, and D(Y_{1:T}) for t = T.
    tokens (B, T) -> rewards (B, T) in [0, 1]."""
    B, T = tokens.shape
    q = real_prob(D, rollouts(G_beta, tokens, num).view(-1, T)).view(T - 1, num, B).mean(1)  # (T-1, B)
    return torch.cat([q, real_prob(D, tokens)[None]]).t()                                  # (B, T)


def mle_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    # Pretraining (Alg. 1 line 2): maximise Σ_t log G_θ(y_t | Y_{1:t-1}) on real sequences;
    # minimised as the mean NLL per token (official pretrain_loss): -mean_{b,t} log softmax(logits)[y_t],
    # one fused cross-entropy (log-probabilities as logits give the same: log_softmax leaves them).
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())


def pg_loss(log_probs: torch.Tensor, tokens: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    # Eq. (7): ∇_θ J(θ) ≈ Σ_t E_{y_t~G_θ}[∇_θ log G_θ(y_t | Y_{1:t-1}) · Q(Y_{1:t-1}, y_t)]
    # J is maximised (Eq. 8); we minimise -Σ_{b,t} log G_θ(y_t|Y_{1:t-1}) · Q[b, t], a sum over
    # batch and time as the official g_loss. Q is a constant: no gradient flows into D or G_β.
    chosen = log_probs.gather(2, tokens[..., None]).squeeze(2)          # (B, T)
    return -(chosen * rewards.detach()).sum()


def d_loss(logits: torch.Tensor, labels: torch.Tensor, out_weight: torch.Tensor, out_bias: torch.Tensor,
           l2: float = 0.2) -> torch.Tensor:
    # Eq. (5): min_φ -E_{Y~p_data}[log D_φ(Y)] - E_{Y~G_θ}[log(1 - D_φ(Y))]
    # as the official code: mean softmax cross-entropy over a batch of real (label 1) and
    # generated (label 0) sequences, plus l2 · (‖W_out‖² + ‖b_out‖²) / 2 (tf.nn.l2_loss).
    return F.cross_entropy(logits.float(), labels) + l2 * (out_weight.square().sum() + out_bias.square().sum()) / 2


@torch.no_grad()
def sequence_nll(model: Generator, tokens: torch.Tensor) -> float:
    """-mean_{b,t} log model(y_t | Y_{1:t-1}): the NLL per token of tokens (n, T) under model."""
    V = model.out.out_features
    total = sum(F.cross_entropy(model.logits(part).flatten(0, 1), part.flatten(), reduction="sum").double()
                for part in tokens.split(chunk_rows(tokens.device, tokens.size(1) * V)))
    return float(total) / tokens.numel()


def oracle_nll(oracle: Oracle, tokens: torch.Tensor) -> float:
    """NLL_oracle ("Synthetic Data Experiments"): -E_{Y~G_θ}[Σ_t log G_oracle(y_t | Y_{1:t-1})],
    per token (the official target_loss), for tokens sampled from G."""
    return sequence_nll(oracle, tokens)


# ---------------------------------------------------------------------------------------------
# Training steps
# ---------------------------------------------------------------------------------------------
def mle_epoch(G, opt, data, batch_size, clip) -> torch.Tensor:
    """One MLE pass over data in a fixed order (official Gen_Data_loader); mean loss."""
    losses = []
    for batch in data[: len(data) // batch_size * batch_size].split(batch_size):
        loss = mle_loss(G.logits(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(G.parameters(), clip)    # official: tf.clip_by_global_norm(5.0)
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses).mean()


def pg_step(G, G_beta, D, opt, batch_size, seq_len, num, clip):
    """Alg. 1 lines 4-9: Y ~ G_θ, Q for every token by Eq. (4), one policy-gradient update.
    D and G_β are only read. Returns (loss, mean reward)."""
    tokens = G.sample(batch_size, seq_len)
    rewards = rollout_rewards(G_beta, D, tokens, num)
    loss = pg_loss(G(tokens), tokens, rewards)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(G.parameters(), clip)
    opt.step()
    return loss.detach(), rewards.mean()


@torch.no_grad()
def update_rollout(G_beta, G, rate: float) -> None:
    """β ← rate·β + (1 - rate)·θ; rate 0 is Alg. 1's β ← θ. The embedding is copied, as the
    official update_params does."""
    for (name, beta), theta in zip(G_beta.named_parameters(), G.parameters()):
        if rate == 0 or name.startswith("embedding"):
            beta.copy_(theta)
        else:
            beta.mul_(rate).add_(theta, alpha=1 - rate)


def d_epochs(D, opt, real, fake, batch_size, k, l2):
    """Alg. 1 line 12 / D pretraining: k epochs of D on real (1) + generated (0) sequences,
    shuffled once (official Dis_dataloader). G is not involved. Returns (mean loss, accuracy)."""
    x = torch.cat([real, fake])
    y = torch.cat([real.new_ones(len(real)), fake.new_zeros(len(fake))])
    n = len(x) // batch_size
    order = torch.randperm(len(x), device=x.device)[: n * batch_size]
    xs, ys = x[order].view(n, batch_size, -1), y[order].view(n, batch_size)  # (n, bs, T), (n, bs)
    losses, hits = [], []
    D.train()
    for _ in range(k):
        for xb, yb in zip(xs, ys):
            logits = D(xb)
            loss = d_loss(logits, yb, D.out.weight, D.out.bias, l2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            hits.append((logits.argmax(1) == yb).float().mean())
    return torch.stack(losses).mean(), torch.stack(hits).mean()


# ---------------------------------------------------------------------------------------------
# Data: the oracle's samples or the user's text
# ---------------------------------------------------------------------------------------------
def read_text(path, tokens="word", vocab_size=5000, seq_len=20, test_fraction=0.1, seed=0):
    """Lines -> (vocab, train (N, T), test (M, T)). Lines are shuffled by seed and split; the
    vocabulary is <pad>, <unk> and the most frequent training tokens; each line is cut to
    seq_len tokens or padded with <pad> (0)."""
    # DEVIATION: real text by held-out NLL, not the paper's BLEU experiments (deviation 3).
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--text {path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read --text {path} as UTF-8 text ({type(e).__name__}).") from None
    lines = [line.split() if tokens == "word" else list(line.strip()) for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"--text {path} has {len(lines)} non-empty line(s); it needs at least 2 "
                         f"(one sequence per line, some held out for nll_test).")
    if vocab_size < 3:
        raise ValueError("--vocab-size must be 3 or more with --text (<pad>, <unk> and a token).")
    order = torch.randperm(len(lines), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = min(len(lines) - 1, max(1, round(test_fraction * len(lines))))
    test_lines, train_lines = [lines[i] for i in order[:n_test]], [lines[i] for i in order[n_test:]]
    counts = Counter(tok for line in train_lines for tok in line)
    for special in (PAD, UNK):
        counts.pop(special, None)
    vocab = [PAD, UNK] + sorted(counts, key=lambda tok: (-counts[tok], tok))[: vocab_size - 2]
    index = {tok: i for i, tok in enumerate(vocab)}

    def encode(part):
        ids = torch.zeros(len(part), seq_len, dtype=torch.long)          # <pad> everywhere
        for i, line in enumerate(part):
            line = line[:seq_len]                                          # cut long lines
            ids[i, : len(line)] = torch.tensor([index.get(tok, 1) for tok in line], dtype=torch.long)
        return ids

    return vocab, encode(train_lines), encode(test_lines)


def decode(tokens: torch.Tensor, vocab=None, char=False) -> list[str]:
    """Rows of token ids -> lines: ids for the oracle; with a vocabulary, tokens up to the first <pad>."""
    if vocab is None:
        return [" ".join(map(str, row)) for row in tokens.tolist()]
    rows = [row[: row.index(0)] if 0 in row else row for row in tokens.tolist()]
    return [("" if char else " ").join(vocab[i] for i in row) for row in rows]


# ---------------------------------------------------------------------------------------------
# Training (Alg. 1)
# ---------------------------------------------------------------------------------------------
def build(args, device):
    """G_θ, the rollout policy G_β (a copy that is never trained) and D_φ."""
    G = Generator(args.vocab_size, args.emb_dim, args.hidden_dim).to(device)
    G_beta = Generator(args.vocab_size, args.emb_dim, args.hidden_dim).to(device).requires_grad_(False)
    windows = [(size, max(1, round(n * args.d_filter_scale))) for size, n in WINDOWS]
    D = Discriminator(args.vocab_size, args.seq_len, args.d_emb_dim, args.d_dropout, windows).to(device)
    return G, G_beta, D


def train(args) -> dict:
    device = common.setup(args, single_process=True)  # (under torchrun: a clear refusal)
    state = {"oracle": None, "vocab": None, "train": None, "test": None}  # the data, saved with the run
    if args.resume is None:  # a new run; a resumed one takes its data from the checkpoint
        try:  # a --text or --oracle file the loaders cannot use (their ValueError): one sentence
            if args.text:
                vocab, train_set, test_set = read_text(args.text, args.tokens, args.vocab_size, args.seq_len,
                                                       args.test_fraction, args.seed)
                args.vocab_size = len(vocab)  # saved with the checkpoint's flags
                state.update(vocab=vocab, train=train_set.to(device), test=test_set.to(device))
            else:
                oracle = (Oracle.from_file(args.oracle) if args.oracle
                          else Oracle(args.vocab_size, args.emb_dim, args.hidden_dim)).to(device)
                args.vocab_size = oracle.out.out_features
                state.update(oracle=oracle.state_dict(), train=oracle.sample(args.num_samples, args.seq_len),
                             test=oracle.sample(args.eval_samples, args.seq_len))
        except ValueError as e:
            raise common.UserError(str(e)) from None
        if args.batch_size > len(state["train"]):
            raise common.UserError(f"--batch-size {args.batch_size} is larger than the training set "
                                   f"({len(state['train'])} sequences).")
    G, G_beta, D = build(args, device)
    # Adam's fused kernel: the same update in one pass over the parameters. On the CPU (torch >= 2.4)
    # it takes about a quarter off D's step (13.8M parameters; one thread: the update from about
    # 35 ms to 6 ms beside 80 ms of forward and backward); the image scripts' Adam is per tensor there.
    fused = device.type in ("cpu", "cuda")
    g_params = [q for q in G.parameters() if q.requires_grad]
    # official: two Adam optimisers on G (lr 0.01), one for MLE and one for the policy gradient
    opt_mle, opt_pg = (torch.optim.Adam(g_params, lr=args.g_lr, fused=fused) for _ in range(2))
    opt_D = torch.optim.Adam(D.parameters(), lr=args.d_lr, fused=fused)
    run = common.Run("seqgan", args, {"G": G, "G_beta": G_beta, "D": D, "opt_mle": opt_mle,
                                      "opt_pg": opt_pg, "opt_D": opt_D}, state, device=device)
    G, D = run.prepare(G, D, amp=[D])  # --compile; --amp: bf16 for D, the heavy network (G stays fp32)
    oracle = Oracle.from_state_dict(state["oracle"]).to(device) if state["oracle"] is not None else None
    train_set, test_set, T, bs = state["train"], state["test"], args.seq_len, args.batch_size

    def evaluate() -> dict:
        """NLL on samples drawn with their own RNG (the training RNG does not move)."""
        rng = torch.Generator(device=device).manual_seed(args.seed)
        m = {"nll_test": sequence_nll(G, test_set)}
        if oracle is not None:
            m["nll_oracle"] = oracle_nll(oracle, G.sample(args.eval_samples, T, generator=rng))
        return m

    def write_samples(name: str) -> None:
        tokens = G.sample(32, T, generator=torch.Generator(device=device).manual_seed(args.seed))
        (run.dir / "samples" / f"{name}.txt").write_text(
            "\n".join(decode(tokens, state["vocab"], args.tokens == "char")) + "\n", encoding="utf-8")

    # The schedule is a list of steps: P MLE epochs, R D-pretraining rounds, then --epochs
    # adversarial (with --mle-only: MLE) epochs. The step counter alone says where a run is.
    P, R = args.pretrain_epochs, 0 if args.mle_only else args.d_pretrain_rounds
    end = min(P + R + args.epochs, args.max_steps or math.inf)
    per_d_round = 2 * len(train_set) // bs * bs * args.k_epochs           # sequences D trains on

    def d_round():  # Alg. 1 lines 3-4 and 11-12: fresh negatives (as many as real ones), k epochs of D
        loss_D, acc = d_epochs(D, opt_D, train_set, G.sample(len(train_set), T), bs, args.k_epochs, args.d_l2)
        run.log(loss_D=loss_D, D_acc=acc)
        run.count(per_d_round)                                       # images_per_s: sequences/s

    def after_step():  # NLL, the metrics row and a checkpoint on the schedule's own clock
        step = run.step
        boundary = step in (P, P + R, end)                           # the end of a phase or of the run
        evaluated = not (P < step <= P + R) and (run.epochs_done % args.eval_every == 0 or boundary)
        if evaluated:
            run.log(**evaluate())
            row = run.flush()
            print(f"step {step}/{P + R + args.epochs}  G epoch {run.epochs_done}  "
                  + "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("step", "epoch")))
        if step == P and P > 0:
            write_samples("pretrained")
        if evaluated or boundary or step % args.eval_every == 0:
            run.save_checkpoint()

    if run.step == 0:
        run.log(**evaluate())                                            # the untrained G
        run.flush()
    for u in run.loop(until=end, after_step=after_step):
        if u < P or args.mle_only:                                       # Alg. 1 line 2: MLE epoch
            run.log(loss_mle=mle_epoch(G, opt_mle, train_set, bs, args.grad_clip))
            run.count(len(train_set) // bs * bs, epochs=1)               # `epoch`: G's epochs (Fig. 2)
        elif u < P + R:                                                  # D pretraining round
            d_round()
        else:                                                            # one adversarial epoch
            if u == P + R:
                update_rollout(G_beta, G, 0.0)                           # G_β starts as the pretrained G
            for _ in range(args.g_steps):                                # lines 4-9, g-steps times
                loss_pg, reward = pg_step(G, G_beta, D, opt_pg, bs, T, args.rollout_num, args.grad_clip)
                run.log(loss_pg=loss_pg, reward=reward)
            run.count(args.g_steps * bs, epochs=1)
            update_rollout(G_beta, G, args.rollout_update_rate)          # β ← θ (D's rounds leave G alone)
            for _ in range(args.d_steps):                                # lines 10-13, d-steps times
                d_round()
    write_samples("final")
    return run.finish()


def generate(args) -> dict:
    """--generate N --resume RUN: N sequences of the run's G in RUN/generated-<time>.txt, one a
    line (decoded text for a --text run; token ids and their NLL_oracle for an oracle run)."""
    device = common.setup(args, single_process=True)
    G, *_ = build(args, device)  # (the checkpoint's flags say what to build)
    state = {}
    run = common.Run("seqgan", args, {"G": G}, state, device=device)
    tokens = G.sample(args.generate, args.seq_len)
    path = run.dir / f"generated-{datetime.now():%Y%m%d-%H%M%S-%f}.txt"
    path.write_text("\n".join(decode(tokens, state["vocab"], args.tokens == "char")) + "\n", encoding="utf-8")
    if state["oracle"] is not None:
        oracle = Oracle.from_state_dict(state["oracle"]).to(device)
        print(f"wrote {args.generate} sequences to {path} (NLL_oracle {oracle_nll(oracle, tokens):.3f} per token)")
    else:
        print(f"wrote {args.generate} sequences to {path}")
    return {"path": str(path)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    return generate(args) if args.generate else train(args)


if __name__ == "__main__":
    common.cli(main)
