"""ResNet / PSPNet: key layout, dilation, forward/backward, pretrained loading."""
import pytest
import torch
from torch import nn

from cdcl2d.models import build_pspnet, build_resnet, load_pretrained, resnet18
from cdcl2d.models.resnet import ResNet

# torchvision.models.resnet18().state_dict() key names (torchvision cannot be
# installed beside this torch, so the list is written out).
TORCHVISION_R18_KEYS = ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked"]
for _layer, _blocks in zip(range(1, 5), (2, 2, 2, 2)):
    for _b in range(_blocks):
        _p = f"layer{_layer}.{_b}"
        for _conv in ("conv1", "conv2"):
            TORCHVISION_R18_KEYS.append(f"{_p}.{_conv}.weight")
            _bn = _conv.replace("conv", "bn")
            TORCHVISION_R18_KEYS += [f"{_p}.{_bn}.{s}" for s in
                                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        if _b == 0 and _layer > 1:
            TORCHVISION_R18_KEYS.append(f"{_p}.downsample.0.weight")
            TORCHVISION_R18_KEYS += [f"{_p}.downsample.1.{s}" for s in
                                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
TORCHVISION_R18_KEYS += ["fc.weight", "fc.bias"]


def test_resnet18_keys_match_torchvision():
    keys = list(resnet18().state_dict().keys())
    assert sorted(keys) == sorted(TORCHVISION_R18_KEYS)
    assert len(keys) == 122  # what torchvision's resnet18 has


def test_resnet50_key_layout():
    keys = set(build_resnet("resnet50").state_dict())
    for k in ("layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
              "layer4.2.bn3.bias", "fc.weight"):
        assert k in keys
    assert len(keys) == 320  # torchvision resnet50 state dict size


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet101"])
def test_dilated_output_stride_8(name):
    torch.manual_seed(0)
    m = build_resnet(name, replace_stride_with_dilation=(False, True, True)).eval()
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, 32, 32))
    assert [f.shape[-1] for f in feats] == [8, 4, 4, 4]
    assert feats[-1].shape[1] == m.channels[-1]
    # dilation lives in the convolutions of stages 3 and 4
    assert m.layer4[1].conv2.dilation == (4, 4)
    assert m.layer3[0].downsample[0].stride == (1, 1)


def test_resnet18_backward_all_params_get_grad():
    torch.manual_seed(0)
    m = build_resnet("resnet18", replace_stride_with_dilation=(False, True, True))
    m.fc = nn.Identity()
    out = m.forward_features(torch.randn(2, 3, 32, 32))[-1]
    out.mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_basicblock_dilation_keeps_size():
    m = build_resnet("resnet18", replace_stride_with_dilation=(True, True, True)).eval()
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, 32, 32))
    assert feats[-1].shape[-2:] == (8, 8)


def test_load_pretrained_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    dst = load_pretrained(resnet18(), str(path))
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):  # the ImageNet classifier is never loaded
            assert torch.equal(v, dst.state_dict()[k]), k


def test_load_pretrained_ignores_fc(tmp_path):
    state = {k: v for k, v in resnet18().state_dict().items() if not k.startswith("fc.")}
    state["fc.weight"] = torch.zeros(10, 512)  # another class count: ignored
    path = tmp_path / "w.pth"
    torch.save(state, path)
    load_pretrained(resnet18(), str(path))


def test_load_pretrained_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(resnet18(), str(path))


def test_load_pretrained_key_mismatch(tmp_path):
    state = resnet18().state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing 1: \['layer1.0.conv1.weight'\].*unexpected 1: \['extra.weight'\]"):
        load_pretrained(resnet18(), str(path))


def test_load_pretrained_wrong_architecture(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(build_resnet("resnet50").state_dict(), path)
    with pytest.raises(ValueError, match="r50.pth"):
        load_pretrained(resnet18(), str(path))


def test_pspnet_train_and_eval_outputs():
    torch.manual_seed(0)
    m = build_pspnet(5, channels=32, aux_channels=16)
    x = torch.randn(2, 3, 40, 32)
    out = m(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == (2, 5, 40, 32) and out["aux"].shape == (2, 5, 40, 32)
    (out["out"].mean() + out["aux"].mean()).backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    with torch.no_grad():
        out = m(x)
    assert set(out) == {"out"} and out["out"].shape == (2, 5, 40, 32)
    assert m.heads == ["cls", "aux"]
    assert isinstance(m.get_submodule("cls"), nn.Conv2d) and isinstance(m.get_submodule("aux"), nn.Conv2d)


def test_pspnet_pretrained_backbone(tmp_path):
    path = tmp_path / "r18.pth"
    src = resnet18()
    torch.save(src.state_dict(), path)
    m = build_pspnet(3, pretrained=str(path))
    assert torch.equal(m.backbone.layer2[0].conv1.weight, src.layer2[0].conv1.weight)


def test_pspnet_norm_layer_argument():
    calls = []

    def norm(c):
        calls.append(c)
        return nn.GroupNorm(1, c)

    m = build_pspnet(3, norm_layer=norm)
    assert calls and not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())


def test_pspnet_under_dataset_aware_bn_fused_route():
    from common.dataset_specific import convert_dataset_specific, convert_heads, route

    torch.manual_seed(0)
    m = build_pspnet(4, channels=32, aux_channels=16)
    convert_dataset_specific(m, ["a", "b"])
    convert_heads(m, {"a": 4, "b": 3})
    with route(m, {"a": 2, "b": 2}):
        out = m(torch.randn(4, 3, 24, 24))
    assert out["out"]["a"].shape == (2, 4, 24, 24) and out["out"]["b"].shape == (2, 3, 24, 24)
    assert out["aux"]["b"].shape == (2, 3, 24, 24)


def test_pspnet_bad_args():
    with pytest.raises(ValueError, match="output_stride"):
        build_pspnet(3, output_stride=4)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_pspnet(3, backbone="vgg16")
    assert isinstance(build_resnet("resnet18"), ResNet)


def test_pspnet_exports_to_onnx_when_the_features_are_not_a_multiple_of_the_bins(tmp_path, monkeypatch):
    """A 40x40 input gives 5x5 features at output stride 8: bins 2, 3 and 6 do
    not divide 5, which ONNX's exporter refuses for adaptive pooling."""
    import onnxruntime as ort

    from cdcl2d.models.pspnet import AdaptiveAvgPool, PSPNet

    x = torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(0))
    with monkeypatch.context() as m:
        m.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        for n in (1, 2, 3, 6):  # the export form equals torch's adaptive pooling
            exported = AdaptiveAvgPool(n)(x)
            assert torch.allclose(exported, torch.nn.functional.adaptive_avg_pool2d(x, n), atol=1e-6)
    torch.manual_seed(0)
    model = PSPNet(5, channels=16, aux_channels=8).eval()
    inp = torch.randn(1, 3, 40, 40)
    path = str(tmp_path / "psp.onnx")
    with torch.no_grad():
        ref = model(inp)["out"]
        torch.onnx.export(_Out(model), inp, path, input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": inp.numpy()})[0]
    assert abs(out - ref.numpy()).max() < 1e-4


class _Out(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]
