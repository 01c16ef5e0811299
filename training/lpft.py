"""LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features"): a fine-tune first trains only the
method's new heads (projector, predictor, …) on a frozen backbone, then the whole network.

A method's heads start random; their first gradients, passed into a pretrained backbone, push its features around
before the heads mean anything. Freezing the backbone for the first ``head_warmup`` share of the run
(:data:`training.settings.HEAD_WARMUP`) lets the heads align with the pretrained features first. Frozen means
``requires_grad=False`` on the backbone's trainable parameters: no gradient reaches them, so the optimiser leaves
them untouched (no update, no weight decay) and the step costs no backward pass through the backbone. The phase is
a function of the run's progress, so a resumed run is frozen or not exactly as the uninterrupted run would be.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["HeadWarmup", "for_run"]


class HeadWarmup:
    """Freezes ``backbone`` while ``progress < until``; call it with the run's progress before every step."""

    def __init__(self, backbone: nn.Module, until: float, say: Callable[[str], None] = lambda msg: None):
        self.backbone, self.until, self.say = backbone, float(until), say
        self._trainable = [p for p in backbone.parameters() if p.requires_grad]
        self.frozen = False

    def __call__(self, progress: float) -> None:
        want = progress < self.until
        if want == self.frozen:
            return
        for p in self._trainable:
            p.requires_grad_(not want)
        self.frozen = want
        if want:
            self.say(f"LP-FT: training the heads on a frozen backbone for the first {self.until:.0%} of the run")
        else:
            self.say("LP-FT: the backbone trains too from here")


def for_run(run) -> HeadWarmup | None:
    """The head warm-up of a run (:class:`training.setup.Run`): only for a fine-tune (``--init``) with
    ``head_warmup > 0`` whose method has heads of its own, in one process (the data-parallel reducer is built over a
    fixed set of trainable parameters, so several processes skip it)."""
    if run.cfg.init is None or not run.cfg.head_warmup:
        return None
    own = {id(p) for p in run.method.backbone.parameters()}
    if not any(p.requires_grad and id(p) not in own for p in run.method.parameters()):
        return None  # nothing but the backbone learns (e.g. a distilled student of the teacher's width)
    if run.ddp.world > 1:
        run.say("LP-FT head warm-up is skipped with several processes (their gradient reducer needs every "
                "parameter)")
        return None
    return HeadWarmup(run.method.backbone, run.cfg.head_warmup, run.say)
