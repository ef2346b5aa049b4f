"""The workflow's stages as plain functions of paths and values, one module per stage family,
so each runs the same under Snakemake (through its thin adapter in ``scripts/``), from a test
or from a notebook: ``download``; ``encode`` and ``robustness`` (GPU-tagged, they load a
model); ``scores`` (similarity, hits, compare, queries); ``distributions`` (histogram)."""
