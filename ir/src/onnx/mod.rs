//! ONNX import: protobuf decoding, the op-builder table, shape inference and constant folding of PyTorch shape subgraphs, external data.
