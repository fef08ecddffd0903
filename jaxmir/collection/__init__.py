"""Collections: folders of audio in, one resumable row per file out (Parquet, JSON lines, CSV,
.npy).

:func:`collect` runs a model over files, folders and ``@lists``; the local
engine decodes in worker threads (or processes) while the model runs, the Ray engine
(:mod:`jaxmir.collection.ray_engine`) spreads both over a cluster.
"""

from typing import TYPE_CHECKING

from jaxmir import lazy

if TYPE_CHECKING:
    from jaxmir.collection.arguments import add_collection_options
    from jaxmir.collection.commands import collect, run_embed, run_tag
    from jaxmir.collection.compute import Options

__all__ = ["collect", "Options", "add_collection_options", "run_tag", "run_embed"]

# Loaded at first use: the command line's parser takes its options without loading JAX.
__getattr__, __dir__ = lazy.attributes(
    __name__, {"collect": "jaxmir.collection.commands", "run_tag": "jaxmir.collection.commands",
               "run_embed": "jaxmir.collection.commands", "Options": "jaxmir.collection.compute",
               "add_collection_options": "jaxmir.collection.arguments"}, __all__)
