"""Lets plain ``transformers`` ``from_pretrained`` restore pts_hf checkpoints in compressed formats.

A checkpoint in a format with a ``quant_method`` (bitmask: ``"pts_hf_bitmask"``) carries ``config.json``
``quantization_config = {"quant_method": ...}``; :func:`register` adds a quantization config and an
``HfQuantizer`` for every such format in :data:`pts_hf.checkpoint.formats.FORMATS`, whose load operation rebuilds
each dense weight with the format's ``decode_weight``. Without registration the method is unknown to transformers
and the value tensors' shapes do not match the model, so loading fails loudly.

Registration is explicit (``pts_hf.register_transformers_plugin()``), never a side effect of ``import pts_hf``: it
imports transformers and reaches into its quantizer registry (``transformers.quantizers.auto``), which is not a
public API. :func:`pts_hf.load_sparse` needs none of this.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["register"]

_REGISTERED: set[str] = set()


def register() -> None:
    """Register every compressed format's quantization config and quantizer with transformers (idempotent)."""
    from pts_hf.checkpoint.formats import FORMATS

    for fmt in FORMATS.values():
        if fmt.quant_method and fmt.quant_method not in _REGISTERED:
            _register_format(fmt)
            _REGISTERED.add(fmt.quant_method)


def _register_format(fmt: Any) -> None:
    from transformers.core_model_loading import ConversionOps
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
    )
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    quant_method = fmt.quant_method

    class PTSFormatConfig(QuantizationConfigMixin):
        def __init__(self, format_version: int = 1, **kwargs: Any):
            self.quant_method = quant_method
            self.format_version = format_version

        def to_dict(self) -> dict[str, Any]:
            return {"quant_method": self.quant_method, "format_version": self.format_version}

    class FormatDeserialize(ConversionOps):
        def __init__(self, hf_quantizer: Any):
            self.hf_quantizer = hf_quantizer

        def convert(self, input_dict: dict[str, Any], full_layer_name: str | None = None, **kwargs: Any):
            def first(suffix: str) -> Any:
                for k, v in input_dict.items():
                    if k.endswith(suffix):
                        return v[0] if isinstance(v, list) else v
                return None

            parts = {suf: first(suf) for suf in fmt.suffixes}
            values = next((v[0] if isinstance(v, list) else v for k, v in input_dict.items()
                           if not k.endswith(fmt.suffixes)), None)
            parts = {k: v for k, v in parts.items() if v is not None}
            return {full_layer_name: fmt.decode_weight(full_layer_name or "weight", values, parts)}

    class PTSFormatQuantizer(HfQuantizer):
        requires_calibration = False
        serialized_names: ClassVar[dict[str, list[str]]] = {"weight": ["weight", *("weight" + suf
                                                                                   for suf in fmt.suffixes)]}

        def get_load_operations(self) -> dict:
            return {"deserialize": FormatDeserialize, "dequantize": FormatDeserialize}

        def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> None:
            return None

        def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> None:
            return None

        def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
            return False  # save with pts_hf.save_sparse(..., format=...)

        @property
        def is_trainable(self) -> bool:
            return True

    AUTO_QUANTIZATION_CONFIG_MAPPING.setdefault(quant_method, PTSFormatConfig)
    AUTO_QUANTIZER_MAPPING.setdefault(quant_method, PTSFormatQuantizer)
