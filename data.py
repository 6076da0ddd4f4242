"""The data: the built-in shapes, torchvision's datasets and image folders, served as batches.

Every script reaches it through common.py (`common.load_dataset`, `common.load_unpaired`).
data.py imports nothing of the collection, so a benchmark or another project can take the shapes
or a loader with nothing but torch and numpy (torchvision and PIL for the datasets on disk).
Nothing in here is a network or a paper idea.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class UserError(Exception):
    """Bad input (flags, data, checkpoint): printed as one sentence, exit status 2 (common.cli).
    Defined here, where the data raises it, so that data.py needs nothing of common.py."""


def seed_of(*numbers: int) -> int:  # (a run's seed and an epoch, or a process's rank)
    return int(np.random.SeedSequence(list(numbers)).generate_state(1)[0])


DATASETS = ("shapes", "mnist", "fashion-mnist", "cifar10", "svhn", "celeba", "lsun", "folder")


# --- The built-in shapes ----------------------------------------------------------------------
# Each shape is a signed distance function in the shape's own frame: p = (u, v), v pointing up,
# the whole shape inside the unit disk (negative inside, positive outside). Rendering evaluates
# it on every pixel of a batch at once and turns distance into antialiased coverage.
SHAPE_NAMES = ("circle", "square", "triangle", "plus", "hexagram",
               "ring", "crescent", "bar", "half-disk", "heart")
# Rotational symmetry order of each class: rotation is drawn in [0, 2π/order) so the label is
# identifiable from the image (0: fully symmetric, rotation is 0).
SYMMETRY = (0, 4, 3, 4, 6, 0, 1, 2, 1, 1)
SIZE_RANGE = (0.45, 0.85)  # radius of the bounding disk, as a fraction of half the image
OUTLINE_HALF_WIDTH = 0.12  # the "outline" style (domain B of the two-domain data), shape units


def _norm(u, v):
    return torch.sqrt(u * u + v * v)


def _box(u, v, half_w, half_h):
    return torch.maximum(u.abs() - half_w, v.abs() - half_h)


def _triangle(u, v, apothem=0.45, up=True):
    # max over the three edge normals (pointing down, upper right, upper left when up=True)
    s = 1.0 if up else -1.0
    d = -s * v
    for a in (math.pi / 6, 5 * math.pi / 6):
        d = torch.maximum(d, u * math.cos(a) + s * v * math.sin(a))
    return d - apothem


_SDF = (
    lambda u, v: _norm(u, v) - 0.9,                                             # circle
    lambda u, v: _box(u, v, 0.66, 0.66),                                        # square
    lambda u, v: _triangle(u, v),                                               # triangle
    lambda u, v: torch.minimum(_box(u, v, 0.9, 0.28), _box(u, v, 0.28, 0.9)),   # plus
    lambda u, v: torch.minimum(_triangle(u, v), _triangle(u, v, up=False)),     # hexagram
    lambda u, v: (_norm(u, v) - 0.675).abs() - 0.225,                           # ring
    lambda u, v: torch.maximum(_norm(u, v) - 0.9, 0.75 - _norm(u - 0.45, v)),   # crescent
    lambda u, v: _box(u, v, 0.9, 0.3),                                          # bar
    lambda u, v: torch.maximum(_norm(u, v + 0.35) - 0.9, -0.35 - v),            # half-disk
    lambda u, v: torch.minimum((u.abs() + (v + 0.1).abs()) * math.sqrt(0.5) - 0.45,  # heart:
                               _norm(u.abs() - 0.318, v - 0.218) - 0.45),       # diamond + 2 disks
)


def shape_factors(n: int, seed: int = 0, stream: int = 0) -> dict:
    """The factors of images 0..n-1 of one stream; image i is the same whatever n is."""
    raw = torch.from_numpy(np.random.default_rng([seed, stream]).random((n, 9))).float()
    cls = (raw[:, 0] * len(SHAPE_NAMES)).long().clamp_(max=len(SHAPE_NAMES) - 1)
    order = torch.tensor(SYMMETRY, dtype=torch.float32)[cls]
    size = SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * raw[:, 1]
    rotation = torch.where(order > 0, raw[:, 2] * 2 * math.pi / order.clamp(min=1), 0.0)
    hue, sat, val = raw[:, 5], 0.5 + 0.5 * raw[:, 6], 0.75 + 0.25 * raw[:, 7]
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6  # HSV -> RGB, vectorised
    color = val[:, None] - val[:, None] * sat[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)
    return {"class": cls, "size": size, "rotation": rotation,
            "x": (2 * raw[:, 3] - 1) * (1 - size), "y": (2 * raw[:, 4] - 1) * (1 - size),
            "color": color, "intensity": 0.4 + 0.6 * raw[:, 8]}


def render_shapes(factors: dict, image_size: int, channels: int = 3, style: str = "filled",
                  device="cpu", chunk: int = 512) -> torch.Tensor:
    """The shapes described by `factors` as uint8 (N, channels, size, size), a chunk of same-class
    images at a time; style "filled" or "outline" (the two domains of the CycleGAN data)."""
    if not 16 <= image_size <= 256:
        raise UserError(f"the shapes data is drawn at 16 to 256 pixels, not {image_size}.")
    n = len(factors["class"])
    out = torch.empty(n, channels, image_size, image_size, dtype=torch.uint8, device=device)
    lin = (torch.arange(image_size, device=device) + 0.5) * (2.0 / image_size) - 1.0
    X, Y = lin.view(1, 1, -1), -lin.view(1, -1, 1)  # pixel centres in [-1, 1], y pointing up
    color = factors["color"] if channels == 3 else factors["intensity"][:, None]
    params = torch.stack([factors["size"], factors["rotation"], factors["x"], factors["y"]], 1)
    params, color = params.to(device), color.to(device)
    for c in range(len(SHAPE_NAMES)):
        members = (factors["class"] == c).nonzero().squeeze(1)  # grouped on the host
        for start in range(0, len(members), chunk):
            i = members[start:start + chunk].to(device)
            r, rot, cx, cy = (t.view(-1, 1, 1) for t in params[i].unbind(1))
            cos, sin = torch.cos(rot) / r, torch.sin(rot) / r  # rotate by -rot, scale by 1/r
            dx, dy = X - cx, Y - cy                             # (b, H, W) after broadcasting
            d = _SDF[c](cos * dx + sin * dy, cos * dy - sin * dx)
            if style == "outline":
                d = d.abs() - OUTLINE_HALF_WIDTH
            # coverage of a pixel from the signed distance in pixels (a 1-pixel ramp)
            alpha = (0.5 - d * (r * image_size / 2)).clamp_(0, 1)
            out[i] = (alpha[:, None] * color[i][:, :, None, None] * 255).round_().to(torch.uint8)
    return out


# --- Datasets ---------------------------------------------------------------------------------
class ImageData:
    """A fixed set of images served as batches (images in [-1, 1], labels or None) on the device,
    from `images` (uint8, held on the device), `render(index)` (shapes too many to hold) or
    `files` (a Dataset read from disk by a DataLoader). An epoch's order is fixed by (seed, epoch),
    so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, name, n, channels, image_size, device, images=None, labels=None,
                 factors=None, render=None, files=None, workers=0, num_classes=None):
        self.name, self.n, self.channels, self.image_size, self.device = name, n, channels, image_size, device
        self.images, self.labels, self.factors, self.num_classes = images, labels, factors, num_classes
        self._render, self._files, self._workers = render, files, workers

    def __len__(self):
        return self.n

    def steps_per_epoch(self, batch_size: int) -> int:
        if batch_size > self.n:
            raise UserError(f"--batch-size {batch_size} is larger than the dataset ({self.n} images).")
        return self.n // batch_size  # the last incomplete batch is dropped

    @staticmethod
    def to_float(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(127.5).sub_(1.0)  # uint8 [0, 255] -> float [-1, 1]

    def _get(self, index: torch.Tensor):
        if self._files is not None:  # (read here, one by one: for a few images, not for training)
            items = [self._files[i] for i in index.tolist()]
            x = torch.stack([a for a, _ in items]).to(self.device)
            y = torch.tensor([b for _, b in items], device=self.device) if self.num_classes else None
        else:
            x = self.images[index.to(self.device)] if self.images is not None else self._render(index)
            y = None if self.labels is None else self.labels[index.to(self.labels.device)]
        return self.to_float(x), y

    def batches(self, batch_size: int, epoch: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        """The batches of one epoch from batch `start` on; each of `world` processes its share."""
        steps = self.steps_per_epoch(batch_size)
        g = torch.Generator().manual_seed(seed_of(seed, epoch))
        order = torch.randperm(self.n, generator=g)[: steps * batch_size]
        if world > 1:  # every process draws the same order and keeps its slice of each batch
            order, batch_size = order.view(steps, world, -1)[:, rank].reshape(-1), batch_size // world
        if self._files is None:
            order = order.to(self.device) if self.images is not None else order  # (one copy an epoch)
            for k in range(start, steps):
                yield self._get(order[k * batch_size:(k + 1) * batch_size])
            return
        loader = torch.utils.data.DataLoader(
            self._files, batch_size=batch_size, sampler=order[start * batch_size:].tolist(), drop_last=True,
            num_workers=self._workers, pin_memory=self.device.type == "cuda",
            generator=g)  # its workers' base seed comes from g, not the global RNG: exact resume
        for x, y in loader:
            y = y.to(self.device, non_blocking=True) if self.num_classes else None
            yield self.to_float(x.to(self.device, non_blocking=True)), y

    def sample(self, batch_size: int):
        """A uniformly drawn batch (torch's global RNG), for loops that need extra batches."""
        held = self._files is None and self.images is not None
        return self._get(torch.randint(self.n, (batch_size,), device=self.device if held else "cpu"))

    def in_order(self, batch_size: int):
        """Every image once, in index order (the last batch may be smaller): for evaluation."""
        for start in range(0, self.n, batch_size):
            yield self._get(torch.arange(start, min(start + batch_size, self.n)))


_CACHE_BYTES = 4 * 2**30  # shapes larger than this are rendered per batch instead of held
_FACTOR_BYTES = 110  # host memory per image while its factors are drawn (the measured peak)


def _physical_memory() -> int | None:
    """This machine's memory in bytes, where the system tells (not on Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _out_of_memory(e: Exception) -> bool:
    """numpy's MemoryError, torch's on a GPU, or torch's CPU allocator failing (a plain RuntimeError)."""
    return isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or "can't allocate memory" in str(e)


def shapes_data(n: int, image_size: int, channels: int, device, style: str = "filled",
                stream: int = 0, factors: dict | None = None) -> ImageData:
    """The built-in shapes: the first n images of `stream` (0 train, 1 test; see load_unpaired)."""
    device = torch.device(device)
    image_bytes = n * channels * image_size**2  # all n images as uint8
    held = image_bytes <= _CACHE_BYTES
    # what this takes: every image's factors, and the images themselves when held in the machine's memory
    need = n * _FACTOR_BYTES + (image_bytes if held and device.type == "cpu" else 0)
    too_large = f"{n:,} shapes images need about {need / 2**30:.1f} GiB of memory, more than"
    memory = _physical_memory()
    if memory and need > memory:  # refused before anything is allocated
        raise UserError(f"{too_large} this machine has ({memory / 2**30:.1f} GiB); pass a smaller --dataset-size.")

    def render(index):
        return render_shapes({k: v[index.cpu()] for k, v in factors.items()}, image_size, channels, style, device)

    try:
        factors = shape_factors(n, seed=0, stream=stream) if factors is None else factors
        images = render(torch.arange(n)) if held else None
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        raise UserError(f"{too_large} is free here; pass a smaller --dataset-size.") from None
    return ImageData("shapes", n, channels, image_size, device, images=images,
                     labels=factors["class"].to(device), factors=factors, render=None if held else render,
                     num_classes=len(SHAPE_NAMES))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _square(image_size: int, channels: int):
    """PIL image -> uint8 (channels, size, size): the shorter side scaled (bicubic), centre kept."""
    import torchvision.transforms as T
    gray = [T.Grayscale()] if channels == 1 else []
    return T.Compose([T.Resize(image_size, T.InterpolationMode.BICUBIC), T.CenterCrop(image_size), *gray,
                      T.PILToTensor()])


class ImageFiles(torch.utils.data.Dataset):
    """The images under a folder (recursively), as uint8 squares (see _square). With class
    subfolders (root/<class>/*.png) each image is labelled by its subfolder."""

    def __init__(self, root, image_size: int, channels: int):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"image folder {root} does not exist; pass --data-root DIR.")
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        self.paths = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            warnings.warn(f"skipping {len(others)} file(s) in {root} that are not images, "
                          f"e.g. {others[0].relative_to(root)}", stacklevel=2)
        if not self.paths:
            raise UserError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
        parts = [p.relative_to(root).parts for p in self.paths]
        self.classes = sorted({q[0] for q in parts}) if all(len(q) > 1 for q in parts) else []
        self.targets = [self.classes.index(q[0]) if self.classes else 0 for q in parts]
        self.transform = _square(image_size, channels)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        try:
            with Image.open(self.paths[i]) as im:
                return self.transform(im.convert("RGB")), self.targets[i]
        except Image.DecompressionBombError:  # (PIL's guard against images that would fill the memory)
            raise UserError(f"image {self.paths[i]} is too large to load (PIL opens at most "
                            f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels); shrink it or remove it and run again.") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"cannot read image {self.paths[i]}: it is damaged or not an image "
                            f"({type(e).__name__}); remove it and run again.") from None


def _torchvision_dataset(name: str, root: str, download: bool, transform=None):
    """torchvision's training split of `name`; missing data or a failed download: one sentence."""
    import torchvision.datasets as tvd
    if name == "lsun" and download:
        raise UserError(f"torchvision cannot download LSUN; fetch it with the LSUN tools and put the "
                        f"lmdb folders under {root}.")
    make = {"mnist": lambda: tvd.MNIST(root, train=True, download=download),
            "fashion-mnist": lambda: tvd.FashionMNIST(root, train=True, download=download),
            "cifar10": lambda: tvd.CIFAR10(root, train=True, download=download),
            "svhn": lambda: tvd.SVHN(root, split="train", download=download),
            "celeba": lambda: tvd.CelebA(root, "train", "attr", transform, download=download),
            "lsun": lambda: tvd.LSUN(root, ["bedroom_train"], transform)}[name]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return make()
    except ImportError as e:
        raise UserError(f"{name} needs the Python package '{e.name}' (pip install {e.name}).") from None
    except Exception as e:
        if download:
            reason = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
            raise UserError(f"could not download {name} into {root} ({reason}); check the network, "
                            f"or put the files there by hand.") from None
        raise UserError(f"{name} was not found in {root}; pass --download to fetch it (needs the "
                        f"network), or --data-root pointing at the folder that holds it.") from None


def _resize_uint8(x: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """(N, C, h, w) uint8 -> (N, channels, size, size) uint8, antialiased, in chunks."""
    if x.shape[1] != channels:  # RGB <-> grayscale
        x = x.float().mean(1, keepdim=True).round().to(torch.uint8) if channels == 1 else x.expand(-1, 3, -1, -1)
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    return torch.cat([F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True)
                      .round_().clamp_(0, 255).to(torch.uint8) for c in x.split(4096)])


def load_dataset(name: str, root: str = "./data", image_size: int = 64, channels: int | None = None,
                 download: bool = False, device="cpu", size: int | None = None, workers: int = 0) -> ImageData:
    """The training images of `name` (see DATASETS), the first `size` of them, on `device`."""
    device = torch.device(device)
    if name == "shapes":
        return shapes_data(size or 60000, image_size, channels or 3, device)
    if name in ("mnist", "fashion-mnist", "cifar10", "svhn"):  # held on the device
        base = _torchvision_dataset(name, root, download)
        data = torch.as_tensor(base.data)
        data = data[:, None] if data.ndim == 3 else data                  # MNIST: (N, 28, 28)
        data = data.permute(0, 3, 1, 2) if data.shape[-1] == 3 else data  # CIFAR: NHWC
        labels = torch.as_tensor(base.labels if name == "svhn" else base.targets).long()[:size]
        images = _resize_uint8(data[:size], image_size, channels or data.shape[1]).to(device)
        return ImageData(name, len(images), images.shape[1], image_size, device, images=images,
                         labels=labels.to(device), num_classes=10)
    if name == "folder":  # read from disk
        files = ImageFiles(root, image_size, channels or 3)
    elif name in ("celeba", "lsun"):
        files = _torchvision_dataset(name, root, download, _square(image_size, channels or 3))
    else:
        raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}.")
    num_classes = len(files.classes) if name == "folder" else 0  # (labelled by subfolder)
    if size:
        files = torch.utils.data.Subset(files, range(min(size, len(files))))
    return ImageData(name, len(files), channels or 3, image_size, device, files=files, workers=workers,
                     num_classes=num_classes or None)


def load_unpaired(name: str, root: str = "./data", image_size: int = 64, channels: int | None = None,
                  device="cpu", size: int | None = None, split: str = "train", workers: int = 0):
    """Two domains (A, B). shapes: filled and outlined, unpaired (split "test": B[i] is A[i] in B's
    style); folder: root/trainA and root/trainB (testA, testB), as the public CycleGAN datasets."""
    device, channels = torch.device(device), channels or 3
    if name == "shapes" and split == "train":
        return (shapes_data(size or 60000, image_size, channels, device, "filled", stream=0),
                shapes_data(size or 60000, image_size, channels, device, "outline", stream=2))
    if name == "shapes":
        f = shape_factors(size or 1000, seed=0, stream=1)
        return tuple(shapes_data(len(f["class"]), image_size, channels, device, style, factors=f)
                     for style in ("filled", "outline"))
    if name == "folder":
        return tuple(load_dataset("folder", str(Path(root) / f"{split}{d}"), image_size, channels,
                                  device=device, size=size, workers=workers) for d in "AB")
    raise UserError(f"unpaired data comes from 'shapes' or 'folder' ({root}/trainA, trainB), not '{name}'.")
