"""Which indexes a page opens on: a preference, not a rule (any index can still be picked). Gradio-free, so the
demo (:data:`app.demo.OPENING`) declares its own without importing the UI."""

from __future__ import annotations

from dataclasses import dataclass


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
