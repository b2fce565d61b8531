"""Post-export graph passes, one small module each (spec onnx_export §6): fusion, fp16, int8/int4 quantization.

Each pass takes an ``onnx.ModelProto`` and returns the rewritten model plus a dict of figures for the report.
"""
