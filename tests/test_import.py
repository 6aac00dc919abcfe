"""Weight import from PyTorch (runs/import_weights.py, robust-vision-import).

The PyTorch reference modules (models/torch_reference.py) follow RobustBench's definitions
(robustbench/model_zoo/architectures/resnet.py PreActResNet, wide_resnet.py WideResNet), so the
test needs nothing but torch (an optional extra; skipped without it).
"""

from __future__ import annotations

import numpy as np
import pytest

from robust_vision.runs.import_weights import WeightImportError, convert_state_dict


def _torch_reference():
    pytest.importorskip("torch")
    from robust_vision.models.torch_reference import torch_architectures

    return torch_architectures()


def _randomize_batch_norm(torch, module) -> None:
    from robust_vision.models.torch_reference import randomize_batch_norm

    randomize_batch_norm(module)


def _export(torch, module, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


@pytest.mark.parametrize("arch", ["preact_resnet18", "wrn"])
def test_imported_logits_equal_pytorch(tmp_path, arch):
    """Export a random PyTorch model, import it, restore it as robust-vision-eval does and
    compare logits on the same images (eval mode)."""
    torch, PreActResNet18, WideResNet = _torch_reference()
    from robust_vision.runs.loading import load_trained_model
    from robust_vision.runs.import_weights import import_weights

    torch.manual_seed(0)
    if arch == "preact_resnet18":
        ref, name, overrides = PreActResNet18(num_classes=7, width=8), "preact_resnet18", ["model.width=8"]
    else:
        ref, name, overrides = WideResNet(depth=10, widen=2, num_classes=7), "wrn-28-10", []
    _randomize_batch_norm(torch, ref)
    ref.eval()
    _export(torch, ref, tmp_path / "model.safetensors")
    if arch == "wrn":
        # the file holds a WRN-10-2; import it under the generic constructor's registry entry
        from robust_vision.models import register_model
        from robust_vision.models.robustbench import WIDE_RESNETS, wide_resnet
        register_model("wrn-10-2", wide_resnet(10, 2), lambda cfg: {})
        WIDE_RESNETS["wrn-10-2"] = (10, 2)
        name = "wrn-10-2"
    try:
        run = import_weights(tmp_path / "model.safetensors", name, tmp_path / "run", overrides=overrides)
        loaded = load_trained_model(run)
    finally:
        if arch == "wrn":
            from robust_vision.models import MODELS
            MODELS.pop("wrn-10-2"), WIDE_RESNETS.pop("wrn-10-2")
    assert loaded.num_classes == 7 and loaded.input_shape == (32, 32, 3)
    images = np.random.default_rng(1).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    ours = np.asarray(loaded.logits_fn()(images))
    assert np.abs(expected).max() > 0.1  # logits of a real size, so 1e-4 is a real bound
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_named_parameter_counts_equal_pytorch_reference():
    """Our RobustBench variants have exactly the reference's parameter count (counted from
    abstract shapes; the reference on the meta device; sub_block1 excluded as it is unused)."""
    torch, PreActResNet18, WideResNet = _torch_reference()
    import jax
    from flax import nnx

    from robust_vision.models.robustbench import WIDE_RESNETS, PreActResNet18 as Ours, WideResNet as OursWRN

    def ours(build):
        state = nnx.state(nnx.eval_shape(build), nnx.Param)
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))

    def theirs(module):
        return sum(p.numel() for n, p in module.named_parameters() if not n.startswith("sub_block1."))

    with torch.device("meta"):
        assert ours(lambda: Ours(input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0))) == theirs(PreActResNet18())
        for depth, widen in WIDE_RESNETS.values():
            ref = WideResNet(depth=depth, widen=widen)
            assert ours(lambda: OursWRN(input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(0), depth=depth,
                                        widen=widen)) == theirs(ref)


@pytest.fixture(scope="module")
def tiny_parts():
    """A PreActResNet-18 of width 2 on 8x8 inputs, built once for the torch-free tests."""
    from robust_vision.config import ModelConfig
    from robust_vision.models import create_model
    from robust_vision.models.state import split_model

    model = create_model(ModelConfig(name="preact_resnet18", width=2), input_shape=(8, 8, 3), num_classes=3, seed=0)
    return split_model(model)


def _state_dict_of(parts) -> dict[str, np.ndarray]:
    """A correct state_dict (PyTorch layout) for the tiny model, built without torch."""
    import jax

    from robust_vision.runs.import_weights import torch_key
    from robust_vision.models.stages import path_names

    out = {}
    for tree in (parts.params, parts.model_state):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            a = np.asarray(leaf)
            out[torch_key(path_names(path), "preact")] = (a.transpose(3, 2, 0, 1) if a.ndim == 4 else
                                                          a.T if a.ndim == 2 else a)
    return out


def test_round_trip_without_torch_and_ignored_keys(tiny_parts):
    """Our own weights written in PyTorch layout come back bit-identical; num_batches_tracked
    and a DataParallel 'module.' prefix are accepted."""
    import jax

    parts = tiny_parts
    sd = _state_dict_of(parts)
    sd["bn.num_batches_tracked"] = np.array(3)
    sd = {f"module.{k}": v for k, v in sd.items()}
    params, model_state = convert_state_dict(sd, "preact_resnet18", parts.params, parts.model_state)
    for a, b in zip(jax.tree.leaves((params, model_state)), jax.tree.leaves((parts.params, parts.model_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_key_mismatch_names_missing_and_unexpected(tmp_path, capsys, tiny_parts):
    from safetensors.numpy import save_file

    from robust_vision.cli import import_main

    parts = tiny_parts
    sd = _state_dict_of(parts)
    del sd["layer2.0.shortcut.0.weight"]
    sd["layer2.0.shortcut.weight"] = np.zeros((4, 2, 1, 1), np.float32)
    with pytest.raises(WeightImportError, match=r"missing keys: layer2\.0\.shortcut\.0\.weight; "
                                                r"unexpected keys: layer2\.0\.shortcut\.weight"):
        convert_state_dict(sd, "preact_resnet18", parts.params, parts.model_state)

    save_file(sd, str(tmp_path / "bad.safetensors"))
    code = import_main(["--from", str(tmp_path / "bad.safetensors"), "--model", "preact_resnet18",
                        "--output", str(tmp_path / "run"), "--image-size", "8", "--override", "model.width=2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "missing keys: layer2.0.shortcut.0.weight" in err and "unexpected keys: layer2.0.shortcut.weight" in err
    assert not (tmp_path / "run").exists()  # nothing written on a bad file


def test_shape_mismatch_and_pt_without_torch(tmp_path, monkeypatch, tiny_parts):
    parts = tiny_parts
    sd = _state_dict_of(parts)
    sd["linear.bias"] = np.zeros(5, np.float32)
    with pytest.raises(WeightImportError, match=r"linear\.bias: shape \(5,\)"):
        convert_state_dict(sd, "preact_resnet18", parts.params, parts.model_state)

    import builtins

    from robust_vision.runs.import_weights import read_state_dict

    (tmp_path / "model.pt").write_bytes(b"not read")
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("no torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(WeightImportError, match="install the torch extra .* or convert the file to .safetensors"):
        read_state_dict(tmp_path / "model.pt")


def test_pt_file_read_with_weights_only(tmp_path):
    """A .pt state_dict is read through torch.load(weights_only=True); a pickled object that
    is not plain tensors is refused rather than executed."""
    torch, PreActResNet18, _ = _torch_reference()
    from robust_vision.runs.import_weights import read_state_dict

    ref = PreActResNet18(num_classes=3, width=2)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "model.pt")
    sd = read_state_dict(tmp_path / "model.pt")
    np.testing.assert_array_equal(sd["conv1.weight"], ref.conv1.weight.detach().numpy())

    import argparse

    torch.save(argparse.Namespace(weights=1), tmp_path / "object.pt")  # an arbitrary pickled object
    with pytest.raises(WeightImportError, match="weights_only=True"):
        read_state_dict(tmp_path / "object.pt")
