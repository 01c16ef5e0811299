"""``TrainConfig`` (declared with the settings it is made of, in :mod:`training.settings`) and what a resumed
run keeps of it.

``TrainConfig`` has the data folder, one field per setting (same name, type and default), the structured
settings ``hparams`` (for the method) and ``augment`` (overrides of :class:`training.augment.AugmentConfig`), and
``explicit``: the names of the settings the user gave (the flags typed, the form fields filled, the keywords a
config built in code was given), saved with the run, so that ``--resume`` compares only those with the run's own.
"""

from __future__ import annotations

from .settings import SETTINGS, TrainConfig

__all__ = ["TrainConfig", "FIXED_ON_RESUME"]

# What defines what is being trained (the settings marked ``fixed``, and the method's and augmentation's own
# settings): a resumed run keeps the ones it was started with.
FIXED_ON_RESUME = (*(s.name for s in SETTINGS if s.fixed), "hparams", "augment")
