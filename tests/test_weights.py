"""load_weights: every accepted layout loads to identical outputs; every bad one fails clearly."""
import collections
import pickle

import pytest
import torch
from safetensors.torch import save_file

from resnetlab import UserError, create_model, load_weights
from resnetlab.models import save_safetensors


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    for m in model.modules():  # non-default BN statistics, so a missed buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
    return model


def _same(a, b):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def _fresh():
    torch.manual_seed(123)
    return create_model("resnet20")


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {}},
    lambda sd: {"model": {"state_dict": sd}},
    lambda sd: collections.OrderedDict((f"module.{k}", v) for k, v in sd.items()),  # DataParallel / DDP
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
], ids=["plain", "state_dict", "model", "nested", "module_prefix", "compiled"])
def test_layouts_load_to_identical_outputs(source, wrap, tmp_path):
    target = _fresh()
    load_weights(target, wrap(source.state_dict()))
    assert _same(source, target)
    path = tmp_path / "w.pt"  # and the same through a file read with weights_only=True
    torch.save(wrap(source.state_dict()), path)
    target = _fresh()
    load_weights(target, str(path))
    assert _same(source, target)


def test_cifar_repository_names_with_projection_shortcuts_load():
    """`linear` classifier and `shortcut` projections (akamaster's option B, kuangliu's nets): renamed
    only, as there is no zero padding whose channel order could differ (tests/test_layouts.py)."""
    src = create_model("resnet20", shortcut="B")
    sd = {k.replace(".downsample.", ".shortcut.").replace("fc.", "linear."): v for k, v in src.state_dict().items()}
    assert any(".shortcut." in k for k in sd) and "linear.weight" in sd
    target = create_model("resnet20", shortcut="B")
    load_weights(target, sd)
    assert _same(src, target)


def test_safetensors_round_trip(source, tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors(source, path, metadata={"model": "resnet20"})
    target = _fresh()
    load_weights(target, path)
    assert _same(source, target)


def test_flipped_bytes_in_a_saved_safetensors_file_are_found(source, tmp_path):
    """safetensors checks its header, not its data: a flipped bit in a weight loaded as a wrong weight."""
    path = tmp_path / "w.safetensors"
    save_safetensors(source, path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # in the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"^{path} is damaged: its tensors do not match the SHA-256 digest written "
                                        r"with them \(bits flipped"):
        load_weights(_fresh(), path)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "plain.safetensors")
    load_weights(_fresh(), tmp_path / "plain.safetensors")  # another tool's file, without a digest: read as it is


def test_missing_num_batches_tracked_is_tolerated(source):
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = _fresh()
    load_weights(target, sd)
    assert _same(source, target)


def test_mismatch_names_missing_unexpected_and_wrong_shapes(source):
    sd = dict(source.state_dict())
    sd.pop("layer1.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError) as err:
        load_weights(create_model("resnet20", num_classes=100), sd)
    msg = str(err.value)
    assert "missing (1): layer1.0.conv1.weight" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "wrong shape" in msg and "fc.weight (10, 64) vs model (100, 64)" in msg


def test_ignore_mismatched_head_for_fine_tuning(source):
    target = create_model("resnet20", num_classes=5)
    head = target.fc.weight.clone()
    report = load_weights(target, source.state_dict(), ignore_mismatched_head=True)
    assert report.skipped == ["fc.weight", "fc.bias"]
    assert torch.equal(target.fc.weight, head)
    assert torch.equal(target.conv1.weight, source.conv1.weight)


def test_integer_tensors_for_floating_ones_are_refused_not_cast(source):
    """load_state_dict casts silently: a file of int64 weights loaded as integer-valued floats."""
    sd = {k: (v.long() if k in ("conv1.weight", "fc.bias") else v) for k, v in source.state_dict().items()}
    target = _fresh()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError) as err:
        load_weights(target, sd)
    assert str(err.value) == ("weights do not fit the model: 2 tensors not floating point where the model's are: "
                              "conv1.weight (torch.int64), fc.bias (torch.int64)")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing loaded
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in source.state_dict().items()}
    load_weights(target, half)  # half-precision weights are weights: loaded (widened)
    assert torch.equal(target.conv1.weight, source.conv1.weight.half().float())


def test_nan_or_inf_weights_are_refused_naming_the_file_or_the_state_dict(source, tmp_path):
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    sd["layer2.0.bn1.running_var"][3] = float("inf")
    sd["fc.weight"][0, 0] = float("nan")
    target = _fresh()
    with pytest.raises(UserError, match=r"^the state dict holds NaN or infinite values \(layer2.0.bn1.running_var, "
                                        r"fc.weight\): weights of a diverged run or a damaged file"):
        load_weights(target, sd)
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match=rf"^{tmp_path / 'w.safetensors'} holds NaN or infinite values"):
        load_weights(target, tmp_path / "w.safetensors")
    with pytest.raises(UserError, match=r"^the state dict holds NaN or infinite values \(layer2.0.bn1.running_var\)"):
        load_weights(create_model("resnet20", num_classes=5), sd, ignore_mismatched_head=True)  # fc skipped: not checked
    assert not torch.isnan(target.fc.weight).any()
    # float8 weights: torch has no isfinite for them, and the check itself raised NotImplementedError
    f8 = {k: (v.to(torch.float8_e4m3fn) if v.is_floating_point() else v) for k, v in sd.items()}
    with pytest.raises(UserError, match=r"^the state dict holds NaN or infinite values \(fc.weight\)"):  # (no inf in e4m3fn)
        load_weights(target, f8)
    load_weights(target, {k: (v.to(torch.float8_e4m3fn) if v.is_floating_point() else v)
                          for k, v in source.state_dict().items()})  # finite float8 weights: loaded (widened)
    assert torch.equal(target.conv1.weight, source.conv1.weight.to(torch.float8_e4m3fn).float())


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the point: a pickle torch must refuse
def test_refuses_files_that_need_arbitrary_unpickling(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    torch.save({"model": create_model("resnet20").state_dict(), "obj": _Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(UserError, match="refuses to run"):
        load_weights(create_model("resnet20"), tmp_path / "evil2.pt")
    with pytest.raises(UserError, match="is a plain Python pickle .pickle.dump., not a torch.save file"):
        load_weights(create_model("resnet20"), path)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_plain_pickle_is_named_as_such_and_torchs_legacy_format_still_loads(tmp_path, protocol):
    weights = create_model("resnet20").state_dict()
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"epoch": 3}, f, protocol=protocol)  # no code in it, and still not torch's format
    with pytest.raises(UserError, match="plain Python pickle"):
        load_weights(create_model("resnet20"), tmp_path / "plain.pkl")
    torch.save(weights, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    model = create_model("resnet20")
    if protocol > 2:  # torch's weights_only loader has no FRAME opcode: it cannot read these, and says why
        with pytest.raises(UserError, match=r"is in a form torch's safe loader cannot read \(Unsupported operand"):
            load_weights(model, tmp_path / "legacy.pt")
        return
    load_weights(model, tmp_path / "legacy.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_weights(create_model("resnet20"), tmp_path / "nope.pt")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a valid safetensors"):
        load_weights(create_model("resnet20"), bad)
    with pytest.raises(UserError, match="no tensors"):
        load_weights(create_model("resnet20"), {"epoch": 3})
    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="missing"):
        load_weights(create_model("resnet20"), tmp_path / "other.safetensors")


def test_a_string_model_or_a_run_directory_is_named_as_such(source, tmp_path):
    torch.save(source.state_dict(), tmp_path / "r20.pth")
    with pytest.raises(UserError, match=r"^load_weights\(model, source\): model must be an nn.Module .*, got str$"):
        load_weights("resnet20", tmp_path / "r20.pth")  # arguments swapped
    run = tmp_path / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": source.state_dict()}, run / "checkpoints" / "last.pt")
    with pytest.raises(UserError, match=f"^{run} is a folder, not a weights file; pass one of the checkpoints of this "
                                        f"run: {run / 'checkpoints' / 'last.pt'}$"):
        load_weights(create_model("resnet20"), run)
    model = _fresh()
    load_weights(model, run / "checkpoints" / "last.pt")  # the file it names loads
    assert _same(model, source)
