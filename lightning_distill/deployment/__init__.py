"""Taking a trained model out of Lightning: one graph from raw YouTube-8M frames to class probabilities
(``network``), written as ONNX or TorchScript with its metadata and checked against the Lightning module on
export (``export``), and scored on a store or TFRecords without Lightning (``scoring``)."""
