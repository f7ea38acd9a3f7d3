"""Triton backend: the model runs on a Triton Inference Server; this process only sends frames.

    backend = TritonBackend("grpc://127.0.0.1:8001", "stylecast")
    out = backend.stylize(frame, weights)

Everything about the model comes from the server: the input and output names and
shapes and ``max_batch_size`` from the model's config, the style names and stride from
its ``stylecast.*`` parameters (a repository from ``python -m engines triton repo``) or,
where the config has none (PyTriton), from the ``NAME-info`` model. Batching several
streamers' frames is Triton's job (its dynamic batcher); :meth:`stylize_batch` sends a
batch this process already has as one request.

Every request has ``timeout_s``: a stalled server costs a session one frame's error,
not its video. A failed request raises :class:`EngineError` naming the URL; the next call
reconnects, so when the server comes back the frames are stylized again.

``shared_memory=True`` (the server on this host): frames travel through POSIX shared
memory regions registered with the server instead of inside the gRPC message.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any

import numpy as np

from common.stroke import StrokeScale
from engines.runtime.base import EngineError, ShapeRange
from engines.runtime.frames import FrameBackend
from engines.runtime.registry import Kind, Request

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0
INFO_SUFFIX = "-info"  # engines.triton serves the model's facts under NAME-info


def unavailable_reason() -> str | None:
    import importlib.util

    if importlib.util.find_spec("tritonclient") is None or importlib.util.find_spec("tritonclient.grpc") is None:
        return "tritonclient is not installed (pip install 'tritonclient[grpc]')"
    return None


def _address(url: str) -> str:
    """``grpc://host:8001`` or ``host:8001`` -> ``host:8001`` (what tritonclient.grpc takes)."""
    return url.split("://", 1)[1] if "://" in url else url


class TritonBackend(FrameBackend):
    """Sends frames to ``model`` on the Triton server at ``url`` (gRPC)."""

    def __init__(
        self,
        url: str,
        model: str = "stylecast",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        shared_memory: bool = False,
    ) -> None:
        if reason := unavailable_reason():
            raise EngineError(reason)
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.name = "triton"
        self._lock = threading.Lock()  # one client, one set of shared-memory regions
        self._client: Any = None
        self._shm: dict[str, Any] = {}
        self.shared_memory = shared_memory
        meta = self._describe()
        self.styles = list(meta["styles"])
        self.stroke_scale = StrokeScale.of(meta)
        self.stride = int(meta.get("stride", 4))
        self.max_batch = int(meta["max_batch"])
        self.version = str(meta.get("version", ""))
        self.shapes = ShapeRange(min_hw=(8, 8), max_hw=(4096, 4096), multiple=self.stride)
        self.precision = str(meta.get("precision", "fp32"))
        self.server_backend = str(meta.get("backend") or "")  # what runs the model inside the server
        self.precision_reason = (
            f"{self.precision}: chosen by the Triton server ({self.server_backend or 'its backend'})"
        )
        log.info("triton %s model %s v%s: %d styles", url, model, self.version, len(self.styles))

    # ------------------------------------------------------------------ the server

    def _connect(self) -> Any:
        if self._client is None:
            import tritonclient.grpc as grpcclient

            self._client = grpcclient.InferenceServerClient(_address(self.url))
        return self._client

    def _fail(self, what: str, e: Exception) -> EngineError:
        # Drop the client: the next call connects again (the server may have restarted).
        self._drop()
        return EngineError(f"Triton at {self.url} {what}: {type(e).__name__}: {str(e)[:300]}")

    def _drop(self) -> None:
        client, self._client = self._client, None
        for region in list(self._shm):
            self._release(region, client)
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken channel may fail too; nothing to keep
                log.debug("closing the Triton client failed", exc_info=True)

    def _describe(self) -> dict[str, Any]:
        """Styles, stride, batch limit and version of the model, from the server alone."""
        try:
            client = self._connect()
            if not client.is_model_ready(self.model, client_timeout=self.timeout_s):
                raise EngineError(f"Triton at {self.url} has no ready model {self.model!r}")
            config = client.get_model_config(self.model, as_json=True, client_timeout=self.timeout_s)["config"]
            meta = client.get_model_metadata(self.model, as_json=True, client_timeout=self.timeout_s)
        except EngineError:
            raise
        except Exception as e:
            raise self._fail("cannot be reached", e) from e
        facts = {k.removeprefix("stylecast."): v["string_value"] for k, v in config.get("parameters", {}).items()}
        if "styles" in facts:
            out: dict[str, Any] = {"styles": json.loads(facts["styles"]), "stride": facts.get("stride", 4)}
            out.update({k: json.loads(facts[k]) for k in StrokeScale().facts() if k in facts})
            out["precision"] = facts.get("precision", "fp32")
            out["backend"] = config.get("backend") or config.get("platform")
        else:
            out = self._info()
        out["max_batch"] = max(1, int(config.get("max_batch_size", 1)))
        out["version"] = (meta.get("versions") or [""])[-1]
        return out

    def _info(self) -> dict[str, Any]:
        import tritonclient.grpc as grpcclient

        query = grpcclient.InferInput("query", [1], "INT32")
        query.set_data_from_numpy(np.zeros(1, np.int32))
        try:
            res = self._connect().infer(self.model + INFO_SUFFIX, [query], client_timeout=self.timeout_s)
        except Exception as e:
            raise self._fail(
                f"gives no facts for {self.model!r} (no parameters, no {self.model + INFO_SUFFIX})", e
            ) from e
        return dict(json.loads(res.as_numpy("info")[0]))

    def status(self) -> dict[str, Any]:
        """The server's readiness and the model version, for /health (never raises).

        It asks on a client of its own, so a health probe from another thread never
        touches the inference client or its shared-memory regions."""
        import tritonclient.grpc as grpcclient

        facts: dict[str, Any] = {"url": self.url, "model": self.model, "model_version": self.version}
        client = None
        try:
            client = grpcclient.InferenceServerClient(_address(self.url))
            facts["server_ready"] = bool(client.is_server_ready(client_timeout=self.timeout_s))
            facts["model_ready"] = bool(client.is_model_ready(self.model, client_timeout=self.timeout_s))
        except Exception as e:
            facts.update(server_ready=False, model_ready=False, error=type(e).__name__)
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:
                    log.debug("closing the health client failed", exc_info=True)
        return facts

    # ------------------------------------------------------------------ inference

    def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        n = images.shape[0]
        if n > self.max_batch:  # the server's limit: send it in parts
            m = self.max_batch
            parts = [
                self._run(images[i : i + m], weights[i : i + m], None if strokes is None else strokes[i : i + m])
                for i in range(0, n, m)
            ]
            return np.concatenate(parts)
        import tritonclient.grpc as grpcclient

        with self._lock:
            try:
                client = self._connect()
                image = grpcclient.InferInput("image", list(images.shape), "UINT8")
                style = grpcclient.InferInput("style", list(weights.shape), "FP32")
                out = grpcclient.InferRequestedOutput("stylized")
                style.set_data_from_numpy(np.ascontiguousarray(weights, np.float32))
                inputs = [image, style]
                if strokes is not None:  # [N,1]: Triton's batched view of the model's [N] input
                    stroke = grpcclient.InferInput("stroke", [n, 1], "FP32")
                    stroke.set_data_from_numpy(np.ascontiguousarray(strokes, np.float32).reshape(n, 1))
                    inputs.append(stroke)
                if self.shared_memory:
                    self._through_shm(client, image, out, images)
                else:
                    image.set_data_from_numpy(np.ascontiguousarray(images))
                res = client.infer(self.model, inputs, outputs=[out], client_timeout=self.timeout_s)
                if self.shared_memory:
                    return self._read_shm(images.shape)
                result = res.as_numpy("stylized")
            except EngineError:
                raise
            except Exception as e:
                raise self._fail("failed a request", e) from e
        if result is None or result.shape != images.shape:
            raise EngineError(f"Triton at {self.url} answered {getattr(result, 'shape', None)}, want {images.shape}")
        return result

    # System shared memory: one input and one output region, grown to the largest batch seen.

    def _region(self, client: Any, key: str, nbytes: int) -> Any:
        import tritonclient.utils.shared_memory as shm

        have = self._shm.get(key)
        if have is not None and have[2] >= nbytes:
            return have
        if have is not None:
            self._release(key, client)
        name = f"stylecast-{key}-{uuid.uuid4().hex[:8]}"
        handle = shm.create_shared_memory_region(name, f"/{name}", nbytes)
        client.register_system_shared_memory(name, f"/{name}", nbytes)
        self._shm[key] = (name, handle, nbytes)
        return self._shm[key]

    def _release(self, key: str, client: Any) -> None:
        import tritonclient.utils.shared_memory as shm

        name, handle, _ = self._shm.pop(key)
        try:
            if client is not None:
                client.unregister_system_shared_memory(name)
        except Exception:  # the server may be gone: the region is ours to remove regardless
            log.debug("unregistering %s failed", name, exc_info=True)
        shm.destroy_shared_memory_region(handle)

    def _through_shm(self, client: Any, image: Any, out: Any, images: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm

        name_in, handle_in, _ = self._region(client, "in", images.nbytes)
        name_out, _, _ = self._region(client, "out", images.nbytes)
        shm.set_shared_memory_region(handle_in, [np.ascontiguousarray(images)])
        image.set_shared_memory(name_in, images.nbytes)
        out.set_shared_memory(name_out, images.nbytes)

    def _read_shm(self, shape: tuple[int, ...]) -> np.ndarray:
        import tritonclient.utils.shared_memory as shm

        _, handle, _ = self._shm["out"]
        return np.array(shm.get_contents_as_numpy(handle, np.uint8, list(shape)), copy=True)

    def close(self) -> None:
        with self._lock:
            self._drop()


def _remote(req: Request) -> str:
    return "a Triton server runs the model: load_backend(..., backend='triton', triton_url=...) (never picked by auto)"


# The server chooses the precision it runs; any of them may come back as .precision.
KINDS = (Kind("triton", ("int8", "bf16", "fp16", "fp32"), "remote", unavailable_reason, _remote),)
