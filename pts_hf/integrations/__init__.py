"""Integrations with other libraries (transformers' Trainer and ``from_pretrained``). Nothing here is imported by
``import pts_hf``; the transformers plugin is registered by calling ``pts_hf.register_transformers_plugin()``."""
