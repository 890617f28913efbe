"""Running the .tflite: its input / output details, quantizing inputs, the TFLM host interpreter with a given
arena (what firmware runs, and what ``nas verify`` re-runs), and tf.lite's reference kernels to cross-check it.

TensorFlow and tflite_micro are imported inside the functions, so importing :mod:`nas.export` stays light."""
from __future__ import annotations

import warnings
from typing import Any

warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")


def io_details(tflite: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input and output: shape, dtype, scale, zero point (what firmware needs to feed and read the model)."""
    import nas  # noqa: F401
    import numpy as np
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=tflite)

    def one(d: dict[str, Any]) -> dict[str, Any]:
        return {"shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}

    return one(it.get_input_details()[0]), one(it.get_output_details()[0])


def quantize(x: Any, scale: float, zero_point: int) -> Any:
    """Float inputs to the model's int8: round, add the zero point, clamp (as firmware does)."""
    import numpy as np

    return np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)


def run_tflm(tflite: bytes, arena_size: int, inputs: Any) -> Any:
    """Raw int8 outputs of the TFLM host interpreter (``tflite_micro``) for each input, one at a time.

    Raises RuntimeError when the model does not allocate in ``arena_size`` bytes.
    """
    import numpy as np
    from tflite_micro import runtime

    from nas.tflm import CaptureStderr  # TFLM logs to C stderr; keep it off the user's terminal

    with CaptureStderr() as cap:
        try:
            interp = runtime.Interpreter.from_bytes(tflite, arena_size=int(arena_size))
        except RuntimeError:
            interp = None
    if interp is None:
        raise RuntimeError(f"TFLM could not allocate the model in an arena of {arena_size} bytes: "
                           + " | ".join(ln.strip() for ln in cap.text.splitlines() if ln.strip())[:300])
    outs = []
    with CaptureStderr():
        for x in inputs:
            interp.set_input(np.asarray(x)[None, ...], 0)
            interp.invoke()
            outs.append(np.array(interp.get_output(0)).reshape(-1))
    return np.stack(outs)


def tflite_reference(tflite: bytes, inputs: Any) -> Any:
    """Raw int8 outputs of tf.lite with the reference kernels, to cross-check TFLM (STACK.md: bit-identical)."""
    import numpy as np
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=tflite,
                             experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for x in inputs:
        it.set_tensor(inp["index"], np.asarray(x)[None, ...])
        it.invoke()
        outs.append(np.array(it.get_tensor(out["index"])).reshape(-1))
    return np.stack(outs)
