"""np-mirror on a Ray cluster (the optional extra `np-mirror[ray]`).

The single-machine engine stays the default and the reference: every distributed result is
the local result, computed elsewhere. Ray is imported inside the functions that need it, so
importing this package (or `npclient`) never loads it.

- `ray_allpairs`: `all_pairs_topk` with its symmetric block pairs spread over actors that keep
  the decoder resident (one per GPU, else one per CPU), merged with `merge_topk`; any dtype
  the local engine takes (bfloat16/float16 select in low precision, rescored in float32).
- `ray_match`: many cross-source matches (`topk_cosine`), one call per pair on the same workers.
"""

from __future__ import annotations

from .allpairs import ray_allpairs
from .match import MatchJob, ray_match

__all__ = ["MatchJob", "ray_allpairs", "ray_match"]
