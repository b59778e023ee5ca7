"""The shipped recipes: every one loads with no unknown key, and the paper recipes say where
every value comes from (a ``#`` comment naming the paper, ACoL's code, wsolevaluation or
"our choice")."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from bcct.config import builtin_configs, load_config
from bcct.errors import BadInput

PAPER_RECIPES = ["cub_vgg16_bcct", "cub_vgg16_cam", "ilsvrc_vgg16_bcct", "ilsvrc_vgg16_cam"]
SOURCES = ("paper", "acol", "wsolevaluation", "our choice")
VALUE_LINE = re.compile(r"^\s*[A-Za-z_][\w.]*\s*:\s*(?P<rest>.*)$")


def _text(name: str) -> str:
    return resources.files("bcct.configs").joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def test_paper_recipes_are_shipped():
    assert set(PAPER_RECIPES) <= set(builtin_configs())


@pytest.mark.parametrize("name", builtin_configs())
def test_every_recipe_loads(name):
    cfg = load_config(name)
    assert cfg.method in ("cam", "bcct")


def test_unknown_key_is_refused(tmp_path):
    """Guards the test above: load_config must reject a key config.py does not define."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  imag_size: 224\n")
    with pytest.raises(BadInput, match="imag_size"):
        load_config(str(bad))


def _value_lines(name: str) -> list[tuple[int, str, str]]:
    """(line number, line, value part) of every ``key: value`` line (section headers skipped)."""
    out = []
    for lineno, line in enumerate(_text(name).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = VALUE_LINE.match(line)
        assert m, f"{name}.yaml:{lineno}: not a 'key: value' line: {line!r}"
        value = m["rest"].split("#", 1)[0].strip()
        if value:
            out.append((lineno, line, value))
    return out


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_every_value_says_where_it_comes_from(name):
    lines = _value_lines(name)
    assert len(lines) > 20
    for lineno, line, _ in lines:
        assert "#" in line, f"{name}.yaml:{lineno}: value without a source comment: {line.strip()!r}"
        comment = line.split("#", 1)[1].lower()
        assert any(s in comment for s in SOURCES), f"{name}.yaml:{lineno}: comment names no source: {line.strip()!r}"


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_values(name):
    """What paper 5.1 / Table 3 fix, as numbers."""
    cfg = load_config(name)
    assert cfg.method == name.rsplit("_", 1)[1]
    assert cfg.data.layout == name.split("_", 1)[0]
    assert cfg.data.image_size == 224
    assert (cfg.data.hflip, cfg.data.vflip) == (0.5, 0.5)
    assert tuple(cfg.data.brightness) == tuple(cfg.data.saturation) == (0.6, 1.4)
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.head_width) == ("vgg16", "imagenet", 1024)
    o = cfg.optim
    scale = o.batch_size / 32  # the ILSVRC recipes scale the paper's rates with their batch (linear rule)
    assert (o.epochs, o.lr_step_epochs, o.lr_gamma) == (100, 20, 0.1)
    assert (o.lr, o.lr_backbone) == pytest.approx((1e-3 * scale, 1e-4 * scale))
    assert (o.momentum, o.weight_decay) == (0.9, 5e-4)
    assert cfg.eval.threshold is None and cfg.eval.threshold_step == 0.001
    if cfg.method == "bcct":
        # delta 0.5 goes with the measured Grad-CAM map (docs/bcct.md); the paper's 0.8 with its
        # input-gradient map is one switch away (bcct.literal=true bcct.delta=0.8).
        assert (cfg.bcct.delta, cfg.bcct.mask_weight, cfg.bcct.mode) == (0.5, 1.0, "end2end")
        assert (cfg.bcct.map, cfg.bcct.normalize, cfg.bcct.literal) == ("gradcam", "sqrt", False)



def test_from_dict_warns_naming_the_keys_it_drops():
    import warnings

    from bcct.config import from_dict, to_dict

    saved = to_dict(load_config("synth"))
    saved["bcct"]["old_knob"] = 3
    saved["gone"] = {"a": 1}
    with pytest.warns(UserWarning, match=r"dropped: bcct\.old_knob, gone"):
        cfg = from_dict(saved)
    assert not hasattr(cfg.bcct, "old_knob")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_dict(to_dict(cfg)) == cfg  # a config of this version: no warning
