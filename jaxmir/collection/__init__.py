"""Collections: folders of audio in, one resumable row per file out (Parquet, JSON lines, CSV, .npy).

:func:`collect` runs a model over files, folders and ``@lists``; the local
engine decodes in worker processes while the model runs, the Ray engine
(:mod:`jaxmir.collection.ray_engine`) spreads both over a cluster.
"""

from jaxmir.collection.commands import add_collection_options, collect, run_embed, run_tag
from jaxmir.collection.compute import Options

__all__ = ["collect", "Options", "add_collection_options", "run_tag", "run_embed"]
