"""Model components: activation functions (and, as they land, recurrence operators,
connection adapters, retina, losses and the model zoo)."""

from dynode.models.activations import ACTIVATIONS, RectifiedPower, Supralinear, get_activation

__all__ = ["ACTIVATIONS", "RectifiedPower", "Supralinear", "get_activation"]
