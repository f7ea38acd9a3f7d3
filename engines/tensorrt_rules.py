"""What TensorRT's ONNX parser and builder require of a graph, checked on the graph itself.

TensorRT cannot be installed on the machines this is developed on, so every rule that can be
read off the ONNX file is checked here, on the CPU, for the exported model, its float16 and its
INT8 versions (``python -m engines build`` runs it before TensorRT sees the file; the tests run
it on the shipped models):

* every operator is one TensorRT's parser supports (``tensorrt_onnx_ops.txt``, from
  onnx-tensorrt's operator table), in its opset range, with no custom domain or local function;
* UINT8 only at the network's edge: a uint8 input may feed nothing but a Cast, a uint8 output
  may come from nothing but a Cast, and no tensor inside the graph is uint8 (an NVIDIA
  maintainer, TensorRT issue #3985: "no other layers support UINT8 inputs, even data-movement
  ops like reshape / transpose");
* Reduce* operators take their ``axes`` from a constant (the table's restriction);
* INT8 is explicit quantization: QuantizeLinear/DequantizeLinear pairs with int8 zero points
  of 0 (TensorRT quantizes symmetrically, signed; uint8 Q/DQ is refused) and constant scales.
  A shipped INT8 file quantizes never-negative activations to uint8 for the CPU; the build
  gives TensorRT :func:`tensorrt_form`, those pairs made signed, and the rules are checked on that;
* a float16 graph keeps its uint8 ends and the float32 inputs it declares.

Rules that need a GPU (kernel availability, workspace, timing) are the build's: ``bench/gpu_check.sh``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

OPS_FILE = Path(__file__).resolve().parent / "tensorrt_onnx_ops.txt"
QDQ = ("QuantizeLinear", "DequantizeLinear")


def supported_ops(path: Path = OPS_FILE) -> tuple[set[str], int, int]:
    """(operators, lowest opset, highest opset) from the table kept in the repo."""
    ops, lo, hi = set(), 0, 0
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("opset_min"):
            lo = int(line.split()[1])
        elif line.startswith("opset_max"):
            hi = int(line.split()[1])
        else:
            ops.add(line)
    return ops, lo, hi


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    out = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            attr = n.attribute[0]
            if attr.type == onnx.AttributeProto.TENSOR:
                out[n.output[0]] = attr.t
    return out


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type shape inference can tell (from the graph itself: a stale
    declared type, as some quantizers leave, is dropped rather than trusted)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except onnx.shape_inference.InferenceError:
        bare = onnx.ModelProto()
        bare.CopyFrom(model)
        del bare.graph.value_info[:]
        inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=False)
    types: dict[str, int] = {}
    for v in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for t in inferred.graph.initializer:
        types[t.name] = t.data_type
    return types


def tensorrt_problems(model: onnx.ModelProto, ops_file: Path = OPS_FILE) -> list[str]:
    """Every rule above that ``model`` breaks, one line each (empty: TensorRT may build it)."""
    problems: list[str] = []
    supported, lo, hi = supported_ops(ops_file)
    opset = {o.domain: o.version for o in model.opset_import}
    main = opset.get("", opset.get("ai.onnx", 0))
    if not lo <= main <= hi:
        problems.append(f"opset {main} is outside TensorRT's range {lo}..{hi}")
    if set(opset) - {"", "ai.onnx"}:
        problems.append(f"custom operator domains: {sorted(set(opset) - {'', 'ai.onnx'})}")
    if model.functions:
        problems.append("local functions (their ops would escape this check): inline them")
    used = {n.op_type for n in model.graph.node}
    if used - supported:
        problems.append(f"operators TensorRT's parser does not support: {sorted(used - supported)}")

    graph = model.graph
    types = _types(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n
    edge = {v.name for v in [*graph.input, *graph.output]}
    for v in graph.input:
        if v.type.tensor_type.elem_type == TensorProto.UINT8:
            bad = [n.op_type for n in consumers.get(v.name, []) if n.op_type != "Cast"]
            if bad:
                problems.append(f"uint8 input {v.name!r} feeds {sorted(set(bad))}: only a Cast may touch it")
    for v in graph.output:
        if v.type.tensor_type.elem_type == TensorProto.UINT8:
            p = producer.get(v.name)
            if p is None or p.op_type != "Cast":
                problems.append(
                    f"uint8 output {v.name!r} comes from {p.op_type if p else 'nothing'}: only a Cast may make it"
                )
    inner_u8 = sorted(
        name for name, t in types.items() if t == TensorProto.UINT8 and name not in edge and name in producer
    )
    qdq_u8 = {n.input[2] for n in graph.node if n.op_type in QDQ and len(n.input) > 2}
    inner_u8 = [name for name in inner_u8 if name not in qdq_u8 and producer[name].op_type not in QDQ]
    if inner_u8:
        problems.append(f"uint8 tensors inside the graph (TensorRT has none): {inner_u8[:5]}")

    constants = _constants(model)
    for n in graph.node:
        if n.op_type.startswith("Reduce") and len(n.input) > 1 and n.input[1] and n.input[1] not in constants:
            problems.append(f"{n.op_type} {n.name!r} takes its axes from a computed tensor, not a constant")
    problems += _qdq_problems(graph.node, constants, types)
    return problems


def _qdq_problems(
    nodes: Iterable[onnx.NodeProto], constants: dict[str, onnx.TensorProto], types: dict[str, int]
) -> list[str]:
    problems: list[str] = []
    for n in nodes:
        if n.op_type not in QDQ:
            continue
        if n.input[1] not in constants:
            problems.append(f"{n.op_type} {n.name!r}: its scale is computed, not a constant")
        if len(n.input) < 3 or not n.input[2]:
            if n.op_type == "QuantizeLinear":
                problems.append(f"{n.op_type} {n.name!r} has no zero point: it would quantize to uint8")
            continue
        zp = constants.get(n.input[2])
        if zp is None:
            problems.append(f"{n.op_type} {n.name!r}: its zero point is computed, not a constant")
            continue
        if zp.data_type != TensorProto.INT8:
            problems.append(
                f"{n.op_type} {n.name!r} quantizes to {TensorProto.DataType.Name(zp.data_type).lower()}: "
                "TensorRT takes only int8 (signed, symmetric)"
            )
        elif numpy_helper.to_array(zp).any():
            problems.append(f"{n.op_type} {n.name!r} has a non-zero zero point: TensorRT quantizes symmetrically")
    return problems


def tensorrt_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as TensorRT is given it: every uint8 Q/DQ pair with zero point 0 made signed int8
    over the same range (in place; the model is returned).

    The shipped INT8 files quantize never-negative activations to uint8, one bit finer on the
    CPU (``engines.quantize``); TensorRT refuses uint8 Q/DQ.

    uint8 with zero point 0 and scale s covers [0, 255 s]; int8 with zero point 0 and scale
    255 s / 127 covers [-255 s, 255 s]: the same positive range, one bit less fine (what
    TensorRT would compute anyway, as it quantizes only to signed int8).
    """
    inits = {t.name: t for t in model.graph.initializer}
    declared = {v.name: v for v in model.graph.value_info}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]

    def unsigned_zero(name: str) -> bool:
        t = inits.get(name)
        return t is not None and t.data_type == TensorProto.UINT8 and not numpy_helper.to_array(t).any()

    # Decided before anything changes: a zero point or scale may be shared by several nodes.
    zero_points = {n.input[2] for n in qdq if unsigned_zero(n.input[2])}
    scales = {n.input[1] for n in qdq if n.input[2] in zero_points and n.input[1] in inits}
    for name in zero_points:
        inits[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.int8), name))
    for name in scales:
        wider = (numpy_helper.to_array(inits[name]) * (255.0 / 127.0)).astype(numpy_helper.to_array(inits[name]).dtype)
        inits[name].CopyFrom(numpy_helper.from_array(wider, name))
    for n in qdq:  # the quantized tensors are int8 now
        if n.op_type == "QuantizeLinear" and n.input[2] in zero_points and n.output[0] in declared:
            declared[n.output[0]].type.tensor_type.elem_type = TensorProto.INT8
    return model


def check_file(path: str | Path) -> list[str]:
    """:func:`tensorrt_problems` of an ONNX file as a TensorRT build reads it (:func:`tensorrt_form`;
    no external data needed: only the graph is read)."""
    return tensorrt_problems(tensorrt_form(onnx.load(str(path), load_external_data=False)))
