"""The survey's other families: the masked autoencoder and colourisation (generative), SwAV (cluster
discrimination) and DINO (self-distillation), and the multi-crop views SwAV and DINO take: the method contract,
what each method does to its inputs and state, that they learn, and that they train, resume, and index through the
real trainer."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from retrieval.errors import LookalikeError
from training.augment import PIPELINES, AugmentConfig, TwoViewTransform, views_for
from training.checkpoint import load_state
from training.data import ViewBatcher, collate_views
from training.losses import sinkhorn
from training.methods import METHODS, SSLMethod, build_method
from training.methods.colour import chroma
from training.methods.mae import random_mask
from training.settings import TrainConfig
from training.trainer import train

from .conftest import COLOURS, SHAPES, check_method_contract, draw, tiny_backbone

FAMILIES = ("mae", "colour", "swav", "dino")
# small heads so each forward takes milliseconds
SMALL = {
    "mae": dict(decoder_width=32, out_size=16),
    "colour": dict(decoder_width=32, out_size=8, bins=4),
    "swav": dict(hidden_dim=32, out_dim=16, prototypes=16, queue_length=24),
    "dino": dict(hidden_dim=32, bottleneck_dim=16, out_dim=64),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)



def make(name: str, **overrides) -> SSLMethod:
    torch.manual_seed(0)
    return build_method(name, tiny_backbone(), 16, **{**SMALL[name], **overrides})


def crops(name: str, b=6, size=32, local=2, seed=0) -> list[torch.Tensor]:
    """Two views of ``size`` px (values in the ImageNet normalisation's range), plus local crops for multi-crop."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]
    if METHODS[name].multi_crop:
        out += [torch.randn(b, 3, size // 2, size // 2, generator=g) for _ in range(local)]
    return out


# -- the method contract ---------------------------------------------------------------------------------------
def test_registry_holds_the_families():
    for name in FAMILIES:
        cls = METHODS[name]
        assert cls.name == name and issubclass(cls, SSLMethod) and cls.views in PIPELINES
        with pytest.raises(LookalikeError, match="valid"):
            build_method(name, tiny_backbone(), 16, no_such_setting=1)
    assert [m for m in METHODS if METHODS[m].multi_crop] == ["byol", "swav", "dino"]
    assert METHODS["swav"].default_local_crops > 0 and METHODS["dino"].default_local_crops > 0
    assert METHODS["simclr"].default_local_crops == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_backward_param_groups_and_state(name):
    check_method_contract(make(name), crops(name), make(name))


def shapes(n=8, size=32) -> torch.Tensor:
    """n generated shape images, normalised to about [-1, 1]: (n, 3, size, size)."""
    rng = np.random.default_rng(0)
    imgs = [np.array(draw(SHAPES[i % 4], COLOURS[(i // 4) % 4], size, rng)) for i in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@pytest.mark.parametrize("name", FAMILIES)
def test_the_objective_is_learned(name):
    """Twenty-five AdamW steps on noisy views of eight generated shapes (local crops: their centres, shrunk): the
    loss falls well below where it started. DINO's teacher and centre are held still here (tau = 1, centre
    momentum 1: the student learns a fixed target; on one fixed batch of eight images the moving target's loss
    rises and falls as the two chase each other): their update rules are checked by hand below."""
    m = make(name, **({"tau0": 1.0, "center_momentum": 1.0} if name == "dino" else {}))
    opt = torch.optim.AdamW(m.param_groups(1e-4), lr=3e-3)
    x = shapes()
    base = [x, x.flip(3)]
    if m.multi_crop:
        centre = torch.nn.functional.interpolate(x[:, :, 8:24, 8:24], size=(12, 12), mode="area")
        base += [centre, centre.flip(3)]
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(25):
        views = [v + 0.1 * torch.randn(v.shape, generator=g) for v in base]
        loss = m(*views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(step / 25)
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), (name, losses)


# -- masked autoencoder ----------------------------------------------------------------------------------------
def test_mae_hides_exactly_the_masked_patches():
    mask = random_mask(5, 4, 0.75, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (5, 4, 4) and mask.sum(dim=(1, 2)).tolist() == [12.0] * 5
    m = make("mae", grid=4, out_size=16)
    x = torch.randn(1, 3, 32, 32) + 3.0  # no zero anywhere
    corrupted = m.corrupt(x, mask[:1])
    hidden = mask[0].repeat_interleave(8, 0).repeat_interleave(8, 1).bool()  # (32, 32): 8 px per patch
    assert (corrupted[0][:, hidden] == 0).all() and torch.equal(corrupted[0][:, ~hidden], x[0][:, ~hidden])
    assert m.target(x).shape == (1, 3, 16, 16)
    torch.testing.assert_close(m.target(x)[0, :, 0, 0], x[0, :, :2, :2].mean(dim=(1, 2)))  # area average


# -- colourisation ---------------------------------------------------------------------------------------------
def test_colour_sees_grey_and_targets_the_colours():
    m = make("colour")
    g = torch.Generator().manual_seed(0)
    x = m.normalised(torch.rand(2, 3, 16, 16, generator=g))
    grey = m.pixels(m.grey(x))
    assert chroma(grey).abs().max() < 1e-4  # nothing of the colour reaches the encoder
    red = m.normalised(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16))
    # red: Y = 0.299 -> Cb = 0.564 (0 - 0.299) = -0.169 (bin 1 of 4), Cr = 0.713 (1 - 0.299) = 0.5 (bin 3)
    assert m.targets(red).unique().tolist() == [1 * 4 + 3]


def test_colour_class_histogram_is_a_running_average_by_hand():
    m = make("colour", freq_momentum=0.5)
    red = m.normalised(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 16, 16))
    m(red, red)
    expected = torch.full((16,), 0.5 / 16)
    expected[7] += 0.5  # every cell of the batch is class 7
    torch.testing.assert_close(m.class_freq, expected)
    m.eval()
    m(red, red)  # evaluation leaves the histogram alone
    torch.testing.assert_close(m.class_freq, expected)


# -- SwAV ------------------------------------------------------------------------------------------------------
def test_swav_codes_queue_and_prototypes():
    m = make("swav")
    views = crops("swav", b=8)
    z = m.embed(tuple(views))
    assert len(z) == 4 and all(torch.allclose(v.norm(dim=1), torch.ones(8)) for v in z)
    s = m.prototypes(z[0]).detach()
    torch.testing.assert_close(m.codes(z[0], s, 0), sinkhorn(s, m.eps, m.iters))  # queue not full yet
    m(*views)
    assert int(m.queue_filled) == 8 and torch.count_nonzero(m.queue[:, 8:]) == 0
    m(*views)
    m(*views)
    assert int(m.queue_filled) == 24  # full: the next codes see the queue too
    torch.testing.assert_close(m.queue[0, :8], m.embed(tuple(views))[0].detach())  # newest first
    with torch.no_grad():
        m.prototypes.weight.mul_(3.0)
    m.after_step(0.5)
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(16))


# -- DINO ------------------------------------------------------------------------------------------------------
def test_dino_center_and_teacher_updates_by_hand():
    m = make("dino", center_momentum=0.8, tau0=0.5)
    views = crops("dino")
    with torch.no_grad():
        teacher_out = m.teacher(torch.cat(views[:2]))
    m(*views).backward()
    torch.testing.assert_close(m.center, 0.2 * teacher_out.mean(dim=0, keepdim=True))  # from c = 0
    assert all(p.grad is None for p in m.teacher.parameters())  # the teacher learns by EMA only
    before = [p.clone() for p in m.teacher.parameters()]
    with torch.no_grad():
        for p in m.head.parameters():
            p.add_(1.0)
    m.after_step(0.0)  # tau = tau0 = 0.5 at progress 0
    online = list(nn.Sequential(m.backbone, m.head).parameters())
    for t0, t, o in zip(before, m.teacher.parameters(), online):
        torch.testing.assert_close(t, 0.5 * t0 + 0.5 * o)
    assert m.tau == 0.5
    m.after_step(1.0)
    assert m.tau == 1.0


def test_dino_student_sees_every_crop_and_the_teacher_only_the_global_ones():
    m = make("dino")
    seen = []
    m.teacher.register_forward_hook(lambda mod, inp, out: seen.append(("teacher", tuple(inp[0].shape))))
    m.backbone.register_forward_hook(lambda mod, inp, out: seen.append(("student", tuple(inp[0].shape))))
    m(*crops("dino", b=3, local=3))
    assert seen == [("student", (6, 3, 32, 32)), ("student", (9, 3, 16, 16)), ("teacher", (6, 3, 32, 32))]


def test_byol_takes_local_crops_and_keeps_its_two_view_loss():
    from training.losses import byol_loss

    torch.manual_seed(0)
    m = build_method("byol", tiny_backbone(), 16, proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)
    x1, x2, l1 = crops("swav", b=4, local=1)  # two views and one local crop
    online = lambda x: m.predictor(m.projector(m.backbone(x)))  # noqa: E731
    with torch.no_grad():
        p = [online(x1), online(x2), online(l1)]
        z = [m.target(x1), m.target(x2)]
        two_views = m(x1, x2)
        multi = m(x1, x2, l1)
    torch.testing.assert_close(two_views, byol_loss(p[0], z[1]) + byol_loss(p[1], z[0]))  # the paper's sum
    pairs = byol_loss(p[1], z[0]) + byol_loss(p[2], z[0]) + byol_loss(p[0], z[1]) + byol_loss(p[2], z[1])
    torch.testing.assert_close(multi, 2 * pairs / 4)


# -- multi-crop views ------------------------------------------------------------------------------------------
def test_local_crops_through_transform_collate_and_pipeline():
    cfg = AugmentConfig(image_size=32, local_crops=3, local_size=16)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    v1, v2, local = TwoViewTransform(cfg)(img)
    assert v1.shape == v2.shape == (3, 32, 32) and local.shape == (3, 3, 16, 16) and local.dtype == torch.uint8
    batch = [(v1, v2, local, []), (v2, v1, local, [("bad.png", "truncated")])]
    collated = collate_views(batch)
    assert [tuple(t.shape) for t in collated[:3]] == [(2, 3, 32, 32), (2, 3, 32, 32), (2, 3, 3, 16, 16)]
    out = ViewBatcher(0, views_for("dino", cfg))(batch)
    assert len(out) == 2 + 3 + 2 and out[-2] == [("bad.png", "truncated")]
    assert [tuple(t.shape) for t in out[:5]] == [(2, 3, 32, 32)] * 2 + [(2, 3, 16, 16)] * 3
    # the local crops draw after the two views: the same seed gives the views the same augmentation
    two = ViewBatcher(0, views_for("dino", AugmentConfig(image_size=32)))([b[:2] + b[3:] for b in batch])
    assert torch.equal(two[0], out[0]) and torch.equal(two[1], out[1])


def test_local_crop_settings(image_dir):
    cfg = TrainConfig(data_dir=str(image_dir), method="swav", epochs=1, image_size=64)
    assert cfg.augment_config().local_crops == METHODS["swav"].default_local_crops
    assert cfg.augment_config().local_side == round(64 * 96 / 224)
    assert TrainConfig(data_dir=str(image_dir), method="simclr", epochs=1).augment_config().local_crops == 0
    with pytest.raises(LookalikeError, match="--local-crops: simclr takes two views only.*byol, swav, dino"):
        TrainConfig(data_dir=str(image_dir), method="simclr", epochs=1, local_crops=2).validate()
    with pytest.raises(LookalikeError, match="local_size"):
        TrainConfig(data_dir=str(image_dir), method="dino", epochs=1, image_size=32, local_size=48).validate()
    with pytest.raises(LookalikeError, match="unknown augmentation"):
        TrainConfig(data_dir=str(image_dir), method="dino", epochs=1, augment={"local_crops": 2}).validate()


# -- through the real trainer ----------------------------------------------------------------------------------
def stop_after(k: int):
    stop = threading.Event()
    return stop, (lambda record: stop.set() if record.get("step") == k and "loss" in record else None)


RESUME = {"mae": {}, "colour": {}, "swav": {"local_crops": 2}, "dino": {"local_crops": 2, "local_size": 12}}


@pytest.mark.parametrize("name", FAMILIES)
def test_resumed_run_equals_uninterrupted_run(tiny_config, tmp_path, name):
    """Masks, the colour histogram, the SwAV queue (full after 2 steps) and prototypes, the DINO centre and
    teacher, and the local crops all continue exactly: stopping after step 2 and resuming ends with the weights
    and the state of an uninterrupted run (1 epoch of 4 steps)."""
    settings = dict(method=name, hparams=SMALL[name] | ({"queue_length": 32} if name == "swav" else {}),
                    **RESUME[name])
    full = train(tiny_config(**settings, out=str(tmp_path / "full")), progress=False)
    stop, on_log = stop_after(2)
    part = train(tiny_config(**settings, out=str(tmp_path / "part")), progress=False, stop_event=stop, on_log=on_log)
    assert load_state(part)["step"] == 2
    train(tiny_config(**settings, out=str(part), resume=True), progress=False)
    meta = json.loads((part / "encoder.json").read_text())
    assert meta["method"] == name and meta["finished"] is True and meta["step"] == 4
    a, b = load_file(str(full / "encoder.safetensors")), load_file(str(part / "encoder.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs")
    sa, sb = load_state(full)["method"], load_state(part)["method"]
    for k in ("queue", "queue_filled", "center", "class_freq"):
        if k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)
    if name == "swav":
        assert int(sa["queue_filled"]) == 32


def test_a_run_indexes_and_searches(tiny_config, tmp_path, image_dir):
    """A DINO run with local crops loads as an encoder: a folder is indexed with it and an image finds itself."""
    from retrieval.workspace import Workspace

    run = train(tiny_config(method="dino", hparams=SMALL["dino"], local_crops=2), progress=False)
    ws = Workspace(tmp_path / "indexes")
    ws.build(image_dir, str(run), "dino", progress=False)
    query = sorted(image_dir.rglob("*.png"))[5]
    hits = ws.search("dino", Image.open(query), k=3)
    assert hits and hits[0].path.endswith(query.name)


def test_dino_and_colour_fine_tune_from_an_init(tiny_config, tmp_path, monkeypatch):
    """From earlier weights (as from the pretrained Lite0): DINO's teacher starts as the init and keeps its frozen
    BatchNorm statistics, and colourisation undoes the init's own normalisation to find the grey image."""
    from tests.retrieval.test_encoder_safety import write_run
    from training.methods.colour import Colourisation

    norm = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}
    init, _ = write_run(tmp_path / "earlier", interpolation="bicubic", **norm)
    start = load_file(str(init / "encoder.safetensors"))
    run = train(tiny_config(method="dino", hparams=SMALL["dino"], init=str(init), batch_size=16, local_crops=2,
                            keep_best=False, out=str(tmp_path / "dino")), progress=False)  # the trained weights
    state = load_state(run)["method"]
    teacher = {k[len("teacher.0."):]: v for k, v in state.items() if k.startswith("teacher.0.")}
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(teacher[k], start[k]) for k in stats)  # frozen in the teacher too
    assert not torch.equal(teacher["conv1.0.weight"], start["conv1.0.weight"])  # moved by the EMA ...
    student = load_file(str(run / "encoder.safetensors"))
    drift = lambda w: (w - start["conv1.0.weight"]).norm()  # noqa: E731
    assert drift(teacher["conv1.0.weight"]) < drift(student["conv1.0.weight"])  # ... behind the student

    seen = []
    forward = Colourisation.forward
    monkeypatch.setattr(Colourisation, "forward",
                        lambda self, *views: seen.append(self.pixel_mean.flatten().tolist()) or forward(self, *views))
    train(tiny_config(method="colour", hparams=SMALL["colour"], init=str(init), batch_size=16,
                      out=str(tmp_path / "colour")), progress=False)
    assert seen and seen[0] == pytest.approx(norm["mean"])
