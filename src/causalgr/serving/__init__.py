"""Serving: rank candidate items for a live request with a trained model (docs/design.md §6).

    from causalgr.serving import Ranker
    ranker = Ranker.from_run("runs/lfa")
    probs = ranker.rank(items=[...], timestamps=[...], labels=[...], candidates=[...], timestamp=t)
"""

from causalgr.serving.history import InvalidInput
from causalgr.serving.ranker import Ranker, Ranking

__all__ = ["InvalidInput", "Ranker", "Ranking"]
