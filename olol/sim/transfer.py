"""``/api/pull``, ``/api/push`` and ``/api/create``: progress streams like Ollama's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from olol.sim.httpserver import ApiError, Exchange, dumps
from olol.sim.models import Layer, layers_for
from olol.sim.scheduler import Aborted, Waiter
from olol.sim.spec import ModelSpec, SpecError, digest_of, normalize_name

if TYPE_CHECKING:
    from olol.sim.native import NativeApi

_TICK = 0.05  # seconds between progress records of one layer


class Progress:
    """Writes ProgressResponse records: streamed as NDJSON, or only the last one."""

    def __init__(self, api: NativeApi, ex: Exchange, stream: bool, error_status: int = 500):
        self.api, self.ex, self.stream = api, ex, stream
        self.error_status = error_status
        self.last: dict[str, Any] = {}
        self.waiter = Waiter(api.sim.stop_event, ex.gone)

    def send(self, record: dict[str, Any]) -> None:
        if self.stream:
            if not self.ex.started:
                self.ex.stream_fault = self.api.sim.faults.take_stream_fault()
                self.ex.start_stream("application/x-ndjson")
            self.ex.write_record(dumps(record) + b"\n")
        if self.waiter.aborted():
            raise Aborted()
        self.last = record

    def fail(self, message: str) -> None:
        if self.stream:
            self.send({"error": message})
            self.ex.end_stream()
        else:
            raise ApiError(self.error_status, message)

    def done(self) -> None:
        if self.stream:
            self.ex.end_stream()
        else:
            self.ex.send_json(200, self.last)

    def transfer(self, verb: str, layer: Layer, present: bool, speed: float,
                 announce: bool = False) -> None:
        """Progress of one layer at ``speed`` bytes/s (0 = instant)."""
        status = f"{verb} {layer.digest[7:19]}"
        base = {"status": status, "digest": layer.digest, "total": layer.size}
        if announce:
            self.send({"status": "starting upload", "digest": layer.digest, "total": layer.size})
        if present or speed <= 0 or layer.size == 0:
            self.send({**base, "completed": layer.size})
            return
        self.send(dict(base))  # completed omitted while 0, as Ollama does
        done = 0.0
        step = speed * _TICK
        while done < layer.size:
            self.waiter.sleep(_TICK)
            done = min(float(layer.size), done + step)
            self.send({**base, "completed": int(done)})


def _name(body: dict, required_msg: str = "model is required") -> str:
    name = body.get("model") or body.get("name") or ""
    if not isinstance(name, str) or not name:
        raise ApiError(400, required_msg)
    return name


def _disk_full(api: NativeApi, layers: tuple[Layer, ...]) -> str | None:
    """Ollama's message for a full disk when the missing layers exceed the disk, else None."""
    limit = api.sim.config.disk_bytes
    if limit is None:
        return None
    missing = [la for la in layers if not api.store.has_layer(la.digest)]
    if api.store.used_bytes() + sum(la.size for la in missing) <= limit:
        return None
    blob = missing[0].digest.replace(":", "-") if missing else "manifest"
    return f"write /root/.ollama/models/blobs/{blob}-partial: no space left on device"


def _run(progress: Progress, fn) -> None:
    try:
        fn()
    except Aborted:
        progress.ex.abort()


def pull(api: NativeApi, ex: Exchange) -> None:
    from olol.sim.native import want_stream

    body = ex.json("api.PullRequest")
    raw = _name(body, "invalid model name")
    try:
        name = normalize_name(raw)
    except SpecError:
        raise ApiError(400, "invalid model name") from None
    progress = Progress(api, ex, want_stream(body))
    sim = api.sim

    def work() -> None:
        progress.send({"status": "pulling manifest"})
        spec = sim.catalog_lookup(name)
        if spec is None:
            installed = api.store.get(name)
            spec = installed.spec if installed else None
        if spec is None:
            progress.fail("pull model manifest: file does not exist")
            return
        spec = spec.renamed(name)
        layers = layers_for(spec)
        full = _disk_full(api, layers)
        if full is not None:
            progress.fail(full)
            return
        for layer in layers:
            progress.transfer("pulling", layer, api.store.has_layer(layer.digest),
                              sim.config.pull_bytes_per_second)
        progress.send({"status": "verifying sha256 digest"})
        progress.send({"status": "writing manifest"})
        api.store.install(spec, layers)
        progress.send({"status": "success"})
        progress.done()

    _run(progress, work)


def push(api: NativeApi, ex: Exchange) -> None:
    from olol.sim.native import want_stream

    body = ex.json("api.PushRequest")
    raw = _name(body)
    try:
        name = normalize_name(raw)
    except SpecError:
        raise ApiError(400, "invalid model name") from None
    progress = Progress(api, ex, want_stream(body))

    def work() -> None:
        progress.send({"status": "retrieving manifest"})
        entry = api.store.get(name)
        if entry is None:
            progress.fail(f'model "{raw}" not found')
            return
        for layer in entry.layers:
            progress.transfer("pushing", layer, False, api.sim.config.pull_bytes_per_second,
                              announce=True)
        progress.send({"status": "pushing manifest"})
        progress.send({"status": "success"})
        progress.done()

    _run(progress, work)


def create(api: NativeApi, ex: Exchange) -> None:
    from olol.sim.native import want_stream

    body = ex.json("api.CreateRequest")
    raw = _name(body)
    try:
        name = normalize_name(raw)
    except SpecError:
        raise ApiError(400, "invalid model name") from None
    source = body.get("from")
    files = body.get("files")
    if not source and not files:
        raise ApiError(400, "neither 'from' or 'files' was specified")
    if files is not None and (not isinstance(files, dict)
                              or not all(isinstance(v, str) for v in files.values())):
        raise ApiError(400, "json: cannot unmarshal into Go struct field CreateRequest.files "
                            "of type map[string]string")
    if source is not None and not isinstance(source, str):
        raise ApiError(400, "json: cannot unmarshal into Go struct field CreateRequest.from "
                            "of type string")
    file_layers: list[Layer] = []
    for digest in (files or {}).values():
        size = api.store.blob_size(digest)
        if size is None:
            raise ApiError(400, f'blob "{digest}" not found')
        file_layers.append(Layer(digest, size, "application/vnd.ollama.image.model"))
    changes: dict[str, Any] = {}
    for key in ("system", "template"):
        if isinstance(body.get(key), str):
            changes[key] = body[key]
    if isinstance(body.get("parameters"), dict):
        changes["parameters"] = tuple(sorted((str(k), str(v))
                                             for k, v in body["parameters"].items()))
    quantize = body.get("quantize") or body.get("quantization")
    if isinstance(quantize, str) and quantize:
        changes["quantization"] = quantize.upper()
    progress = Progress(api, ex, want_stream(body), error_status=404)
    sim = api.sim

    def work() -> None:
        if source:
            try:
                base_name = normalize_name(source)
            except SpecError:
                progress.fail("invalid model name")
                return
            base = api.store.get(base_name)
            if base is None:
                spec = sim.catalog_lookup(base_name)
                if spec is None:
                    progress.fail("pull model manifest: file does not exist")
                    return
                progress.send({"status": "pulling manifest"})
                spec = spec.renamed(base_name)
                for layer in layers_for(spec):
                    progress.transfer("pulling", layer, False, sim.config.pull_bytes_per_second)
                progress.send({"status": "verifying sha256 digest"})
                progress.send({"status": "writing manifest"})
                base = api.store.install(spec)
            layers = list(base.layers)
            new_spec = base.spec.renamed(name, **changes)
        else:
            progress.send({"status": "parsing GGUF"})
            layers = list(file_layers)
            size = sum(la.size for la in layers)
            new_spec = ModelSpec(name=name, size=size, **changes)
        for layer in layers:
            progress.send({"status": f"using existing layer {layer.digest}"})
        if "quantization" in changes:
            progress.send({"status": f"quantizing F16 model to {changes['quantization']}"})
        for key in ("system", "template", "parameters"):
            if key in changes:
                layer = Layer(digest_of(key, name, changes[key]), len(str(changes[key])),
                              f"application/vnd.ollama.image.{key}")
                progress.send({"status": f"creating new layer {layer.digest}"})
                layers.append(layer)
        progress.send({"status": "writing manifest"})
        api.store.install(new_spec, tuple(layers))
        progress.send({"status": "success"})
        progress.done()

    _run(progress, work)
