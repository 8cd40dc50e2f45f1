"""The OpenVINO backend leaves its process able to take signals: Ctrl-C, a DataLoader worker's exit.

OpenVINO's CPU plugin swaps the compiling thread's signal stack per Core; two Cores released in the order they were
made left the thread on a freed stack, and the next Python signal handler killed the process (SIGSEGV). Seen in
CI as a crash of the test run when a training test's DataLoader workers exited after the precision check's tests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")


def test_sessions_released_in_any_order_leave_signal_handlers_working(tmp_path):
    from onnx import TensorProto, helper

    path = tmp_path / "relu.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["logits"])],
        "relu",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 4, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 4, 4, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    script = textwrap.dedent(f"""
        import faulthandler, gc, os, signal
        import numpy as np
        from unetseg.inference.openvino_backend import OpenVinoSession

        faulthandler.enable()  # as pytest and many programs do: Python's handlers run on its signal stack
        window = np.ones((1, 1, 4, 4, 4), np.float32)
        first, second = (OpenVinoSession({str(path)!r}, "fp32") for _ in range(2))
        assert all(s.run(None, {{"image": -window}})[0].max() == 0 for s in (first, second))
        del first; gc.collect()
        del second; gc.collect()
        caught = []
        signal.signal(signal.SIGUSR1, lambda *_: caught.append(True))
        os.kill(os.getpid(), signal.SIGUSR1)
        print("caught" if caught else "missed")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "caught"
