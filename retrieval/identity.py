"""Encoder identity: which fields decide whether two encoders produce the same vectors. Torch-free, so opening an
index does not import a deep-learning stack."""

from __future__ import annotations

from .encoder_kinds import describe_network, kind_named
from .errors import EncoderMismatchError

# Backbone stems and poolings an encoder may have (retrieval.encoders builds them; training offers them).
STEMS = ("default", "small")
POOLS = ("avg", "grid", "gem")
# The identity fields that must agree between an index and the encoder used to query it.
IDENTITY_KEYS = ("kind", "backbone", "image_size", "dim", "stem", "weights", "pool", "interpolation", "scales")
# What an identity written before a key existed meant by it.
_DEFAULTS = {"pool": "avg", "interpolation": "bilinear", "scales": "1"}


def identity_matches(a: dict, b: dict) -> bool:
    """True when two encoder identities would produce the same vectors."""
    return all(a.get(k, _DEFAULTS.get(k)) == b.get(k, _DEFAULTS.get(k)) for k in IDENTITY_KEYS)


def describe_identity(identity: dict) -> str:
    """Short human form, e.g. ``simclr resnet10t @64px (3fa2c1d0)``, as the identity's kind writes it."""
    row = kind_named(identity.get("kind"))
    describe = row.describe if row is not None and row.describe is not None else describe_network
    return describe(identity)


def mismatch_error(index_name: str, built: dict, other: dict) -> EncoderMismatchError:
    """The one message for an index queried or changed with an encoder other than the one it was built with."""
    return EncoderMismatchError(
        f"index {index_name!r} was built with {describe_identity(built)} [{built.get('spec')}], not "
        f"{describe_identity(other)} [{other.get('spec')}]: search it with its own encoder, or rebuild the index "
        f"with the new one: 'lookalike index build DIR --encoder {other.get('spec')} --name {index_name} "
        f"--overwrite'")
