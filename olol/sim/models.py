"""The simulator's installed models and uploaded blobs (in memory)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from olol.sim.spec import ModelSpec, digest_of


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Installed:
    spec: ModelSpec
    digest: str
    modified_at: float  # wall-clock seconds
    layers: tuple[Layer, ...]


def layers_for(spec: ModelSpec, source: str | None = None) -> tuple[Layer, ...]:
    """The layers a model of ``spec`` has on disk (weights, template, params, license)."""
    origin = source or spec.name
    weights = Layer(digest_of("weights", origin, spec.size), spec.size,
                    "application/vnd.ollama.image.model")
    template = Layer(digest_of("template", origin, spec.template), len(spec.template),
                     "application/vnd.ollama.image.template")
    params = Layer(digest_of("params", origin), 96, "application/vnd.ollama.image.params")
    license_ = Layer(digest_of("license", spec.family), 1024, "application/vnd.ollama.image.license")
    return (weights, template, params, license_)


def format_size_total(layers: tuple[Layer, ...]) -> int:
    return sum(layer.size for layer in layers)


class ModelStore:
    """Installed models keyed by lower-cased full name; thread-safe.

    :param wall_clock: wall-clock time source for ``modified_at``.
    :param max_blobs: bound on the number of uploaded blobs remembered.
    """

    def __init__(self, specs: list[ModelSpec], wall_clock: Callable[[], float],
                 max_blobs: int = 10_000):
        self._lock = threading.Lock()
        self._wall = wall_clock
        self._models: dict[str, Installed] = {}
        self._blobs: dict[str, int] = {}
        self._max_blobs = max_blobs
        for spec in specs:
            self.install(spec)

    def install(self, spec: ModelSpec, layers: tuple[Layer, ...] | None = None,
                digest: str | None = None) -> Installed:
        layers = layers or layers_for(spec)
        digest = digest or digest_of("manifest", *(layer.digest for layer in layers))
        entry = Installed(spec, digest, self._wall(), layers)
        with self._lock:
            self._models[spec.name.lower()] = entry
        return entry

    def get(self, name: str) -> Installed | None:
        with self._lock:
            return self._models.get(name.lower())

    def remove(self, name: str) -> bool:
        with self._lock:
            return self._models.pop(name.lower(), None) is not None

    def all(self) -> list[Installed]:
        with self._lock:
            entries = list(self._models.values())
        entries.sort(key=lambda e: (-e.modified_at, e.spec.name))
        return entries

    def has_layer(self, digest: str) -> bool:
        with self._lock:
            return any(layer.digest == digest for e in self._models.values() for layer in e.layers)

    def used_bytes(self) -> int:
        """Bytes on the simulated disk: every distinct layer of every installed model."""
        with self._lock:
            sizes = {la.digest: la.size for e in self._models.values() for la in e.layers}
        return sum(sizes.values())

    # -- blobs -----------------------------------------------------------------------

    def add_blob(self, digest: str, size: int) -> bool:
        """Remember an uploaded blob; returns False if it was already there."""
        with self._lock:
            if digest in self._blobs:
                return False
            if len(self._blobs) >= self._max_blobs:
                self._blobs.pop(next(iter(self._blobs)))
            self._blobs[digest] = size
            return True

    def blob_size(self, digest: str) -> int | None:
        with self._lock:
            if digest in self._blobs:
                return self._blobs[digest]
        return next((layer.size for e in self.all() for layer in e.layers if layer.digest == digest),
                    None)
