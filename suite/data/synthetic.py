"""Built-in offline datasets: a seeded, procedurally generated family of 32x32 RGB images.

Every image is a composition of primitives, rendered in one vectorised pass over the batch:

- a **shape**: a parametric family with two parameters ``(p1, p2)``, written as an "inside"
  function ``d(u, v) >= 0`` in the shape's own frame (approximately the signed distance to the
  edge, in units of the shape radius) and turned into a soft mask
  ``m = sigmoid(d * scale / EDGE)``. Families: superellipse ``(|u|^p + |v/a|^p)^(1/p) <= 1``,
  regular polygon with ``n`` vertices, star with ``n`` points and inner-radius ratio ``q``,
  "flower" (a circle whose radius is modulated, ``R(θ) = 1 + m cos(kθ)``), and the target-only
  cross, annulus, crescent and bar;
- a **texture** ``t(x, y) ∈ [0, 1]`` filling the shape: stripes (orientation, frequency),
  checkerboard, dots on a lattice, concentric rings, a smooth noise field (source families), and
  the target-only hatch, zigzag, linear gradient and spiral;
- **colours**: the texture mixes a palette colour with a darker copy of it,
  ``fill = c (1 - t) + (dark * c) t``; in the source (and synth-shift) each texture family draws
  its hue from its own window of 4 of the 12 palette hues (windows of neighbouring families
  overlap), so colour is a partial, ambiguous hint at the texture; other targets draw hues
  uniformly;
- a **background**: a smooth noise field between two dull colours plus faint stripes;
- **nuisances**: position, scale, rotation (synth-fine), texture phase/orientation/frequency,
  contrast and pixel noise (:class:`Nuisance`).

Tasks (classes are balanced; every split is an independent draw from its own seed, so the splits
are disjoint by construction and no sample is shared between train, val and test):

=================  =======  =====================================  =======================
name               classes  what a class is                        train / val / test
=================  =======  =====================================  =======================
synth-source       40       8 source shapes × 5 source textures    4000 / 800 / 1000
synth-shapes       4        coarse group of source shapes, under   800 / 200 / 400
                            NEW textures and a NEW palette
synth-textures     10       source texture × frequency band, on    800 / 200 / 400
                            NEW shapes
synth-fine         10       stars differing only in the number     800 / 200 / 400
                            of points (4..8) and inner ratio
synth-shift        20       half of the source classes under a     1000 / 200 / 400
                            colour / contrast shift
=================  =======  =====================================  =======================

``synth-fine`` is scored with mean per-class accuracy, the others with top-1. The generator knows
nothing about models: whether a better source model transfers better is left to the data.

The data of a split depends only on the dataset name and split (a fixed seed per split), not on
the caller's ``seed``: different study seeds measure training variance on identical data, as with
the on-disk datasets. Generated tensors are memoised in-process; callers get a fresh
:class:`TensorImageDataset` view of the shared tensors, which must not be modified in place.
Images are normalised with the fixed constants :data:`MEAN` / :data:`STD` (the per-channel
statistics of ``synth-source`` train, rounded).
"""

from __future__ import annotations

import contextlib
import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from suite.data.base import TensorImageDataset

SIZE = 32  # image side, pixels
# Per-channel normalisation constants: the statistics of synth-source train in [0, 1], rounded.
MEAN = (0.406, 0.413, 0.407)
STD = (0.149, 0.158, 0.154)
EDGE = 0.045  # soft-edge width of the masks, in image units (2 units = 32 px, so ~0.7 px)

# ---------------------------------------------------------------------------------------------
# Shapes: inside(u, v, r, th, p1, p2) -> d, all (N, H, W) except p1, p2 (N, 1, 1). The shape frame
# has its radius at 1; d > 0 inside, ~ distance to the edge in radius units.


def _superellipse(u, v, r, th, p, a):
    # Radius along θ of |u|^p + |v/a|^p = 1:  R(θ) = (|cos θ|^p + |sin θ / a|^p)^(-1/p).
    c, s = torch.cos(th).abs().clamp_min(1e-6), (torch.sin(th) / a).abs().clamp_min(1e-6)
    radius = (c ** p + s ** p) ** (-1.0 / p)
    return radius - r


def _polygon(u, v, r, th, n, _):
    # Regular n-gon with circumradius 1: R(θ) = cos(π/n) / cos((θ mod 2π/n) - π/n).
    sector = 2 * math.pi / n
    radius = torch.cos(math.pi / n) / torch.cos(torch.remainder(th, sector) - sector / 2)
    return radius - r


def _star(u, v, r, th, n, q):
    # n tips at radius 1, valleys at radius q, radius linear in θ between them (a triangle wave).
    phase = torch.remainder(th * n / (2 * math.pi), 1.0)  # 0 at a tip, 0.5 at a valley
    tri = 1 - (2 * phase - 1).abs()  # 0 at tips, 1 at valleys
    radius = 1 - (1 - q) * tri
    return radius - r


def _flower(u, v, r, th, k, m):
    # Circle with a radius modulation of k lobes and depth m: R(θ) = (1 + m cos kθ) / (1 + m).
    radius = (1 + m * torch.cos(k * th)) / (1 + m)
    return radius - r


def _cross(u, v, r, th, w, _):
    # Plus sign of arm half-width w: union of two bars.
    bar1 = torch.minimum(w - u.abs(), 1 - v.abs())
    bar2 = torch.minimum(w - v.abs(), 1 - u.abs())
    return torch.maximum(bar1, bar2)


def _annulus(u, v, r, th, inner, _):
    return torch.minimum(1 - r, r - inner)


def _crescent(u, v, r, th, offset, _):
    # Unit disc minus a disc of radius 0.8 shifted by `offset` along u.
    r2 = torch.sqrt((u - offset) ** 2 + v ** 2)
    return torch.minimum(1 - r, r2 - 0.8)


def _bar(u, v, r, th, w, _):
    return torch.minimum(1 - u.abs(), w - v.abs())


ShapeFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Shape:
    """A shape family at one parameter setting; (j1, j2) are uniform jitters of (p1, p2)."""

    fn: ShapeFn
    p1: float
    p2: float = 0.0
    j1: float = 0.0
    j2: float = 0.0


# The 8 source shapes, in class order. Grouped in pairs for synth-shapes (see COARSE_GROUPS).
SOURCE_SHAPES: dict[str, Shape] = {
    "ellipse": Shape(_superellipse, 2.0, 0.8, 0.0, 0.15),
    "squircle": Shape(_superellipse, 4.5, 1.0, 1.0, 0.05),
    "triangle": Shape(_polygon, 3),
    "pentagon": Shape(_polygon, 5),
    "star4": Shape(_star, 4, 0.45, 0.0, 0.05),
    "star6": Shape(_star, 6, 0.5, 0.0, 0.05),
    "flower3": Shape(_flower, 3, 0.3, 0.0, 0.05),
    "flower6": Shape(_flower, 6, 0.2, 0.0, 0.04),
}
COARSE_GROUPS: dict[str, tuple[str, ...]] = {
    "round": ("ellipse", "squircle"),
    "polygon": ("triangle", "pentagon"),
    "star": ("star4", "star6"),
    "lobed": ("flower3", "flower6"),
}
# Shapes never seen in the source (synth-textures draws from these).
NEW_SHAPES: dict[str, Shape] = {
    "cross": Shape(_cross, 0.35, 0.0, 0.1),
    "annulus": Shape(_annulus, 0.5, 0.0, 0.1),
    "crescent": Shape(_crescent, 0.55, 0.0, 0.15),
    "bar": Shape(_bar, 0.4, 0.0, 0.1),
}

# ---------------------------------------------------------------------------------------------
# Textures: t(x, y, r, f, angle, phase, noise) -> (N, H, W) in [0, 1]. (x, y) image coords of the
# texture frame (rotated by `angle`, centred on the shape), r the radius from the shape centre,
# f (N,1,1) spatial frequency in cycles per image unit (the image is 2 units wide; f <= 7 keeps a
# period above 2 px), noise (N, H, W) a smooth field in [0, 1].


def _stripes(x, y, r, f, phase, noise):
    return 0.5 + 0.5 * torch.sin(2 * math.pi * f * x + phase)


def _checker(x, y, r, f, phase, noise):
    s = torch.sin(math.pi * f * x + phase) * torch.sin(math.pi * f * y + phase)
    return torch.sigmoid(8 * s)


def _dots(x, y, r, f, phase, noise):
    # Distance to the nearest lattice point of period 1/f; dots of radius 0.3 periods.
    fx = torch.remainder(f * x + phase / (2 * math.pi), 1.0) - 0.5
    fy = torch.remainder(f * y + phase / (2 * math.pi), 1.0) - 0.5
    d = torch.sqrt(fx ** 2 + fy ** 2)
    return torch.sigmoid((0.3 - d) * 12)


def _rings(x, y, r, f, phase, noise):
    return 0.5 + 0.5 * torch.sin(2 * math.pi * f * r + phase)


def _noise(x, y, r, f, phase, noise):
    return noise


def _hatch(x, y, r, f, phase, noise):
    # Thin crossed lines: the maximum of two sharpened orthogonal line gratings.
    a = torch.cos(2 * math.pi * f * x + phase) ** 16
    b = torch.cos(2 * math.pi * f * y) ** 16
    return torch.maximum(a, b)


def _zigzag(x, y, r, f, phase, noise):
    wave = 0.25 * (2 * torch.remainder(f * y, 1.0) - 1).abs()
    return 0.5 + 0.5 * torch.sin(2 * math.pi * f * (x + wave) + phase)


def _gradient(x, y, r, f, phase, noise):
    return torch.sigmoid(2.5 * x)


def _spiral(x, y, r, f, phase, noise):
    th = torch.atan2(y, x)
    return 0.5 + 0.5 * torch.sin(3 * th + 2 * math.pi * f * r + phase)


SOURCE_TEXTURES: dict[str, Callable[..., torch.Tensor]] = {
    "stripes": _stripes, "checker": _checker, "dots": _dots, "rings": _rings, "noise": _noise,
}
NEW_TEXTURES: dict[str, Callable[..., torch.Tensor]] = {
    "hatch": _hatch, "zigzag": _zigzag, "gradient": _gradient, "spiral": _spiral,
}
# Frequency bands (cycles per image unit). Source textures draw from both bands.
COARSE_BAND = (1.6, 2.6)
FINE_BAND = (3.6, 5.0)
SOURCE_BAND = (2.2, 3.6)  # the source task's textures


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


# Source palette: 12 saturated hues; the "new" palette: 8 pastel tints between them.
SOURCE_PALETTE = torch.tensor([_hsv(i / 12, 0.85, 0.9) for i in range(12)])
NEW_PALETTE = torch.tensor([_hsv((i + 0.5) / 8, 0.3, 1.0) for i in range(8)])
BACKGROUND_PALETTE = torch.tensor([_hsv(i / 6, 0.15, v) for i in range(6) for v in (0.3, 0.6)])


@dataclass(frozen=True)
class Nuisance:
    """Ranges of the nuisance variables (uniform draws) and the colour scheme of a task."""

    scale: tuple[float, float] = (0.6, 0.75)  # shape radius in image units (1 = half the image)
    shift: float = 0.08  # max |centre offset| in image units
    rotation: float = 0.0  # max |rotation| of the shape, radians
    contrast: tuple[float, float] = (0.8, 1.0)  # image = 0.5 + c (image - 0.5)
    noise: tuple[float, float] = (0.0, 0.02)  # std of i.i.d. Gaussian pixel noise
    background: tuple[float, float] = (0.1, 0.4)  # opacity of the textured background
    dark: tuple[float, float] = (0.15, 0.35)  # the texture mixes a colour c and dark * c
    # 0: fill hue uniform over the palette; s > 0: texture family j draws its hue from the s
    # palette entries starting at j * len(palette) / n_textures, so colour is a partial (and
    # ambiguous: neighbouring windows overlap) hint at the texture family.
    hue_span: int = 0
    shift_colour: bool = False  # domain shift: complementary colours, gamma, warm cast


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)


@functools.cache
def _upsample_matrix(cells: int) -> torch.Tensor:
    """(SIZE, cells) bicubic interpolation weights: upsampling a grid is A @ grid @ A.T."""
    impulses = torch.eye(cells).view(cells, 1, cells, 1).expand(cells, 1, cells, 2)
    up = F.interpolate(impulses.contiguous(), size=(SIZE, 2), mode="bicubic",
                       align_corners=False)
    return up[:, 0, :, 0].T.contiguous()  # (SIZE, cells)


def _smooth_noise(g: torch.Generator, n: int, cells: int) -> torch.Tensor:
    """Smooth random field (n, H, W) in [0, 1]: bicubic upsampling of a cells x cells grid.

    Done as two small matrix products (separable bicubic), much faster than F.interpolate.
    """
    low = torch.rand(n, cells, cells, generator=g)
    a = _upsample_matrix(cells)
    field = a @ low @ a.T  # (n, SIZE, SIZE)
    lo = field.amin(dim=(1, 2), keepdim=True)
    hi = field.amax(dim=(1, 2), keepdim=True)
    return (field - lo) / (hi - lo + 1e-6)


def _pick_pair(g: torch.Generator, n: int, palette: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Two distinct palette colours per image: (n, 3, 1, 1) each."""
    k = palette.shape[0]
    i = torch.randint(0, k, (n,), generator=g)
    j = (i + torch.randint(1, k, (n,), generator=g)) % k
    return palette[i][:, :, None, None], palette[j][:, :, None, None]


def render(g: torch.Generator, shapes: list[Shape], shape_idx: torch.Tensor,
           textures: list[Callable], texture_idx: torch.Tensor, band_lo: torch.Tensor,
           band_hi: torch.Tensor, palette: torch.Tensor, nuisance: Nuisance,
           shape_p1: torch.Tensor | None = None, shape_p2: torch.Tensor | None = None
           ) -> torch.Tensor:
    """Render n images (n, 3, SIZE, SIZE) in [0, 1].

    shape_idx, texture_idx (n,) index ``shapes`` / ``textures``; band_lo/hi (n,) the texture
    frequency range of each image; shape_p1/p2 (n,) override the shapes' parameters (synth-fine).
    """
    n = shape_idx.shape[0]
    lin = (torch.arange(SIZE, dtype=torch.float32) + 0.5) / SIZE * 2 - 1  # pixel centres in [-1,1]
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")  # (H, W)

    # Nuisances of the shape: centre, radius, rotation.
    cx = _uniform(g, n, -nuisance.shift, nuisance.shift)
    cy = _uniform(g, n, -nuisance.shift, nuisance.shift)
    scale = _uniform(g, n, *nuisance.scale)
    rot = _uniform(g, n, -nuisance.rotation, nuisance.rotation)
    dx, dy = xx - cx, yy - cy  # (n, H, W)
    u = (dx * torch.cos(rot) + dy * torch.sin(rot)) / scale  # shape frame, radius 1
    v = (-dx * torch.sin(rot) + dy * torch.cos(rot)) / scale
    r = torch.sqrt(u ** 2 + v ** 2).clamp_min(1e-6)
    th = torch.atan2(v, u)

    # Shape parameters with jitter, then the inside function per family (on its subset).
    p1 = torch.tensor([s.p1 for s in shapes])[shape_idx].view(n, 1, 1)
    p2 = torch.tensor([s.p2 for s in shapes])[shape_idx].view(n, 1, 1)
    j1 = torch.tensor([s.j1 for s in shapes])[shape_idx].view(n, 1, 1)
    j2 = torch.tensor([s.j2 for s in shapes])[shape_idx].view(n, 1, 1)
    p1 = p1 + j1 * (2 * torch.rand(n, 1, 1, generator=g) - 1)
    p2 = p2 + j2 * (2 * torch.rand(n, 1, 1, generator=g) - 1)
    if shape_p1 is not None:
        p1 = shape_p1.view(n, 1, 1).float()
    if shape_p2 is not None:
        p2 = shape_p2.view(n, 1, 1).float()
    inside = torch.empty(n, SIZE, SIZE)
    for k, shape in enumerate(shapes):
        sel = shape_idx == k
        if sel.any():
            inside[sel] = shape.fn(u[sel], v[sel], r[sel], th[sel], p1[sel], p2[sel])
    # d is in radius units; times scale gives image units, so EDGE is a fixed pixel width.
    mask = torch.sigmoid(inside * scale / EDGE)[:, None]  # (n, 1, H, W)

    # Texture of the fill, in its own frame (random orientation and phase), centred on the shape.
    t_angle = _uniform(g, n, 0, math.pi)
    tx = dx * torch.cos(t_angle) + dy * torch.sin(t_angle)
    ty = -dx * torch.sin(t_angle) + dy * torch.cos(t_angle)
    tr = torch.sqrt(dx ** 2 + dy ** 2)
    freq = band_lo.view(n, 1, 1) + (band_hi - band_lo).view(n, 1, 1) * torch.rand(
        n, 1, 1, generator=g)
    phase = _uniform(g, n, 0, 2 * math.pi)
    noise = _smooth_noise(g, n, 6)
    t = torch.empty(n, SIZE, SIZE)
    for k, fn in enumerate(textures):
        sel = texture_idx == k
        if sel.any():
            t[sel] = fn(tx[sel], ty[sel], tr[sel], freq[sel], phase[sel], noise[sel])
    if nuisance.hue_span > 0:
        k = palette.shape[0]
        start = (texture_idx * k) // len(textures)
        c1 = palette[(start + torch.randint(0, nuisance.hue_span, (n,), generator=g)) % k]
        c1 = c1[:, :, None, None]
    else:
        c1, _ = _pick_pair(g, n, palette)
    c2 = c1 * _uniform(g, n, *nuisance.dark)[:, None]  # same hue, dark: a luminance pattern
    if nuisance.shift_colour:
        c1, c2 = 1 - c1, 1 - c2  # complementary hues: colours never seen in the source
    fill = c1 * (1 - t[:, None]) + c2 * t[:, None]  # (n, 3, H, W)

    # Background: a smooth field between two dull colours plus faint stripes of random angle.
    b1, b2 = _pick_pair(g, n, BACKGROUND_PALETTE)
    b_field = _smooth_noise(g, n, 4)[:, None]
    b_angle = _uniform(g, n, 0, math.pi)
    b_freq = _uniform(g, n, *COARSE_BAND)
    b_stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * b_freq * (xx * torch.cos(b_angle)
                                                              + yy * torch.sin(b_angle)))
    b_mix = ((0.7 * b_field + 0.3 * b_stripes[:, None])
             * _uniform(g, n, *nuisance.background)[:, None])
    background = b1 * (1 - b_mix) + b2 * b_mix

    image = background * (1 - mask) + fill * mask
    contrast = _uniform(g, n, *nuisance.contrast)[:, None]
    image = 0.5 + contrast * (image - 0.5)
    if nuisance.shift_colour:
        image = image.clamp(0, 1) ** 1.6 * torch.tensor([1.0, 0.85, 0.7]).view(1, 3, 1, 1) + 0.1
    sigma = _uniform(g, n, *nuisance.noise)[:, None]
    image = image + sigma * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return image.clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Tasks. Each builder maps (generator, labels (n,)) -> images (n, 3, H, W) in [0, 1].

SOURCE_SHAPE_LIST = list(SOURCE_SHAPES.values())
SOURCE_TEXTURE_LIST = list(SOURCE_TEXTURES.values())
SOURCE_CLASSES = [f"{s}/{t}" for s in SOURCE_SHAPES for t in SOURCE_TEXTURES]  # 40
SHIFT_CLASSES = list(range(0, 40, 2))  # synth-shift: every other source class (20)


def _source_like(g: torch.Generator, labels: torch.Tensor, nuisance: Nuisance) -> torch.Tensor:
    n = labels.shape[0]
    n_tex = len(SOURCE_TEXTURES)
    shape_idx, texture_idx = labels // n_tex, labels % n_tex
    lo = torch.full((n,), SOURCE_BAND[0])
    hi = torch.full((n,), SOURCE_BAND[1])
    return render(g, SOURCE_SHAPE_LIST, shape_idx, SOURCE_TEXTURE_LIST, texture_idx, lo, hi,
                  SOURCE_PALETTE, nuisance)


SOURCE_NUISANCE = Nuisance(hue_span=4)


def _build_source(g, labels):
    return _source_like(g, labels, SOURCE_NUISANCE)


def _build_shift(g, labels):
    source_labels = torch.tensor(SHIFT_CLASSES)[labels]
    # The source's colour scheme, then complemented, at low contrast: a pixel-statistics shift.
    shifted = Nuisance(hue_span=4, contrast=(0.3, 0.6), shift_colour=True)
    return _source_like(g, source_labels, shifted)


def _build_shapes(g, labels):
    # Coarse class c covers two source shapes; pick one at random, with a NEW texture + palette.
    n = labels.shape[0]
    names = list(SOURCE_SHAPES)
    members = torch.tensor([[names.index(s) for s in grp] for grp in COARSE_GROUPS.values()])
    shape_idx = members[labels, torch.randint(0, 2, (n,), generator=g)]
    texture_idx = torch.randint(0, len(NEW_TEXTURES), (n,), generator=g)
    coarse = torch.rand(n, generator=g) < 0.5
    lo = torch.where(coarse, COARSE_BAND[0], FINE_BAND[0])
    hi = torch.where(coarse, COARSE_BAND[1], FINE_BAND[1])
    return render(g, SOURCE_SHAPE_LIST, shape_idx, list(NEW_TEXTURES.values()), texture_idx,
                  lo, hi, NEW_PALETTE, Nuisance())


def _build_textures(g, labels):
    # Class = source texture family × frequency band (coarse, fine), on NEW shapes.
    n = labels.shape[0]
    texture_idx, fine = labels // 2, (labels % 2) == 1
    lo = torch.where(fine, FINE_BAND[0], COARSE_BAND[0])
    hi = torch.where(fine, FINE_BAND[1], COARSE_BAND[1])
    shape_idx = torch.randint(0, len(NEW_SHAPES), (n,), generator=g)
    return render(g, list(NEW_SHAPES.values()), shape_idx, SOURCE_TEXTURE_LIST, texture_idx,
                  lo, hi, SOURCE_PALETTE, Nuisance(scale=(0.55, 0.75), shift=0.15))


FINE_POINTS = (4, 5, 6, 7, 8)
FINE_RATIOS = (0.35, 0.6)


def _build_fine(g, labels):
    # Stars differing only in the number of points n and the inner-radius ratio q (class =
    # n × q, 10 classes); q is jittered by ±0.04 so the ratio is close but separable.
    n = labels.shape[0]
    points = torch.tensor(FINE_POINTS, dtype=torch.float32)[labels // 2]
    ratio = torch.tensor(FINE_RATIOS)[labels % 2] + 0.04 * (2 * torch.rand(n, generator=g) - 1)
    texture_idx = torch.randint(0, len(SOURCE_TEXTURES), (n,), generator=g)
    coarse = torch.rand(n, generator=g) < 0.5
    lo = torch.where(coarse, COARSE_BAND[0], FINE_BAND[0])
    hi = torch.where(coarse, COARSE_BAND[1], FINE_BAND[1])
    star = Shape(_star, 5, 0.5)
    return render(g, [star], torch.zeros(n, dtype=torch.long), SOURCE_TEXTURE_LIST, texture_idx,
                  lo, hi, SOURCE_PALETTE, Nuisance(scale=(0.6, 0.75), rotation=math.pi / 6),
                  shape_p1=points, shape_p2=ratio)


@dataclass(frozen=True)
class SynthTask:
    """One synthetic task: its classes, per-class split sizes, metric and builder."""

    name: str
    classes: tuple[str, ...]
    per_class: dict  # split -> images per class, for "train", "val", "test"
    metric: str
    description: str
    build: Callable[[torch.Generator, torch.Tensor], torch.Tensor]


TASKS: dict[str, SynthTask] = {
    "synth-source": SynthTask(
        "synth-source", tuple(SOURCE_CLASSES), {"train": 100, "val": 20, "test": 25}, "top1",
        "Source task: 40 classes = 8 shapes x 5 textures, random colours, nuisances.",
        _build_source),
    "synth-shapes": SynthTask(
        "synth-shapes", tuple(COARSE_GROUPS), {"train": 200, "val": 50, "test": 100}, "top1",
        "4 coarse shape groups of the source shapes under new textures and a new palette.",
        _build_shapes),
    "synth-textures": SynthTask(
        "synth-textures", tuple(f"{t}/{b}" for t in SOURCE_TEXTURES for b in ("coarse", "fine")),
        {"train": 80, "val": 20, "test": 40}, "top1",
        "10 classes = source texture x frequency band, on shapes never seen in the source.",
        _build_textures),
    "synth-fine": SynthTask(
        "synth-fine", tuple(f"star{p}/q{q}" for p in FINE_POINTS for q in FINE_RATIOS),
        {"train": 80, "val": 20, "test": 40}, "mean_per_class",
        "Fine-grained: 10 star classes differing in number of points (4-8) and inner ratio.",
        _build_fine),
    "synth-shift": SynthTask(
        "synth-shift", tuple(SOURCE_CLASSES[i] for i in SHIFT_CLASSES),
        {"train": 50, "val": 10, "test": 20}, "top1",
        "20 source classes under a colour/contrast domain shift (complementary colours, low "
        "contrast, gamma, warm cast).", _build_shift),
}
SPLIT_SALT = {"train": 1, "val": 2, "test": 3}
# Version of the rendering code: bump it with any change that draws other images from the same
# seeds (a primitive, a nuisance range, the draw order), so cached features of the old images
# are not reused (params()).
GENERATOR_VERSION = 1


def split_seed(name: str, split: str) -> int:
    """Fixed seed of one generated split: a CRC of the dataset name mixed with the split."""
    return zlib.crc32(name.encode()) * 10 + SPLIT_SALT[split]


@contextlib.contextmanager
def _single_thread():
    """Run torch ops on one intra-op thread, then restore the previous count.

    Generation is a long chain of small element-wise ops; on a busy machine (other processes
    on the same cores) OpenMP threads spin-wait on each other and one thread was measured up to
    7x faster than two, while on an idle 2-core machine two threads gain little.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def generate(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, SIZE, SIZE) float32 normalised, labels (N,) int64) of one split, memoised.

    Labels are balanced and interleaved (0, 1, ..., K-1, 0, 1, ...); the images are generated in
    chunks of 1024 so the memory peak stays small.
    """
    task = TASKS[name]
    k = len(task.classes)
    n = task.per_class[split] * k
    g = torch.Generator().manual_seed(split_seed(name, split))
    labels = torch.arange(n, dtype=torch.int64) % k
    with _single_thread():
        chunks = [task.build(g, labels[i:i + 1024]) for i in range(0, n, 1024)]
        images = torch.cat(chunks)
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        images = ((images - mean) / std).contiguous()
    return images, labels


def params(name: str, split: str) -> dict:
    """Everything that defines the images and labels of a split, as JSON-able values: the
    generator version, image side, normalisation, classes, and per generated part (train and
    val for trainval) its seed and size. Equal params, equal tensors (on any machine)."""
    task = TASKS[name]
    k = len(task.classes)
    parts = ("train", "val") if split == "trainval" else (split,)
    return {"version": GENERATOR_VERSION, "size": SIZE, "mean": list(MEAN), "std": list(STD),
            "classes": list(task.classes),
            "parts": [{"split": p, "seed": split_seed(name, p), "n": task.per_class[p] * k}
                      for p in parts]}


def load(name: str, split: str, transform=None) -> TensorImageDataset:
    """A TensorImageDataset of one split ("train", "val", "test" or "trainval")."""
    if split == "trainval":
        xa, ya = generate(name, "train")
        xb, yb = generate(name, "val")
        images, labels = torch.cat([xa, xb]), torch.cat([ya, yb])
    else:
        images, labels = generate(name, split)
    return TensorImageDataset(images, labels, transform=transform,
                              classes=list(TASKS[name].classes))


def denormalise(images: torch.Tensor) -> torch.Tensor:
    """Inverse of the normalisation, back to [0, 1] (for looking at samples)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return images * std + mean
