"""Integrations with other libraries. Nothing here is imported by ``import pts_hf`` except the post-import hook
that registers the transformers plugin once transformers itself is imported."""
