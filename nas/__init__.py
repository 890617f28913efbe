"""tinynas: hardware-aware NAS and INT8 compression for tiny vision models.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` before anything imports TensorFlow: tfmot's
quantization-aware training only accepts ``tf_keras`` (Keras 2) models, never Keras 3 ones (STACK.md).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
