"""Records, for each ONNX Runtime session the predictor opens, the window it declared (`onnx_backend._session`'s
``window``: the OpenVINO provider compiles for that shape once) and the input shapes it was then fed; and, under
ONNX Runtime's OpenVINO build, the shapes its provider was told (`told_reshapes`)."""

from __future__ import annotations

from typing import Any

from unetseg.inference import onnx_backend


class _Recorded:
    """The session, with the shape of every input it runs on appended to ``fed``."""

    def __init__(self, session: Any, fed: list[tuple[int, ...]]) -> None:
        self._session, self._fed = session, fed

    def run(self, outputs: Any, feeds: dict, *args: Any) -> Any:
        self._fed.append(tuple(feeds[onnx_backend.INPUT_NAME].shape))
        return self._session.run(outputs, feeds, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class FedWindows:
    """Installed on ``onnx_backend._session`` with ``monkeypatch``; `check` asserts what a run did with them."""

    def __init__(self, monkeypatch: Any) -> None:
        self.sessions: list[tuple[tuple[int, ...] | None, list[tuple[int, ...]]]] = []
        opened = onnx_backend._session

        def recording(path, device, precision="fp32", own_kernels=False, window=None):
            fed: list[tuple[int, ...]] = []
            self.sessions.append((None if window is None else tuple(int(n) for n in window), fed))
            return _Recorded(opened(path, device, precision, own_kernels, window), fed)

        monkeypatch.setattr(onnx_backend, "_session", recording)

    def check(self) -> tuple[int, ...]:
        """The one window a run's sessions declared, after asserting that the run fed it: that shape every call,
        but for a last batch with fewer windows (`windows.call_shape`)."""
        declared = [(window, fed) for window, fed in self.sessions if fed]
        assert len(declared) == 1, self.sessions
        window, fed = declared[0]
        assert window is not None, "the predictor's session declared no window"
        assert fed[0] == window, (window, fed[:3])
        assert all(shape[1:] == window[1:] and shape[0] <= window[0] for shape in fed), (window, set(fed))
        assert all(shape == window for shape in fed[:-1]), (window, set(fed))
        self.sessions.clear()
        return window


def told_reshapes() -> set[str]:
    """From now on in this process, every ``reshape_input`` the OpenVINO provider is given, as ONNX Runtime gets it."""
    import onnxruntime

    opened, told = onnxruntime.InferenceSession, set()

    def recording(path, sess_options=None, providers=(), **kwargs):
        told.update(p[1].get("reshape_input") for p in providers if isinstance(p, tuple))
        return opened(path, sess_options=sess_options, providers=providers, **kwargs)

    onnxruntime.InferenceSession = recording
    return told
