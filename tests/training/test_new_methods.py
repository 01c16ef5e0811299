"""RotNet, Jigsaw, CPC and the triplet / margin losses: the method contract, their pretext tasks, that they learn,
and that they train, stop and resume through the real trainer like the other methods."""

from __future__ import annotations

import itertools
import json
import math
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from retrieval.errors import LookalikeError
from training.augment import PIPELINES
from training.checkpoint import load_state
from training.losses import margin_contrastive_loss, triplet_loss
from training.methods import METHODS, SSLMethod, build_method
from training.methods.cpc import RowCausalContext
from training.methods.jigsaw import hamming_permutations, min_hamming_distance
from training.methods.patches import grid_patches, jitter_patches
from training.methods.rotnet import rotate_batch
from training.trainer import TrainingDivergedError, train

from .conftest import COLOURS, SHAPES, check_method_contract, draw, tiny_backbone

NEW = ("rotnet", "jigsaw", "cpc", "triplet", "margin")
# small heads so each forward takes milliseconds
SMALL = {
    "rotnet": dict(hidden_dim=32),
    "jigsaw": dict(num_permutations=8, tile_dim=16, hidden_dim=32),
    "cpc": dict(grid=4, dim=16, context_layers=2),
    "triplet": dict(out_dim=16),
    "margin": dict(),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only spins, and slows every test when the cores are busy."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)



def make(name: str, backbone: nn.Module | None = None, **overrides) -> SSLMethod:
    torch.manual_seed(0)
    return build_method(name, backbone or tiny_backbone(), 16, **{**SMALL[name], **overrides})


def views(b=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.randn(b, 3, size, size, generator=g)


# -- the method contract ---------------------------------------------------------------------------------------
def test_registry_holds_the_new_methods():
    for name in NEW:
        cls = METHODS[name]
        assert cls.name == name and issubclass(cls, SSLMethod) and cls.views in PIPELINES
        assert isinstance(cls.needs_sync_bn, bool) and cls.default_lr > 0
        with pytest.raises(LookalikeError, match="valid"):
            build_method(name, tiny_backbone(), 16, no_such_setting=1)
    assert METHODS["triplet"].default_hparams["mining"] == "semihard"
    assert METHODS["margin"].default_hparams["mining"] == "hardest"
    assert METHODS["rotnet"].default_hparams["all_rotations"] is False


@pytest.mark.parametrize("name", NEW)
def test_forward_backward_param_groups_and_state(name):
    check_method_contract(make(name), views(), make(name))


@pytest.mark.parametrize("name", NEW)
def test_a_pretrained_backbone_is_used_as_given(name):
    torch.manual_seed(1)
    bb = tiny_backbone()
    weights = {k: v.clone() for k, v in bb.state_dict().items()}
    m = make(name, backbone=bb)  # seeds the RNG before building: a re-initialisation would change the weights
    assert m.backbone is bb
    assert all(torch.equal(bb.state_dict()[k], v) for k, v in weights.items())


# -- RotNet ----------------------------------------------------------------------------------------------------
def test_rotnet_feeds_all_four_rotations_with_their_labels():
    m = make("rotnet", all_rotations=True)
    x = views(b=3, size=8)[0]
    images, labels = m.rotated(x)
    assert images.shape == (12, 3, 8, 8) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for i in range(12):
        torch.testing.assert_close(images[i], torch.rot90(x[i % 3], int(labels[i]), dims=(1, 2)))
    one = make("rotnet")  # the default: one rotation per view
    images, labels = one.rotated(x)
    assert images.shape == x.shape and set(labels.tolist()) <= {0, 1, 2, 3}
    for i in range(3):
        torch.testing.assert_close(images[i], torch.rot90(x[i], int(labels[i]), dims=(1, 2)))
    r = torch.tensor([1, 3, 2])
    assert torch.equal(rotate_batch(x, r)[1], x[1].rot90(3, dims=(1, 2)))
    with pytest.raises(LookalikeError, match="square"):
        rotate_batch(torch.zeros(1, 3, 8, 6), torch.tensor([1]))


# -- Jigsaw ----------------------------------------------------------------------------------------------------
def test_jigsaw_permutation_set_is_fixed_and_far_apart():
    perms = hamming_permutations(100)
    assert perms.shape == (100, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist()) and len({tuple(p) for p in perms.tolist()}) == 100
    assert min_hamming_distance(perms) == 6  # as stated in training/methods/jigsaw.py
    assert np.array_equal(perms, hamming_permutations.__wrapped__(100))  # deterministic, not only cached
    # the greedy rule: each permutation maximises the minimum distance to the ones chosen before it
    every = np.array(list(itertools.permutations(range(9))))  # (9!, 9)
    for k in (1, 2, 3):
        to_chosen = np.stack([(every != p).sum(-1) for p in perms[:k]]).min(0)  # (9!,) distance to the first k
        assert (perms[k] != perms[:k]).sum(-1).min() == to_chosen.max()
    assert METHODS["jigsaw"].default_hparams["num_permutations"] == 100
    with pytest.raises(LookalikeError, match="num_permutations"):
        hamming_permutations(1)


def test_grid_patches_cut_each_tile_inside_its_cell_with_a_random_gap():
    size, cell, tile = 30, 10, 8
    r, c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x = torch.stack([r, c, r * 0]).float().expand(5, 3, size, size)  # pixel value = its coordinates
    tiles = grid_patches(x, 3, tile, stride=cell, max_offset=cell - tile)  # (5, 9, 3, 8, 8)
    assert tiles.shape == (5, 9, 3, tile, tile)
    top, left = tiles[:, :, 0, 0, 0], tiles[:, :, 1, 0, 0]  # (5, 9) origin of every tile
    for p in range(9):
        i, j = divmod(p, 3)
        assert ((top[:, p] >= i * cell) & (top[:, p] <= i * cell + cell - tile)).all()
        assert ((left[:, p] >= j * cell) & (left[:, p] <= j * cell + cell - tile)).all()
    for b in range(5):  # every tile is a contiguous slice of its image
        for p in range(9):
            t0, l0 = int(top[b, p]), int(left[b, p])
            assert torch.equal(tiles[b, p], x[b, :, t0:t0 + tile, l0:l0 + tile])
    assert len({tuple(o) for o in torch.stack([top, left], -1).view(-1, 2).tolist()}) > 9  # offsets vary
    with pytest.raises(ValueError, match="needs"):
        grid_patches(x, 3, 12, stride=10)


def test_patch_jitter_breaks_colour_continuity_and_standardises():
    base = torch.rand(1, 3, 6, 6).expand(2, 3, 6, 6)  # the same patch twice
    out = jitter_patches(base, strength=0.4, gray_p=0.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # each patch jittered on its own
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3), unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    grey = jitter_patches(base, gray_p=1.0)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_jigsaw_shuffles_the_tiles_by_the_drawn_permutation():
    m = make("jigsaw")
    seen = []
    m.backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    tiles = torch.arange(2 * 9, dtype=torch.float32).view(2, 9, 1, 1, 1).expand(2, 9, 3, 4, 4).contiguous()
    labels = torch.tensor([3, 5])
    logits = m.puzzle_logits(tiles, labels)
    assert logits.shape == (2, 8)
    fed = seen[0][:, 0, 0, 0].view(2, 9)  # which tile stands at each position
    for b in range(2):
        assert fed[b].tolist() == (tiles[b, m.permutations[labels[b]], 0, 0, 0]).tolist()
    assert m(*views(b=3, size=24)).item() > 0 and 0.0 <= float(m.last_accuracy) <= 1.0


# -- CPC -------------------------------------------------------------------------------------------------------
def test_cpc_context_sees_only_the_rows_above():
    ctx = RowCausalContext(dim=4, layers=3)
    z = torch.randn(2, 4, 5, 5, requires_grad=True)
    for i in range(5):
        (g,) = torch.autograd.grad(ctx(z)[:, :, i].sum(), z)
        assert g[:, :, i + 1:].abs().sum() == 0  # nothing below row i
        assert g[:, :, : i + 1].abs().sum() > 0
    m = make("cpc")
    z = m.embed_patches(views(b=2, size=32)[0])
    assert z.shape == (2, 4, 4, 16) and m.predictions(z).shape == (2, 2, 4, 4, 16)  # K = 2 steps by default
    with pytest.raises(LookalikeError, match="steps"):
        make("cpc", steps=4)


# -- triplet / margin ------------------------------------------------------------------------------------------
def test_pairwise_heads_and_losses_follow_the_papers():
    trip, marg = make("triplet", out_dim=128), make("margin")
    assert isinstance(trip.projector.layers[0], nn.Linear) and trip.projector.out_dim == 128  # FaceNet embedding
    assert isinstance(marg.projector, nn.Identity)  # DrLIM: the loss on the network's own output
    x1, x2 = views()
    with torch.no_grad():
        h1, h2 = marg.backbone(x1), marg.backbone(x2)
        torch.testing.assert_close(marg(x1, x2), margin_contrastive_loss(h1, h2, 1.0, "hardest"))
        z1, z2 = trip.projector(trip.backbone(x1)), trip.projector(trip.backbone(x2))
        torch.testing.assert_close(trip(x1, x2), triplet_loss(z1, z2, 0.2, "semihard"))
    with pytest.raises(LookalikeError, match="mining"):
        make("triplet", mining="random")
    with pytest.raises(LookalikeError, match="margin"):
        make("margin", margin=0)


# -- learning --------------------------------------------------------------------------------------------------
def shapes_batch(n=8, size=32):
    """n generated shape images (normalised float) and a noisy, mirrored second view of each."""
    rng = np.random.default_rng(0)
    imgs = [np.array(draw(SHAPES[i % 4], COLOURS[(i // 4) % 4], size, rng)) for i in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# (image size, hparams): RotNet is cheap at 16 px; the semi-hard triplets of these easy pairs are mostly inactive
# already, so the triplet test mines the hardest ones at a wider margin
LEARN = {"rotnet": (16, {}), "jigsaw": (32, {}), "cpc": (32, {}), "margin": (32, {}),
         "triplet": (32, dict(mining="hardest", margin=0.5))}


@pytest.mark.parametrize("name", NEW)
def test_the_pretext_task_is_learned(name):
    size, hparams = LEARN[name]
    x = shapes_batch(size=size)
    m = make(name, **hparams)
    opt = torch.optim.AdamW(m.param_groups(1e-4), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses, accs = [], []
    for _ in range(25):
        x1, x2 = x + 0.1 * torch.randn(x.shape, generator=g), x.flip(3) + 0.1 * torch.randn(x.shape, generator=g)
        loss = m(x1, x2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accs.append(float(getattr(m, "last_accuracy", 0.0)))
    if name in ("rotnet", "jigsaw"):  # the classification accuracy rises well above where it started
        assert np.mean(accs[-5:]) > np.mean(accs[:5]) + 0.15, (name, accs)
    elif name == "cpc":  # from above chance, log(number of candidate patches), to clearly below it
        chance = math.log(x.shape[0] * m.grid**2)
        assert np.mean(losses[:5]) > chance > np.mean(losses[-5:]) + 0.2, (chance, losses)
    else:
        assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), (name, losses)


# -- through the real trainer ----------------------------------------------------------------------------------
def stop_after(k: int):
    stop = threading.Event()
    return stop, (lambda record: stop.set() if record.get("step") == k and "loss" in record else None)


@pytest.mark.parametrize("name, hparams", [
    ("jigsaw", dict(num_permutations=8, tile_dim=16, hidden_dim=32)),   # permutation draws, tile offsets, jitter
    ("rotnet", dict(hidden_dim=32)),                                   # one rotation drawn per view
    ("cpc", dict(grid=3, dim=16, context_layers=1, steps=1)),          # per-patch jitter
])
def test_resumed_run_equals_uninterrupted_run(tiny_config, tmp_path, name, hparams):
    """The randomness drawn inside forward comes from the trainer's seeded, checkpointed RNG, so stopping after
    step 2 and resuming ends with exactly the weights of an uninterrupted run (1 epoch of 4 steps)."""
    full = train(tiny_config(method=name, hparams=hparams, out=str(tmp_path / "full")), progress=False)
    stop, on_log = stop_after(2)
    part = train(tiny_config(method=name, hparams=hparams, out=str(tmp_path / "part")), progress=False,
                 stop_event=stop, on_log=on_log)
    assert load_state(part)["step"] == 2
    train(tiny_config(method=name, hparams=hparams, out=str(part), resume=True), progress=False)
    meta = json.loads((part / "encoder.json").read_text())
    assert meta["method"] == name and meta["finished"] is True and meta["step"] == 4
    a, b = load_file(str(full / "encoder.safetensors")), load_file(str(part / "encoder.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs")


def test_a_diverging_new_method_stops_with_the_trainers_error(tiny_config, monkeypatch):
    from training.methods.jigsaw import Jigsaw

    monkeypatch.setattr(Jigsaw, "forward", lambda self, x1, x2: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDivergedError, match="no checkpoint"):
        train(tiny_config(method="jigsaw", hparams=SMALL["jigsaw"]), progress=False)
