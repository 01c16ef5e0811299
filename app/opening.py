"""Which indexes a page opens on: a preference, not a rule (any index can still be picked). Gradio-free, so the
demo (:data:`app.demo.OPENING`) declares its own without importing the UI."""

from __future__ import annotations

from dataclasses import dataclass

# Encoder kinds (retrieval.encoders) from the most to the least likely to find what a person means by "alike":
# trained on the collection, pretrained, an untrained network, raw pixels.
KIND_ORDER = ("run", "timm", "random", "pixels")


def scorecard(manifest: dict) -> float | None:
    """The label-free score cached in an index manifest (``"scorecard"``: a number, or a dict with ``"score"``)."""
    card = manifest.get("scorecard")
    score = card.get("score") if isinstance(card, dict) else card
    return float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None


@dataclass(frozen=True)
class Opening:
    """Search opens on the first of ``search`` that exists (else the first index); Compare on those of ``compare``
    that exist, in that order (else all of them)."""

    search: tuple[str, ...] = ()
    compare: tuple[str, ...] = ()

    def search_index(self, names: list[str]) -> str | None:
        return next((n for n in self.search if n in names), names[0] if names else None)

    def compare_indexes(self, names: list[str]) -> list[str]:
        return [n for n in self.compare if n in names] or list(names)

    def explore_index(self, manifests: list[dict]) -> str | None:
        """The best index to map: the highest label-free score cached in the manifests (:func:`scorecard`); where
        none has one, the first of ``search`` that exists (a measured ranking such as the demo's); else by encoder
        kind (:data:`KIND_ORDER`), the most recently updated first."""
        scored = [(scorecard(m), m["name"]) for m in manifests if scorecard(m) is not None]
        if scored:
            return max(scored)[1]
        names = [m["name"] for m in manifests]
        preferred = next((n for n in self.search if n in names), None)
        if preferred is not None or not manifests:
            return preferred
        newest_first = sorted(sorted(manifests, key=lambda m: m["name"]), key=lambda m: str(m.get("updated", "")),
                              reverse=True)
        return min(newest_first, key=_kind_rank)["name"]  # the first of the best kind


def _kind_rank(manifest: dict) -> int:
    kind = manifest.get("encoder", {}).get("kind")
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
