"""Lets plain ``transformers`` ``from_pretrained`` restore pts_hf bitmask checkpoints while pts_hf is imported.

A bitmask checkpoint's ``config.json`` carries ``quantization_config = {"quant_method": "pts_hf_bitmask"}``; we
register a quantization config and an ``HfQuantizer`` for that method whose load operation rebuilds each dense
weight from ``weight`` (non-zero values), ``weight_bitmask`` and ``weight_shape``. Without pts_hf the method is
unknown to transformers and the value tensors' shapes do not match the model, so loading fails loudly.

``import pts_hf`` must not import transformers, so :func:`install_import_hook` registers the plugin right after
transformers is imported (or at once if it already is).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from typing import Any, ClassVar

__all__ = ["install_import_hook", "register"]

_REGISTERED = False


def register() -> None:
    """Register the ``pts_hf_bitmask`` quantization config and quantizer with transformers (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers.core_model_loading import ConversionOps
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
    )
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    from pts_hf.checkpoint.bitmask import unpack
    from pts_hf.checkpoint.io import BITMASK_QUANT_METHOD

    class PTSBitmaskConfig(QuantizationConfigMixin):
        def __init__(self, format_version: int = 1, **kwargs: Any):
            self.quant_method = BITMASK_QUANT_METHOD
            self.format_version = format_version

        def to_dict(self) -> dict[str, Any]:
            return {"quant_method": self.quant_method, "format_version": self.format_version}

    class BitmaskDeserialize(ConversionOps):
        def __init__(self, hf_quantizer: Any):
            self.hf_quantizer = hf_quantizer

        def convert(self, input_dict: dict[str, Any], full_layer_name: str | None = None, **kwargs: Any):
            def first(key: str) -> Any:
                for k, v in input_dict.items():
                    if k == key or k.endswith("." + key) or k.endswith(key):
                        return v[0] if isinstance(v, list) else v
                return None

            mask, shape = first("weight_bitmask"), first("weight_shape")
            values = next((v[0] if isinstance(v, list) else v for k, v in input_dict.items()
                           if not k.endswith(("_bitmask", "_shape"))), None)
            if mask is None or shape is None:  # an uncompressed weight
                return {full_layer_name: values}
            return {full_layer_name: unpack(full_layer_name or "weight", values, mask, shape)}

    class PTSBitmaskQuantizer(HfQuantizer):
        requires_calibration = False
        serialized_names: ClassVar[dict[str, list[str]]] = {"weight": ["weight", "weight_bitmask", "weight_shape"]}

        def get_load_operations(self) -> dict:
            return {"deserialize": BitmaskDeserialize, "dequantize": BitmaskDeserialize}

        def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> None:
            return None

        def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> None:
            return None

        def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
            return False  # save with pts_hf.save_sparse(..., format="bitmask")

        @property
        def is_trainable(self) -> bool:
            return True

    AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault(BITMASK_QUANT_METHOD, PTSBitmaskConfig)
    AUTO_QUANTIZER_MAPPING.setdefault(BITMASK_QUANT_METHOD, PTSBitmaskQuantizer)
    _REGISTERED = True


def _register_or_warn() -> None:
    """Never break `import transformers`: say so and fall back to pts_hf.load_sparse."""
    try:
        register()
    except Exception as e:
        warnings.warn(f"pts_hf could not register its transformers plugin ({type(e).__name__}: {e}); bitmask "
                      "checkpoints still load with pts_hf.load_sparse", stacklevel=2)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        _register_or_warn()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot: find the real spec without ourselves in the way
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install_import_hook() -> None:
    """Register now if transformers is imported, else right after it is."""
    if "transformers" in sys.modules:
        _register_or_warn()
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
