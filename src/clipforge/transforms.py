"""Image preprocessing (evaluation) and augmentation (training) for CLIP-style models.

``create_eval_transform(PreprocessConfig)`` gives the same tensor, bit for bit, as open_clip's
``image_transform(..., is_train=False)`` for the same settings. The geometric step runs in the image's
own PIL mode before the conversion to RGB, as open_clip does it, because the result depends on that
order (PIL resizes RGBA premultiplied by alpha, P and 1 with nearest neighbour).

Where open_clip's result is silently wrong or it crashes, clipforge does the correct thing instead:

- 16-bit images (``I;16*``) are scaled to 8 bits instead of clipped (open_clip turns them white);
- ``PA`` is converted to RGBA before resizing (open_clip interpolates palette indices);
- ``La`` (premultiplied) is converted to ``LA`` first (open_clip crashes on it);
- ``longest`` mode pads with ``fill_color`` as an RGB gray for every input mode (open_clip pads in
  the file's mode, so a CMYK file gets white padding) and never shrinks an edge to 0 pixels;
- ``shortest`` mode with a non-square size honours ``interpolation`` (open_clip always uses bicubic).

Every transform is a small top-level class (no lambdas), so transforms pickle into DataLoader workers
started with ``spawn``. All randomness comes from torch's global generator, which DataLoader seeds per
worker, so a run is reproducible under ``torch.manual_seed``.

torch and torchvision are imported on first use: ``create_eval_array_transform`` (the same numbers as a float32
numpy array) runs without them, for the ONNX runtime.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, Mapping

import numpy as np
from PIL import Image

from clipforge.config import ConfigError, apply_overrides, to_dict

__all__ = [
    "OPENAI_MEAN", "OPENAI_STD", "PreprocessConfig", "AugmentConfig", "PreprocessMismatchError",
    "resolve_preprocess", "create_eval_transform", "create_eval_array_transform", "create_train_transform",
    "prepare_mode", "TrainTransform",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_OPEN_CLIP_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def _tvt():
    """torchvision.transforms, imported on first use: importing torchvision pulls in torch._dynamo (about a
    second), which ``create_model`` alone never needs."""
    from torchvision import transforms

    return transforms


def _as_triple(value: Any, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"{name} must be 3 numbers (one per RGB channel), got {value!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ConfigError(f"{name} must be 3 finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _check_prob(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} is a probability and must lie in [0, 1], got {value!r}")


def _check_range(value: Any, name: str) -> None:
    if not (isinstance(value, tuple) and len(value) == 2 and 0 < value[0] <= value[1]):
        raise ConfigError(f"{name} must be (low, high) with 0 < low <= high, got {value!r}")


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are turned into model input; the keys the weights registry stores per tag."""

    image_size: int | tuple[int, int] = 224  # int or (height, width)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    resize_mode: Literal["shortest", "longest", "squash"] = "shortest"
    fill_color: int = 0

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, list):
            size = tuple(size)
        if isinstance(size, tuple) and len(size) == 1:
            size = size[0]
        ok_int = isinstance(size, int) and not isinstance(size, bool) and size > 0
        ok_pair = (isinstance(size, tuple) and len(size) == 2
                   and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size))
        if not (ok_int or ok_pair):
            raise ConfigError(f"image_size must be a positive int or (height, width), got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "mean", _as_triple(self.mean, "mean"))
        std = _as_triple(self.std, "std")
        if min(std) <= 0:
            raise ConfigError(f"std must be 3 positive numbers (it divides the pixels), got {std!r}")
        object.__setattr__(self, "std", std)
        if self.interpolation not in _RESAMPLE:
            raise ConfigError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ConfigError(f"resize_mode must be 'shortest', 'longest' or 'squash', got {self.resize_mode!r}")
        if isinstance(self.fill_color, bool) or not isinstance(self.fill_color, int) or not 0 <= self.fill_color <= 255:
            raise ConfigError(f"fill_color must be an int gray level in [0, 255], got {self.fill_color!r}")

    @property
    def size_hw(self) -> tuple[int, int]:
        size = self.image_size
        return (size, size) if isinstance(size, int) else size

    @classmethod
    def from_open_clip(cls, preprocess_cfg: Mapping[str, Any]) -> "PreprocessConfig":
        """Read open_clip's ``preprocess_cfg`` dict (as found in hub ``open_clip_config.json`` files)."""
        unknown = sorted(set(preprocess_cfg) - set(_OPEN_CLIP_KEYS))
        if unknown:
            raise ConfigError(f"unknown open_clip preprocess_cfg keys {unknown}; known: {list(_OPEN_CLIP_KEYS)}")
        mode = preprocess_cfg.get("mode", "RGB")
        if mode != "RGB":
            raise ConfigError(f"preprocess_cfg mode {mode!r} is not supported: models take RGB input ('RGB')")
        renamed = {"size": "image_size"}
        kwargs = {renamed.get(k, k): v for k, v in preprocess_cfg.items() if k != "mode" and v is not None}
        if isinstance(kwargs.get("image_size"), list):
            kwargs["image_size"] = tuple(kwargs["image_size"])
        return cls(**kwargs)

    def to_open_clip(self) -> dict[str, Any]:
        """The same settings as open_clip's ``preprocess_cfg`` dict."""
        size = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        return {"size": size, "mode": "RGB", "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode,
                "fill_color": self.fill_color}


ColorJitterSpec = float | tuple[float, float, float] | tuple[float, float, float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; every field is applied (nothing is silently ignored)."""

    scale: tuple[float, float] = (0.9, 1.0)  # random-resized-crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random-resized-crop aspect ratio (w/h)
    hflip: float = 0.0  # probability of a horizontal flip
    color_jitter: ColorJitterSpec = 0.0  # strength, or (brightness, contrast, saturation[, hue])
    color_jitter_prob: float = 1.0  # probability of applying color_jitter when it is set
    grayscale: float = 0.0  # probability of turning the image gray (3 equal channels)
    randaugment: tuple[int, int] | None = None  # (num_ops, magnitude in [0, 30]), e.g. (2, 9)
    re_prob: float = 0.0  # probability of random erasing (per-pixel normal noise, after normalize)
    re_count: int = 1  # rectangles erased when erasing happens
    # JPEGs whose crop is at least twice the target size are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    # scaling) and resampled from there: the same crops, several times less decoding. False: full decode.
    reduced_decode: bool = True

    def __post_init__(self):
        for name in ("scale", "ratio"):
            value = getattr(self, name)
            value = tuple(value) if isinstance(value, list) else value
            _check_range(value, name)
            object.__setattr__(self, name, value)
        if self.scale[1] > 1:
            raise ConfigError(f"scale is a fraction of the image area and must be <= 1, got {self.scale!r}")
        for name in ("hflip", "color_jitter_prob", "grayscale", "re_prob"):
            _check_prob(getattr(self, name), name)
        object.__setattr__(self, "color_jitter", self._jitter_tuple())
        if self.randaugment is not None:
            ra = tuple(self.randaugment)
            if len(ra) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in ra) \
                    or ra[0] < 0 or not 0 <= ra[1] <= 30:
                raise ConfigError(f"randaugment must be (num_ops >= 0, magnitude in [0, 30]) ints, "
                                  f"e.g. (2, 9); got {self.randaugment!r}")
            object.__setattr__(self, "randaugment", ra)
        if not isinstance(self.reduced_decode, bool):
            raise ConfigError(f"reduced_decode must be true or false, got {self.reduced_decode!r}")
        if isinstance(self.re_count, bool) or not isinstance(self.re_count, int) or self.re_count < 1:
            raise ConfigError(f"re_count must be an int >= 1, got {self.re_count!r}")

    def _jitter_tuple(self) -> tuple[float, float, float, float]:
        cj = self.color_jitter
        if isinstance(cj, (int, float)) and not isinstance(cj, bool):
            cj = (cj, cj, cj, 0.0)  # a single strength jitters brightness/contrast/saturation, not hue
        cj = tuple(cj) if isinstance(cj, (list, tuple)) else cj
        if not isinstance(cj, tuple) or len(cj) not in (3, 4):
            raise ConfigError(f"color_jitter must be a number or 3/4 numbers "
                              f"(brightness, contrast, saturation[, hue]), got {self.color_jitter!r}")
        cj = tuple(float(v) for v in cj) + ((0.0,) if len(cj) == 3 else ())
        if min(cj) < 0 or cj[3] > 0.5:
            raise ConfigError(f"color_jitter values must be >= 0 and hue <= 0.5, got {self.color_jitter!r}")
        return cj

    @classmethod
    def from_open_clip(cls, aug_cfg: Mapping[str, Any]) -> "AugmentConfig":
        """Read open_clip's ``--aug-cfg`` dict, including timm's ``auto_augment='rand-m9-n2'``."""
        renamed = {"gray_scale_prob": "grayscale"}
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in aug_cfg.items():
            if value is None or key == "use_timm":
                continue  # use_timm only picked a backend in open_clip; every option works here
            if key == "auto_augment":
                kwargs["randaugment"] = parse_randaugment(value)
                continue
            name = renamed.get(key, key)
            if name not in known:
                raise ConfigError(f"open_clip aug_cfg key {key!r} has no clipforge equivalent; "
                                  f"known: {sorted(known | set(renamed))}")
            kwargs[name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)


def parse_randaugment(spec: str) -> tuple[int, int]:
    """timm-style ``'rand-m9-n2'`` -> ``(num_ops, magnitude)``; unsupported parts raise instead of vanishing."""
    parts = str(spec).split("-")
    if parts[0] != "rand":
        raise ConfigError(f"auto_augment {spec!r}: only RandAugment ('rand-m9-n2') is supported")
    num_ops, magnitude = 2, 9
    for part in parts[1:]:
        key, val = part[:1], part[1:]
        if key in ("m", "n") and val.isdigit():
            magnitude, num_ops = (int(val), num_ops) if key == "m" else (magnitude, int(val))
        else:
            raise ConfigError(f"auto_augment {spec!r}: part {part!r} is not supported; use only "
                              f"'m<magnitude>' and 'n<num_ops>', e.g. 'rand-m9-n2'")
    return num_ops, magnitude


class PreprocessMismatchError(ConfigError):
    """The weights' declared preprocessing and a config file disagree."""


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        # JSON files may round the constants; a difference this small changes no pixel after uint8.
        return not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a != b


def resolve_preprocess(declared: PreprocessConfig | None, from_file: PreprocessConfig | None,
                       overrides: Mapping[str, Any] | None = None) -> PreprocessConfig:
    """Pick the preprocessing: the weights' ``declared`` one, else ``from_file``, then ``overrides``.

    When both sources are given and disagree on a field, that field must be set in ``overrides``;
    otherwise ``PreprocessMismatchError`` names both values (open_clip silently takes one of them).
    """
    overrides = dict(overrides or {})
    if declared is not None and from_file is not None:
        conflicts = [f.name for f in fields(PreprocessConfig)
                     if _differs(getattr(declared, f.name), getattr(from_file, f.name)) and f.name not in overrides]
        if conflicts:
            lines = [f"  {n}: weights declare {getattr(declared, n)!r}, config file says {getattr(from_file, n)!r}"
                     for n in conflicts]
            pick = {n: to_dict(getattr(declared, n)) for n in conflicts}
            raise PreprocessMismatchError(
                "the weights' preprocessing and the config file disagree:\n" + "\n".join(lines)
                + f"\nChoose explicitly with overrides, e.g. overrides={pick!r} to keep the weights' values.")
    base = declared if declared is not None else (from_file if from_file is not None else PreprocessConfig())
    return apply_overrides(base, overrides) if overrides else base


# ---------------------------------------------------------------- mode handling


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    values = np.asarray(img).astype(np.float64)
    return Image.fromarray(np.rint(values / 257.0).astype(np.uint8))  # 65535 -> 255; a 2-D uint8 array is L


def prepare_mode(img: Image.Image) -> Image.Image:
    """Convert the modes that open_clip mishandles; every other mode is returned unchanged."""
    mode = img.mode
    if mode.startswith("I;16"):
        return _sixteen_bit_to_l(img)
    if mode == "PA":
        return img.convert("RGBA")
    if mode == "La":
        return img.convert("LA")
    return img


def _is_uint8_chw_tensor(img: Any) -> bool:
    """A torch uint8 (C, H, W) tensor, recognised without importing torch."""
    return (type(img).__module__.startswith("torch") and str(getattr(img, "dtype", "")) == "torch.uint8"
            and img.ndim == 3 and img.shape[0] in (1, 3))


def _as_pil(img: Any) -> Image.Image:
    if isinstance(img, Image.Image):
        return img
    if _is_uint8_chw_tensor(img):
        img = img.permute(1, 2, 0).numpy()  # (C,H,W) -> (H,W,C)
    if isinstance(img, np.ndarray) and img.dtype == np.uint8 and (img.ndim == 2 or img.shape[-1] in (1, 3, 4)):
        return Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
    raise TypeError(f"expected a PIL image (or uint8 array HxWxC / tensor CxHxW), got {type(img).__name__}"
                    f"{getattr(img, 'shape', '')}; open images with PIL.Image.open(path)")


class PrepareMode:
    """Accept PIL images (and uint8 arrays) and fix the modes open_clip gets wrong."""

    def __call__(self, img):
        return prepare_mode(_as_pil(img))

    def __repr__(self):
        return "PrepareMode()"


class ToRGB:
    """``convert('RGB')``; for RGBA this drops alpha without compositing, exactly like open_clip."""

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode == "RGB":
            return img
        try:
            return img.convert("RGB")
        except ValueError as e:
            raise ValueError(f"cannot convert a PIL image of mode {img.mode!r} to RGB ({e}); "
                             f"convert it to 'RGB' yourself before preprocessing") from None

    def __repr__(self):
        return "ToRGB()"


# ---------------------------------------------------------------- geometry


def _round_size(value: float) -> int:
    return max(1, round(value))  # extreme aspect ratios must not give a 0-pixel edge


class Resize:
    """Resize for one ``resize_mode``; output sizes are computed the way open_clip computes them."""

    def __init__(self, size_hw: tuple[int, int], resize_mode: str, interpolation: str):
        self.size_hw = tuple(size_hw)
        self.resize_mode = resize_mode
        self.interpolation = interpolation

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(new_width, new_height) for an input of ``width`` x ``height``."""
        target_h, target_w = self.size_hw
        if self.resize_mode == "squash":
            return target_w, target_h
        if self.resize_mode == "shortest" and target_h == target_w:
            # open_clip uses torchvision's scalar Resize here, which truncates the long edge
            short, long = min(width, height), max(width, height)
            new_short, new_long = target_h, int(target_h * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        # open_clip's ResizeKeepRatio: scale by the larger (longest) or smaller (shortest) ratio, rounded
        ratio_h, ratio_w = height / target_h, width / target_w
        ratio = max(ratio_h, ratio_w) if self.resize_mode == "longest" else min(ratio_h, ratio_w)
        return _round_size(width / ratio), _round_size(height / ratio)

    def __call__(self, img: Image.Image) -> Image.Image:
        new_size = self.output_size(*img.size)
        if new_size == img.size:
            return img
        return img.resize(new_size, _RESAMPLE[self.interpolation])

    def __repr__(self):
        return f"Resize(size_hw={self.size_hw}, resize_mode={self.resize_mode!r}, interpolation={self.interpolation!r})"


class CenterCropOrPad:
    """Center crop to ``size_hw``; an edge that is too short is first padded evenly with ``fill``."""

    def __init__(self, size_hw: tuple[int, int], fill: int = 0):
        self.size_hw = tuple(size_hw)
        self.fill = fill

    def __call__(self, img: Image.Image) -> Image.Image:
        crop_h, crop_w = self.size_hw
        width, height = img.size
        if crop_w > width or crop_h > height:
            pad_left, pad_top = max(crop_w - width, 0) // 2, max(crop_h - height, 0) // 2
            canvas = Image.new(img.mode, (max(width, crop_w), max(height, crop_h)), (self.fill,) * len(img.getbands()))
            canvas.paste(img, (pad_left, pad_top))
            img, (width, height) = canvas, canvas.size
        if (width, height) == (crop_w, crop_h):
            return img
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        return img.crop((left, top, left + crop_w, top + crop_h))

    def __repr__(self):
        return f"CenterCropOrPad(size_hw={self.size_hw}, fill={self.fill})"


class RandomResizedCrop:
    """Random area/aspect crop resized to ``size_hw`` (torchvision's sampling, torch's global RNG)."""

    def __init__(self, size_hw: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
                 interpolation: str = "bicubic"):
        self.size_hw = tuple(size_hw)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.interpolation = interpolation

    def params(self, img: Image.Image) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the next crop; needs only the image's size and bands, so it works on an
        opened image before its pixels are decoded."""
        return tuple(_tvt().RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio)))

    def apply(self, img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
        top, left, height, width = box
        img = img.crop((left, top, left + width, top + height))
        target = (self.size_hw[1], self.size_hw[0])
        return img if img.size == target else img.resize(target, _RESAMPLE[self.interpolation])

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.apply(img, self.params(img))

    def __repr__(self):
        return (f"RandomResizedCrop(size_hw={self.size_hw}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation!r})")


# ---------------------------------------------------------------- tensors


class ToNormalizedArray:
    """RGB PIL image -> float32 (3, H, W) numpy array ``(pixel / 255 - mean) / std``.

    The 256 possible values per channel are computed once, with the same float32 operations as
    torchvision's ``ToTensor`` + ``Normalize`` (IEEE float32 division and subtraction round the same in numpy and
    torch), so a table lookup gives identical numbers faster.
    """

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]):
        self.mean = tuple(mean)
        self.std = tuple(std)
        levels = np.arange(256, dtype=np.float32) / np.float32(255)
        mean_a = np.asarray(self.mean, dtype=np.float32)[:, None]
        std_a = np.asarray(self.std, dtype=np.float32)[:, None]
        self.table = (levels[None, :] - mean_a) / std_a  # (3, 256) float32

    def __call__(self, img: Image.Image) -> np.ndarray:
        if img.mode != "RGB":
            raise ValueError(f"{type(self).__name__} expects an RGB image, got mode {img.mode!r}")
        pixels = np.asarray(img)  # (H, W, 3) uint8
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], pixels[..., channel], out=out[channel])
        return out

    def __repr__(self):
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class ToNormalizedTensor(ToNormalizedArray):
    """``ToNormalizedArray``'s numbers as a torch tensor, looked up with ``torch.gather`` (on the data-loading hot
    path it is about 15% faster than numpy's per-channel ``take``)."""

    def __call__(self, img: Image.Image):
        import torch

        if img.mode != "RGB":
            raise ValueError(f"{type(self).__name__} expects an RGB image, got mode {img.mode!r}")
        width, height = img.size
        pixels = torch.from_numpy(np.array(img))  # (H, W, 3) uint8; a writable copy
        index = pixels.permute(2, 0, 1).reshape(3, height * width).long()  # (3, H*W)
        return torch.gather(torch.from_numpy(self.table), 1, index).view(3, height, width)


class ToUint8Tensor:
    """RGB PIL image -> uint8 (3, H, W) torch tensor, the pixels as they are. The training pipeline ships these
    (a quarter of float32's bytes through worker queues, pinned memory and the host-to-device copy) and
    ``BatchNormalizer`` turns a whole batch into ``ToNormalizedTensor``'s numbers on the device."""

    def __call__(self, img: Image.Image):
        import torch

        if img.mode != "RGB":
            raise ValueError(f"{type(self).__name__} expects an RGB image, got mode {img.mode!r}")
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()  # (3, H, W) uint8

    def __repr__(self):
        return f"{type(self).__name__}()"


class BatchNormalizer:
    """uint8 (B, 3, H, W) batch -> float32 ``(pixel / 255 - mean) / std`` on the batch's device.

    Each channel is a lookup in ``ToNormalizedArray``'s 256-entry table, so the numbers are the ones the
    per-image transform gives, bit for bit, on any device (arithmetic on a GPU may divide by a scalar as a
    multiplication by its reciprocal, which rounds differently).
    """

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]):
        self.mean, self.std = tuple(mean), tuple(std)
        self._tables: dict = {}

    def _table(self, device):
        import torch

        key = str(device)
        if key not in self._tables:
            self._tables[key] = torch.from_numpy(ToNormalizedArray(self.mean, self.std).table).to(device)
        return self._tables[key]

    def __call__(self, images, one_kernel: bool | None = None):
        """``one_kernel``: look the whole batch up at once (default on accelerators); on a CPU one image at a
        time stays in cache, about 2.5x faster."""
        import torch

        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects a uint8 (B, 3, H, W) batch, got {images.dtype} "
                             f"{tuple(images.shape)}")
        table = self._table(images.device)
        batch, _, height, width = images.shape
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
        flat_in, flat_out = images.reshape(batch, 3, height * width), out.view(batch, 3, height * width)
        if one_kernel if one_kernel is not None else images.device.type != "cpu":
            for start in range(0, batch, 64):  # slices keep the int64 index copy small (8 bytes per value)
                part = flat_in[start:start + 64]
                torch.gather(table.expand(len(part), 3, 256), 2, part.long(), out=flat_out[start:start + 64])
        else:
            for i in range(batch):
                torch.gather(table, 1, flat_in[i].long(), out=flat_out[i])
        return out

    def __repr__(self):
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class RandomErasing:
    """With probability ``prob``, replace ``count`` random rectangles by standard-normal noise.

    Runs after normalization, where N(0, 1) noise has the statistics of an average pixel.
    """

    def __init__(self, prob: float, count: int = 1):
        self.prob = prob
        self.count = count

    def __call__(self, x):
        import torch

        if torch.rand(1).item() >= self.prob:
            return x
        x = x.clone()
        for _ in range(self.count):
            top, left, h, w, noise = _tvt().RandomErasing.get_params(x, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value=None)
            x[..., top:top + h, left:left + w] = noise
        return x

    def __repr__(self):
        return f"RandomErasing(prob={self.prob}, count={self.count})"


# ---------------------------------------------------------------- pipelines


def _check_type(value: Any, cls: type, name: str) -> Any:
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be an instance of {cls.__name__}, got {type(value).__name__}; build one with "
                        f"clipforge.config.from_dict({cls.__name__}, d) or {cls.__name__}.from_open_clip(d)")
    return value


def _eval_geometry(cfg: PreprocessConfig) -> list[Callable]:
    _check_type(cfg, PreprocessConfig, "cfg")
    steps: list[Callable] = [PrepareMode(), Resize(cfg.size_hw, cfg.resize_mode, cfg.interpolation), ToRGB()]
    if cfg.resize_mode != "squash":
        steps.append(CenterCropOrPad(cfg.size_hw, fill=cfg.fill_color))
    return steps


def create_eval_transform(cfg: PreprocessConfig):
    """Deterministic preprocessing: resize, RGB, center crop (or pad), normalize -> (3, H, W) tensor."""
    return _tvt().Compose([*_eval_geometry(cfg), ToNormalizedTensor(cfg.mean, cfg.std)])


class ArrayPipeline:
    """Steps applied in order, without torchvision (``create_eval_array_transform``)."""

    def __init__(self, steps: list[Callable]):
        self.steps = steps

    def __call__(self, img):
        for step in self.steps:
            img = step(img)
        return img

    def __repr__(self):
        return "ArrayPipeline(" + ", ".join(map(repr, self.steps)) + ")"


def create_eval_array_transform(cfg: PreprocessConfig) -> ArrayPipeline:
    """``create_eval_transform``'s numbers as a float32 (3, H, W) numpy array, without torch or torchvision."""
    return ArrayPipeline([*_eval_geometry(cfg), ToNormalizedArray(cfg.mean, cfg.std)])


def _augment_steps(aug: AugmentConfig) -> list[Callable]:
    """The PIL-stage augmentations, in the order timm applies them."""
    steps: list[Callable] = []
    if aug.hflip > 0:
        steps.append(_tvt().RandomHorizontalFlip(aug.hflip))
    if aug.randaugment is not None and aug.randaugment[0] > 0:
        # On uint8 PIL images, before normalization: several of its ops (posterize, solarize,
        # equalize) are only defined on 8-bit pixels.
        steps.append(_tvt().RandAugment(num_ops=aug.randaugment[0], magnitude=aug.randaugment[1]))
    if any(v > 0 for v in aug.color_jitter):
        jitter = _tvt().ColorJitter(*aug.color_jitter)
        steps.append(jitter if aug.color_jitter_prob >= 1 else _tvt().RandomApply([jitter], p=aug.color_jitter_prob))
    if aug.grayscale > 0:
        steps.append(_tvt().RandomGrayscale(aug.grayscale))
    return steps


_DCT_SCALES = (8, 4, 2)  # the reductions libjpeg decodes to directly, largest first


class TrainTransform:
    """Training preprocessing: random resized crop, RGB, augmentations, normalize, random erasing.

    ``transform(img)`` takes a decoded image, like any torchvision transform. ``transform.decode(opened)`` takes
    an image opened but not yet decoded (``PIL.Image.open``): the crop is drawn from the header's size first
    (the same draw, from the same generator, as ``transform(img)`` makes), then a JPEG whose crop is at least
    twice the target size is decoded at 1/2, 1/4 or 1/8 scale and the crop is resampled from that smaller
    image, its box in fractional coordinates. Other images are decoded whole and cropped exactly as
    ``transform(img)`` does. ``finish`` runs the steps after the crop. The training pipeline calls
    ``decode`` + ``finish``; the pixels of a reduced decode differ from a full decode by resampling noise only
    (the tests compare crop statistics), and decoding a 1024 px JPEG costs about a quarter as much.
    """

    def __init__(self, crop: RandomResizedCrop, after: list[Callable], reduced_decode: bool = True,
                 batch_normalizer: "BatchNormalizer | None" = None):
        self.crop, self.after, self.reduced_decode = crop, list(after), reduced_decode
        # Set when the transform ends in uint8 pixels: the batch is normalised by it after collation
        self.batch_normalizer = batch_normalizer
        self.transforms = [PrepareMode(), crop, ToRGB(), *self.after]  # torchvision's Compose attribute name

    def __call__(self, img):
        img = prepare_mode(_as_pil(img))
        return self.finish(self.crop(img))

    def finish(self, img: Image.Image):
        img = ToRGB()(img)
        for step in self.after:
            img = step(img)
        return img

    def _reduction(self, img: Image.Image, box: tuple[int, int, int, int]) -> int:
        if not self.reduced_decode or img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return 1
        target_h, target_w = self.crop.size_hw
        _, _, height, width = box
        return next((k for k in _DCT_SCALES if width >= k * target_w and height >= k * target_h), 1)

    def decode(self, img: Image.Image) -> Image.Image:
        """The crop of an opened, not yet decoded image, at the target size (see the class docstring)."""
        box = self.crop.params(img)
        k = self._reduction(img, box)
        if k == 1:
            img.load()
            return self.crop.apply(prepare_mode(img.convert("RGB")), box)
        full_w, full_h = img.size
        # Pillow picks the largest scale s with full // requested >= s, and then decodes ceil(full / s) pixels.
        img.draft(img.mode, (full_w // k, full_h // k))
        scale = next((s for s in (*_DCT_SCALES, 1) if img.size == (-(-full_w // s), -(-full_h // s))), None)
        if scale is None:  # pragma: no cover - a Pillow that scales differently: fall back to exact sizes
            scale = full_w / img.width
        top, left, height, width = box
        target = (self.crop.size_hw[1], self.crop.size_hw[0])
        small = img.resize(target, _RESAMPLE[self.crop.interpolation],
                           box=(left / scale, top / scale, (left + width) / scale, (top + height) / scale))
        return small if small.mode == "RGB" else small.convert("RGB")

    def __repr__(self):
        return f"TrainTransform({', '.join(map(repr, self.transforms))}, reduced_decode={self.reduced_decode})"


def create_train_transform(cfg: PreprocessConfig, aug: AugmentConfig | None = None, *,
                           uint8: bool = False) -> TrainTransform:
    """Training preprocessing: random resized crop, RGB, augmentations, normalize, random erasing.

    With the default ``AugmentConfig`` the output of ``transform(img)`` equals open_clip's training transform
    under the same torch seed (when ``cfg.interpolation`` is bicubic, the only one open_clip uses for training).
    ``uint8=True`` stops before normalisation: ``transform(img)`` gives the uint8 pixels and
    ``transform.batch_normalizer(batch)`` the same float numbers for a whole collated batch, on its device.
    Random erasing works on normalised values, so with ``aug.re_prob > 0`` the images are normalised per image
    (``batch_normalizer`` is None) whatever ``uint8`` says.
    """
    _check_type(cfg, PreprocessConfig, "cfg")
    aug = AugmentConfig() if aug is None else _check_type(aug, AugmentConfig, "aug")
    after: list[Callable] = _augment_steps(aug)
    normalizer = None
    if uint8 and aug.re_prob == 0:
        after.append(ToUint8Tensor())
        normalizer = BatchNormalizer(cfg.mean, cfg.std)
    else:
        after.append(ToNormalizedTensor(cfg.mean, cfg.std))
    if aug.re_prob > 0:
        after.append(RandomErasing(aug.re_prob, aug.re_count))
    crop = RandomResizedCrop(cfg.size_hw, aug.scale, aug.ratio, cfg.interpolation)
    return TrainTransform(crop, after, reduced_decode=aug.reduced_decode, batch_normalizer=normalizer)
