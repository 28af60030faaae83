#!/usr/bin/env python3
"""Writes the small ONNX seed models of fuzz/corpus/onnx_import/ (needs the `onnx` Python package).

- tiny-llama-external.onnx: models/tiny-llama.onnx with every initializer of more than 64 elements moved to
  (absent) external data, as the large fixtures are, and only the
  name-scope metadata kept: the real decoder graph in about 50 kilobytes.
- add.onnx, matmul-init.onnx, unsupported.onnx: minimal graphs (an elementwise op on symbolic dims, a
  MatMul with an inline initializer, an op outside the supported set).
"""
import os
import sys

import onnx
from onnx import TensorProto, helper

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus", "onnx_import")
os.makedirs(out, exist_ok=True)

m = onnx.load(os.path.join(here, "..", "models", "tiny-llama.onnx"))
offset = 0
for t in m.graph.initializer:
    n = 1
    for d in t.dims:
        n *= d
    if n <= 64:
        continue
    length = len(t.raw_data) if t.raw_data else n * 4
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", "tiny-llama.onnx.data"), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    offset += length
# Keep only the metadata the importer reads (name scopes); drop stack traces and FX dumps.
for node in m.graph.node:
    keep = [(p.key, p.value) for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
    del node.metadata_props[:]
    for k, v in keep:
        e = node.metadata_props.add()
        e.key, e.value = k, v
    node.doc_string = ""
onnx.save(m, os.path.join(out, "tiny-llama-external.onnx"))

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])
g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"], name="add")], "add", [x], [y])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), os.path.join(out, "add.onnx"))

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.5] * 12)
g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm", [x], [y], [w])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), os.path.join(out, "matmul-init.onnx"))

g = helper.make_graph([helper.make_node("NonMaxSuppression", ["x"], ["y"], name="nms")], "u", [x], [y])
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), os.path.join(out, "unsupported.onnx"))
print("wrote seeds to", out, file=sys.stderr)
