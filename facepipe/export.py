"""ONNX export, parity check, hash sidecar and model card — used by every exported model.

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at a
fixed opset (17). torch 2.13 defaults to the torch.export/"dynamo" exporter, which needs the
``onnxscript`` package (not a facepipe dependency); the TorchScript exporter handles these
plain conv/linear graphs exactly and needs nothing more. Shapes are static (no dynamic axes):
the DFM convention fixes batch 1 and the crop size, and runtimes read the size from the input.

Determinism: the same weights give the same bytes. The exporter writes no timestamps or paths;
doc strings are cleared anyway (a verbose export puts source locations there), and the
protobuf is serialised with ``deterministic=True``. Export always runs on a CPU copy, so a
model trained on a GPU exports the same bytes as its weights loaded on a CPU.

DFM convention (DeepFaceLive; FaceFusion's ``deep_swapper`` loads ``.dfm`` files from
``.assets/models/custom/``): one input ``in_face:0`` float32 NHWC [1, S, S, 3], BGR in [0, 1];
outputs in this order: ``out_face_mask:0`` [1, S, S, 1] (the input face's mask),
``out_celeb_face:0`` [1, S, S, 3] BGR in [0, 1], ``out_celeb_face_mask:0`` [1, S, S, 1].
Crops are aligned to the ``dfl_whole_face`` template (facepipe.align).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from facepipe.align import DFL_WHOLE_FACE_TEMPLATE
from facepipe.models.swap import DFM_INPUT, DFM_MORPH_INPUT, DFM_OUTPUTS, dfm_input
from facepipe.store import atomic_write_bytes, file_sha256

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4  # max abs difference, outputs in [0, 1]: far below one 8-bit level (0.004)
# A model with morph_value:0 is checked at both ends and halfway (every parity crop at each).
MORPH_CHECK_VALUES = (0.0, 0.5, 1.0)



class OnnxParityError(AssertionError):
    """onnxruntime's output of an exported model differs from the torch model's."""


# ---------------------------------------------------------------------------------------------
# Generic export and verification


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put a module in eval mode for the block and restore its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _on_cpu(module: nn.Module) -> nn.Module:
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return module
    return copy.deepcopy(module).cpu()


def _clear_doc_strings(model: onnx.ModelProto) -> None:
    """Doc strings may carry source paths and line numbers; the artifact must not."""
    model.doc_string = ""

    def clear_graph(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        for value in [*graph.input, *graph.output, *graph.value_info]:
            value.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            for attribute in node.attribute:
                attribute.doc_string = ""
                if attribute.type == onnx.AttributeProto.GRAPH:
                    clear_graph(attribute.g)
                for subgraph in attribute.graphs:
                    clear_graph(subgraph)

    clear_graph(model.graph)
    for function in model.functions:
        function.doc_string = ""
        for node in function.node:
            node.doc_string = ""


def onnx_bytes(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
) -> bytes:
    """The serialised ONNX model of ``module`` (eval mode, CPU, static shapes), deterministic."""
    module = _on_cpu(module)
    example_inputs = tuple(t.detach().cpu() for t in example_inputs)
    buffer = io.BytesIO()
    with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
        # The legacy-exporter deprecation notice is expected: we choose it on purpose (see top).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        # Shapes are static on purpose (one crop size per model), so shape-dependent Python
        # branches being traced as constants is exactly what we want.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The exporter reverses F.pad's pad list with a step -1 Slice (the replicate padding of
        # the export's Gaussian blurs) and says it cannot fold it; the graph is right as it is.
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1 can be constant folded")
        torch.onnx.export(
            module,
            example_inputs,
            buffer,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
            export_params=True,
            keep_initializers_as_inputs=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    _clear_doc_strings(model)
    return model.SerializeToString(deterministic=True)


def export_onnx(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: Path | str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``module`` to ``path`` (written atomically); returns the path."""
    path = Path(path)
    atomic_write_bytes(path, onnx_bytes(module, example_inputs, input_names, output_names, opset))
    return path


def _as_outputs(result: Any) -> list[np.ndarray]:
    outputs = result if isinstance(result, (tuple, list)) else (result,)
    return [o.detach().cpu().float().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outputs]


def verify_onnx(
    path: Path | str,
    module_fn: Callable[..., Any],
    cases: Sequence[Sequence[np.ndarray]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Check an exported model and return the worst max-abs difference to torch.

    ``onnx.checker`` (full check), then onnxruntime (CPUExecutionProvider, one thread, so the
    figure itself is reproducible) against ``module_fn`` (the torch model: an nn.Module is run
    in eval mode, without gradients) on every case: a case is the list of input arrays in the
    model's input order, e.g. ``[[crop_1], [crop_2]]`` for a one-input model. Raises
    OnnxParityError naming the file and the output when an output differs by more than
    ``tolerance`` or is not finite.
    """
    path = Path(path)
    if not cases:
        raise ValueError(f"verify_onnx({path}): no input cases given; pass real crops to compare on")
    onnx.checker.check_model(str(path), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    worst = 0.0
    if isinstance(module_fn, nn.Module):
        module_fn = _on_cpu(module_fn)  # the reference runs where the inputs are: on the CPU
    context = eval_mode(module_fn) if isinstance(module_fn, nn.Module) else contextlib.nullcontext()
    with context, torch.no_grad():
        for case_index, case in enumerate(cases):
            arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in case]
            if len(arrays) != len(input_names):
                raise ValueError(f"verify_onnx({path}): case {case_index} has {len(arrays)} inputs, the model takes {input_names}")
            runtime_outputs = session.run(None, dict(zip(input_names, arrays)))
            torch_outputs = _as_outputs(module_fn(*[torch.from_numpy(a) for a in arrays]))
            if len(torch_outputs) != len(runtime_outputs):
                raise OnnxParityError(f"{path}: torch gives {len(torch_outputs)} outputs, the ONNX model {len(runtime_outputs)} ({output_names})")
            for name, ours, theirs in zip(output_names, torch_outputs, runtime_outputs):
                if ours.shape != theirs.shape:
                    raise OnnxParityError(f"{path}: output {name} has shape {list(theirs.shape)} in onnxruntime, {list(ours.shape)} in torch")
                if not np.isfinite(theirs).all():
                    raise OnnxParityError(f"{path}: output {name} has non-finite values in onnxruntime (case {case_index})")
                error = float(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max())
                if not error <= tolerance:
                    raise OnnxParityError(
                        f"{path}: output {name} differs from torch by {error:.3g} (case {case_index}), above the "
                        f"tolerance {tolerance:g}; the export does not reproduce the model: check for ops that "
                        f"behave differently in eval/trace (data-dependent control flow, randomness)"
                    )
                worst = max(worst, error)
    return worst


# ---------------------------------------------------------------------------------------------
# Sidecar files


def crc32_hex(path: Path | str, chunk: int = 1 << 20) -> str:
    checksum = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            checksum = zlib.crc32(block, checksum)
    return format(checksum & 0xFFFFFFFF, "08x")


def write_hash_sidecar(path: Path | str) -> Path:
    """``<name>.hash`` beside the model: its CRC32 as 8 lowercase hex digits, no newline
    (the form FaceFusion checks its model files against)."""
    path = Path(path)
    sidecar = path.with_suffix(".hash")
    atomic_write_bytes(sidecar, crc32_hex(path).encode("ascii"))
    return sidecar


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(
        f"model card value {value!r} ({type(value).__name__}) is not JSON data; convert it first "
        f"(paths must be made relative: a card must not hold machine-specific absolute paths)"
    )


def card_json(card: dict[str, Any]) -> bytes:
    """Deterministic JSON: sorted keys, fixed indentation, no NaN/Infinity, trailing newline."""
    return (json.dumps(card, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n").encode("utf-8")


def write_model_card(path: Path | str, card: dict[str, Any]) -> Path:
    """``<name>.json`` beside the model: ``card`` plus the model file's ``sha256`` and ``size_bytes``."""
    path = Path(path)
    full = {**card, "sha256": file_sha256(path), "size_bytes": path.stat().st_size}
    card_path = path.with_suffix(".json")
    atomic_write_bytes(card_path, card_json(full))
    return card_path


# ---------------------------------------------------------------------------------------------
# DFM swap model (the module itself and its input lie in facepipe.models.swap)


MORPH_INPUT_CARD = {
    "name": DFM_MORPH_INPUT, "dtype": "float32", "shape": [1],
    "meaning": "0: the target's own face (the target path), 1: the full swap; FaceFusion feeds its "
               "--deep-swapper-morph / 100 (default 1), DeepFaceLive its morph control (starts at 0.75)",
    "checked_at": list(MORPH_CHECK_VALUES),
}


def dfm_card(size: int, morph: bool = False) -> dict[str, Any]:
    """What a runtime needs to feed the model and read its outputs."""
    return {
        "format": "DFM (DeepFaceLive) swap model, ONNX",
        "inputs": [{"name": DFM_INPUT, "dtype": "float32", "shape": [1, size, size, 3]},
                   *([MORPH_INPUT_CARD] if morph else [])],
        "outputs": [
            {"name": DFM_OUTPUTS[0], "dtype": "float32", "shape": [1, size, size, 1], "meaning": "input face mask, [0, 1]"},
            {"name": DFM_OUTPUTS[1], "dtype": "float32", "shape": [1, size, size, 3], "meaning": "swapped face, BGR [0, 1]"},
            {"name": DFM_OUTPUTS[2], "dtype": "float32", "shape": [1, size, size, 1], "meaning": "swapped face mask, [0, 1]"},
        ],
        "layout": "NHWC",
        "colour_order": "BGR",
        "normalisation": "float32 = uint8 / 255, range [0, 1]",
        "template": {
            "name": "dfl_whole_face",
            "points_normalised_xy": DFL_WHOLE_FACE_TEMPLATE.tolist(),
            "point_order": ["eye (image left)", "eye (image right)", "nose tip", "mouth corner (image left)", "mouth corner (image right)"],
        },
        "size": size,
    }


@dataclass(frozen=True)
class ExportedModel:
    model_path: Path
    hash_path: Path
    card_path: Path
    max_abs_error: float


def export_dfm(
    model: nn.Module,
    size: int,
    path: Path | str,
    crops: Sequence[np.ndarray],
    card: dict[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportedModel:
    """Export a DFM-convention model to ``path`` (e.g. ``name.dfm``), verify it against torch
    on ``crops`` (real uint8 BGR crops [S, S, 3], aligned to dfl_whole_face; a model that takes
    ``morph_value:0`` at each of MORPH_CHECK_VALUES), and write ``name.hash`` and ``name.json``
    (``dfm_card`` + ``card`` (lineage, metrics) + parity + exporter).

    A failed verification removes the model file and raises: nothing unverified is left behind.
    """
    path = Path(path)
    if not len(crops):
        raise ValueError(f"export_dfm({path}): no crops given; pass real aligned crops for the parity check")
    morph = bool(getattr(model, "takes_morph", False))
    inputs = [dfm_input(crop) for crop in crops]
    if inputs[0].shape != (1, size, size, 3):
        raise ValueError(f"export_dfm({path}): crops are {list(inputs[0].shape[1:3])} px, the model size is {size}; resize them first")
    if morph:
        cases = [[x, np.array([m], dtype=np.float32)] for x in inputs for m in MORPH_CHECK_VALUES]
    else:
        cases = [[x] for x in inputs]
    names = [DFM_INPUT, DFM_MORPH_INPUT] if morph else [DFM_INPUT]
    return export_verified(model, cases, path, names, list(DFM_OUTPUTS), {**dfm_card(size, morph), **(card or {})}, tolerance,
                           num_crops=len(inputs))


def export_verified(
    model: nn.Module,
    cases: Sequence[Sequence[np.ndarray]],
    path: Path | str,
    input_names: list[str],
    output_names: list[str],
    card: dict[str, Any],
    tolerance: float = DEFAULT_TOLERANCE,
    num_crops: int | None = None,
) -> ExportedModel:
    """Export, verify against torch on real `cases`, then write ``.hash`` and the card
    (``num_crops``: how many crops the cases hold, when several cases share a crop).

    A failed verification removes the model file and raises: nothing unverified is left behind.
    """
    path = Path(path)
    export_onnx(model, [torch.from_numpy(x) for x in cases[0]], path, input_names, output_names)
    try:
        error = verify_onnx(path, model, cases, tolerance)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    full_card = {
        **card,
        "parity": {
            "max_abs_error": float(f"{error:.3g}"),  # 3 digits: the figure stays byte-stable
            "tolerance": tolerance,
            "num_crops": num_crops or len(cases),
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        },
        "exporter": {"tool": f"torch.onnx (TorchScript, dynamo=False), torch {torch.__version__}", "opset": DEFAULT_OPSET},
    }
    hash_path = write_hash_sidecar(path)
    card_path = write_model_card(path, full_card)
    return ExportedModel(path, hash_path, card_path, error)
