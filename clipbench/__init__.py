"""Library behind the CLIP retrieval benchmark workflow.

Each module holds one concern as plain functions; the Snakemake scripts in
``scripts/`` only move ``snakemake.input/output/params`` into these functions.
"""

__version__ = "0.1.0"
