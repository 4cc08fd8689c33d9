from kdlens.explain import cam  # noqa: F401
from kdlens.explain.api import explain, explain_dataset, make_explainer
from kdlens.explain.base import EXPLAINERS
