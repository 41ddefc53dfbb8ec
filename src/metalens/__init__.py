"""metalens: read what a language model is thinking, from its activations."""

__version__ = "0.1.0"

from .capture import Activations, capture  # noqa: E402
from .features import Explanation, Feature  # noqa: E402
from .intervene import ablate, add, clamp, edit, replace  # noqa: E402
from .models import Subject, load_subject, subject_from  # noqa: E402
from .results import ResultsDB  # noqa: E402
from .sites import Site, parse_site  # noqa: E402
from .store import ActivationStore, capture_to_store  # noqa: E402

__all__ = [
    "Activations", "ActivationStore", "Explanation", "Feature", "ResultsDB", "Site", "Subject",
    "ablate", "add", "capture", "capture_to_store", "clamp", "edit", "load_subject", "parse_site",
    "replace", "subject_from",
]
