"""Run exported models without torch: ONNX bundles (``clipforge export``) through ONNX Runtime.

``OnnxEncoder(DIR)`` gives ``encode_image`` / ``encode_text`` / ``preprocess`` / ``tokenize`` over numpy arrays;
``read_bundle(DIR)`` reads and verifies a bundle's manifest. Importing this package imports neither torch nor
torchvision (a test checks it): numpy, Pillow, tokenizers and onnxruntime are enough.
"""
from clipforge.runtime.bundle import MANIFEST, Bundle, BundleError, read_bundle
from clipforge.runtime.encoder import PROVIDER_ORDER, OnnxEncoder, choose_providers

__all__ = ["OnnxEncoder", "Bundle", "BundleError", "read_bundle", "choose_providers", "MANIFEST", "PROVIDER_ORDER"]
