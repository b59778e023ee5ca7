"""Typed configuration: defaults in code (dataclasses), values in YAML, overrides on the command line.

``load_config("synth", ["epochs=3", "optim.lr=0.01"])`` merges, in order: the dataclass
defaults, a built-in recipe from ``bcct/configs/`` (or a YAML path), then ``key=value``
overrides (OmegaConf dotlist). A few short aliases (``epochs``, ``batch_size``, ``lr``,
``delta``) name the keys users change most.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bcct.errors import BadInput

# Mean/std of ImageNet: the normalisation torchvision's pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    root: str = ""
    backgrounds: str = ""  # Background Image Set folder; empty: ROOT/backgrounds; "auto": border crops of train images
    layout: str = "auto"  # auto (recognised from ROOT) | cub | ilsvrc | wsol | folders (bcct/data/readers.py)
    metadata: str = ""  # layout wsol: wsolevaluation's metadata/<DATASET> folder; empty: ROOT/metadata
    image_size: int = 224  # paper 5.1: 224x224 crops
    crop_scale: tuple[float, float] = (0.25, 1.0)  # RandomResizedCrop area range (our choice, see configs)
    hflip: float = 0.5  # paper 5.1
    vflip: float = 0.5  # paper 5.1
    brightness: tuple[float, float] = (0.6, 1.4)  # paper 5.1
    saturation: tuple[float, float] = (0.6, 1.4)  # paper 5.1
    hue: float = 0.0  # paper says "scale hue in [0.6, 1.4]"; torchvision's hue is a shift, see docs
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    val_fraction: float = 0.1  # held out of train to choose the CAM threshold (Choe et al. 2020)
    workers: int = 2


@dataclass
class ModelConfig:
    backbone: str = "vgg16"
    pretrained: str = "imagenet"  # imagenet | standin | none | PATH to a state-dict file
    head_width: int = 1024  # paper 5.1 (ACoL head): two 3x3 convs with 1024 filters
    head_bn: bool = False  # BatchNorm in the head (not in the paper; helps small CPU models)
    head_init: str = "auto"  # new convs (CAM head, mask branch): default (PyTorch's) | xavier (ACoL's) | auto (xavier for vgg16_acol)
    train_from: str = ""  # CT backbone: freeze the layers before the first parameter named with this prefix (e.g. blocks.4); empty: fine-tune all


@dataclass
class OptimConfig:
    epochs: int = 100  # paper 5.1
    batch_size: int = 32
    lr: float = 1e-3  # new layers (paper 5.1)
    lr_backbone: float = 1e-4  # pretrained conv layers (paper 5.1)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step_epochs: int = 20  # divide by 10 every 20 epochs (paper 5.1)
    lr_gamma: float = 0.1
    checkpoint_every: int = 0  # also write last.pt every N optimisation steps (0: at epoch ends only); resume skips the steps done
    log_every: int = 20  # read the step logs and the finiteness check back from the device every N steps (each read is a host sync)


@dataclass
class EvalConfig:
    threshold_step: float = 0.01  # CAM threshold grid 0.00..0.99 (wsolevaluation uses 0.001)
    threshold: float | None = None  # fixed CAM threshold; None: choose on the held-out val split
    batch_size: int = 64
    select: str = "top1_loc"  # best.pt: best val top-1 loc (top1_loc) or the last epoch (last)
    every: int = 1  # evaluate val every N epochs and always after the last (0: after the last only); best.pt only from evaluated epochs
    scales: list[int] = field(default_factory=list)  # test-time input sides, outputs averaged (bcct/test_time.py); []: data.image_size only


@dataclass
class BCCTConfig:
    delta: float = 0.8  # Eq. 2: the mask keeps G >= delta * max(G) (paper Table 3 best: 0.8)
    mask_weight: float = 1.0  # lambda in l_CT = l_cls + lambda * l_mask (paper Eq. 6: 1)
    mask_loss: str = "bce"  # bce (full per-pixel BCE) | paper (Eq. 5 literal: -sum M log A)
    mask_target: str = "both"  # cam (upsampled GT-class CAM, Eq. 5) | branch (separate branch, 4.1) | both
    mode: str = "end2end"  # end2end (paper 4.2) | two_stage (BC first, masks cached)
    bc_epochs: int = 3  # two-stage only: epochs of BC training before CT
    bc_lr: float = 1e-3
    bc_scale: float = 1.0  # BC model input scale; 0.5 runs BC at half resolution (about 4x cheaper, our addition)
    bc_hidden: int = 0  # BC classifier: 0 = GAP + linear; >0 = 1x1 conv + ReLU of this width first
    bc_head: str = "gap"  # gap (GAP + the classifier above) | fc (the paper's: VGG-16's pool5, fc6, fc7 kept frozen, only the final FC replaced)
    map: str = "input_gradient"  # BC map: input_gradient (Eq. 1) | grad_x_input | smoothgrad | gradcam (bcct/gradient_map.py)
    flip: bool = False  # average each map with that of the mirrored image
    reduce: str = "max"  # gradient channels -> one map: max of |g| (Simonyan et al.) | l2
    pool_cells: float = 1.0  # average the saliency over cells of this many backbone strides (0: off)
    blur: float = 0.0625  # Gaussian blur sigma as a fraction of the image side (0: off; 1/16 measured on synth, docs/bcct.md)
    normalize: str = "sqrt"  # map scaling: sqrt (delta on it is delta^2 x max on Eq. 2's scale) | max (Eq. 2 literally) | percentile | minmax
    literal: bool = False  # true: Eq. 1-2 as printed (input gradient, no pooling or blur, max) whatever the keys above say
    ignore_band: float = 0.0  # >0: only pixels below (1-band)*delta*max are sure background; the rest outside the mask is ignored
    warmup_epochs: int = 0  # plain CAM epochs before the mask loss is switched on


@dataclass
class LocalizerConfig:
    """BC-CT's learned class-agnostic localizer, the ``box`` readout (bcct/localizer.py)."""

    enabled: bool = False  # train it after the BC stage (two-stage BC-CT only); off in the paper's recipes
    teacher: str = "bc+norm"  # pseudo masks from: bc (the BC map) | norm (frozen feature norm) | bc+norm (their mean)
    delta: float = 0.35  # the teacher cut: delta x max, then the largest part (Eq. 2's rule)
    relabel_delta: float = 0.5  # self-training rounds cut the student's own maps here
    rounds: int = 1  # 1: train on the teacher's masks; 2+: relabel with the student and train again
    epochs: int = 4  # per round
    lr: float = 0.01
    width: int = 128
    blend: float = 0.5  # readout = (1 - blend) x student + blend x the feature-norm floor


@dataclass
class Config:
    method: str = "cam"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "false"  # mixed precision in training: false | auto (bf16 where the device has it natively) | bf16 (A100/H100, CPUs with AMX) | fp16 (older GPUs; with loss scaling)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bcct: BCCTConfig = field(default_factory=BCCTConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # per-method hyperparameters, e.g. extra.acol.erase_threshold=0.7 (defaults and sources in bcct/methods/<name>.py)


ALIASES = {
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "delta": "bcct.delta",
    "image_size": "data.image_size",
    "backbone": "model.backbone",
}


def builtin_configs() -> list[str]:
    """Names of the recipes shipped in ``bcct/configs``."""
    return sorted(p.name[:-5] for p in resources.files("bcct.configs").iterdir() if p.name.endswith(".yaml"))


def _recipe_text(name_or_path: str) -> tuple[str, str]:
    if name_or_path in builtin_configs():
        return name_or_path, resources.files("bcct.configs").joinpath(f"{name_or_path}.yaml").read_text()
    path = Path(name_or_path)
    if not path.is_file():
        raise BadInput(
            f"{name_or_path}: no such config file or built-in recipe; built-ins are: "
            + ", ".join(builtin_configs())
        )
    return str(path), path.read_text()


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None, **fields: Any) -> Config:
    """Defaults <- recipe YAML <- ``fields`` (e.g. method=...) <- ``key=value`` overrides."""
    cfg = OmegaConf.structured(Config)
    try:
        if name_or_path:
            where, text = _recipe_text(name_or_path)
            cfg = OmegaConf.merge(cfg, OmegaConf.create(text))
        if fields:
            cfg = OmegaConf.merge(cfg, {k: v for k, v in fields.items() if v is not None})
        dotlist = []
        for item in overrides or []:
            if "=" not in item:
                raise BadInput(f"override '{item}': expected key=value, e.g. epochs=3")
            key, value = item.split("=", 1)
            dotlist.append(f"{ALIASES.get(key, key)}={value}")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        where = f" key {key}" if key else ""
        raise BadInput(f"config{where}: {msg}; check the key names and value types in bcct/config.py") from None
    return OmegaConf.to_object(cfg)


def to_dict(cfg: Config) -> dict:
    """Plain-Python dict (for checkpoints, JSON and YAML)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def from_dict(d: dict) -> Config:
    """A config saved in a checkpoint; keys this version no longer knows are dropped, with a
    warning that names them."""
    schema = OmegaConf.structured(Config)
    dropped: list[str] = []
    known = _known(d, schema, "", dropped)
    if dropped:
        warnings.warn(f"config keys this bcct version does not know were dropped: {', '.join(dropped)}",
                      UserWarning, stacklevel=2)
    return OmegaConf.to_object(OmegaConf.merge(schema, known))


def _known(d: dict, schema, prefix: str, dropped: list[str]) -> dict:
    out = {}
    for k, v in d.items():
        if k not in schema:
            dropped.append(prefix + str(k))
            continue
        structured = OmegaConf.is_config(schema[k]) and OmegaConf.get_type(schema[k]) is not dict
        # free-form dicts (extra) kept whole
        out[k] = _known(v, schema[k], f"{prefix}{k}.", dropped) if isinstance(v, dict) and structured else v
    return out


# Keys a resumed run may change: they do not change what the steps done so far computed.
# The CAM threshold when val has no boxes to choose it on (class folders) and the method has
# no masks of its own to choose it against (BC-CT has: bcct.evaluate): CAM's own rule,
# the region above 20% of the map's maximum (Zhou et al., CVPR 2016, sec. 2); bcct's maps
# are min-max normalised first, so this is 20% of the range. eval.threshold=T replaces it.
NO_BOX_THRESHOLD = 0.2

RESUME_HARMLESS = ("optim.epochs", "optim.checkpoint_every", "optim.log_every", "device", "data.root", "data.backgrounds",
                   "data.workers", "eval.batch_size")


def resume_differences(saved: Config, cfg: Config) -> list[str]:
    """``key: saved -> now`` for every key (but :data:`RESUME_HARMLESS`) where ``cfg`` differs
    from the config a checkpoint was trained with."""
    a, b = _flat(to_dict(saved)), _flat(to_dict(cfg))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in RESUME_HARMLESS and a.get(k) != b.get(k)]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "extra":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
