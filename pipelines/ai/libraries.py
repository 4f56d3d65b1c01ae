"""The local AI provider's libraries (the `local-ai` extra): whether this process has them, and the error when not.

The local provider classifies with `lingua` (language), `vaderSentiment` (English sentiment) and `numpy` (the
similarity to each category's examples, the tenant's trained model), and trains with `scikit-learn` (and its
`scipy`). They take about 370 MB installed and, loaded, about 35 MB a process to classify (90 MB more to
train); the ingress, the admin API, the clock and an ingest worker never need them, and a fleet whose tenants
use a hosted provider needs them nowhere.
So they are an extra (`pip install 'intake[local-ai]'`, which `make run` and `make test` install), imported
only where they are used, and a process without them refuses the local provider's work with `LocalAIMissing`:
a refusal (501) at the admin API and the CLI, a permanent failure (one ledger row, replayable once the extra is
installed or the tenant moved to a hosted provider) in a worker. What stays without them: the hosted providers,
the local embedder and drafts (pure Python), and the language evidence around a message (the detector's own
vote is skipped).

Whether a library is there is asked of the import system (`find_spec`), which imports nothing: the question
is cheap enough for a process's start-up check (`intake worker`, `intake run` log what is missing).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable

from pipelines.errors import Refusal

EXTRA = "local-ai"
# The import names of what each part of the local provider needs.
CLASSIFY = ("numpy", "lingua", "vaderSentiment")
TRAIN = ("numpy", "scipy", "sklearn")
DETECT = ("lingua",)
EVERY = ("numpy", "lingua", "vaderSentiment", "scipy", "sklearn")


class LocalAIMissing(Refusal):
    """The local provider's work asked of a process without its libraries (the `local-ai` extra)."""

    status, code = 501, "local_ai_not_installed"

    def __init__(self, what: str, missing: Iterable[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(f"{what} by the local AI provider needs {', '.join(self.missing)}, not installed in this "
                         f"process: install Intake with the `{EXTRA}` extra (pip install 'intake[{EXTRA}]'), or give "
                         f"the tenant a hosted provider")


def missing(modules: Iterable[str] = EVERY) -> list[str]:
    """The modules of `modules` that this process cannot import, in order; imports none of them."""
    absent = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a finder that refuses the name; a module without a spec
            found = False
        if not found:
            absent.append(name)
    return absent


def require(what: str, modules: Iterable[str]) -> None:
    """Raise `LocalAIMissing` naming `what` when any of `modules` is missing (asked per message: once they are
    imported, the answer is a dictionary lookup)."""
    if all(name in sys.modules for name in modules):
        return
    absent = missing(modules)
    if absent:
        raise LocalAIMissing(what, absent)
