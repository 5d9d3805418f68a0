"""What turns a model into a bundle and a bundle into faster graphs: ONNX export, int8 calibration
(ONNX Runtime Q/DQ and NNCF for OpenVINO) and TensorRT engines."""
