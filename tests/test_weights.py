"""Pretrained weights: torchvision's cache, offline use (one clear error), and
``pretrained=PATH`` files."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from bcct.backbones import build_backbone, load_state_file
from bcct.cli import main
from bcct.errors import BadInput

from conftest import TINY_OVERRIDES


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torchvision cache (TORCH_HOME) and no network: every download fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home" / "hub" / "checkpoints", calls


def test_offline_and_not_cached_is_one_clear_error(offline, tiny_data, capsys):
    checkpoints, calls = offline
    code = main(["train", "--config", "synth", "--method", "cam", "--data", str(tiny_data), "--out",
                 str(checkpoints.parent / "run"), "--quiet", *TINY_OVERRIDES, "model.backbone=vgg16",
                 "model.pretrained=imagenet"])
    err = capsys.readouterr().err
    assert code == 2 and len(calls) == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download VGG16_Weights.IMAGENET1K_V1 ")
    assert "Temporary failure in name resolution" in err  # why
    assert str(checkpoints / "vgg16-397923af.pth") in err  # where torchvision looks
    assert "model.pretrained=PATH" in err  # what to do instead
    assert "Traceback" not in err


def test_corrupt_cached_weights_say_delete_it(offline):
    checkpoints, calls = offline
    checkpoints.mkdir(parents=True)
    (checkpoints / "vgg16-397923af.pth").write_bytes(b"not a weights file")
    with pytest.raises(BadInput, match=r"vgg16-397923af.pth: torchvision's cached VGG16_Weights.IMAGENET1K_V1 "
                                       r"cannot be loaded .*delete it") as err:
        build_backbone("vgg16", "imagenet")
    assert not calls  # the cached file was used, not downloaded again
    assert "model.pretrained=PATH" in str(err.value)


def test_pretrained_path_loads_a_torchvision_vgg16_state_dict(tmp_path):
    """A state dict saved from a (random-init) torchvision VGG-16, keys ``features.N.*``
    (its classifier is ignored), loads into the vgg16 backbone tensor for tensor."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])  # torchvision's VGG-16 features, as vgg16().features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # part of a full VGG-16 file, not of the backbone
    path = tmp_path / "vgg16_random.pth"
    torch.save(state, path)
    net = build_backbone("vgg16", str(path))
    own = net.state_dict()
    assert len(own) == 26  # 13 convs (pool5 dropped): weight + bias
    for k, v in own.items():
        assert torch.equal(v, state[f"features.{k}"]), k


def test_pretrained_path_errors(tmp_path):
    net = build_backbone("small_vgg", "none")
    state = net.state_dict()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "4.weight"}, "lacks 1 of the .* tensors of small_vgg"),
        "shape": ({**state, "0.weight": torch.zeros(8, 3, 3, 3)}, r"wrong shape for small_vgg \(0.weight \(8, 3, 3, 3\)"),
        "unrelated": ({"fc.weight": torch.zeros(2, 2)}, "none of its tensors match"),
        "not_a_dict": ([torch.zeros(2)], "holds no state dict"),
    }
    for name, (obj, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        with pytest.raises(BadInput, match=message) as err:
            build_backbone("small_vgg", str(path))
        assert str(path) in str(err.value), name
    with pytest.raises(BadInput, match="pretrained weights file not found"):
        build_backbone("small_vgg", str(tmp_path / "nope.pt"))
    good = tmp_path / "good.pt"
    torch.save({"backbone": state}, good)  # the stand-in cache's layout
    fresh = build_backbone("small_vgg", "none")
    load_state_file(fresh, str(good))
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())
