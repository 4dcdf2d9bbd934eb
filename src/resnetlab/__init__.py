"""resnetlab: Deep Residual Learning for Image Recognition (He et al., CVPR 2016)."""
from resnetlab.api import Classifier, ClassScore, Prediction, load
from resnetlab.errors import UserError
from resnetlab.models import create_model, list_models, load_weights, model_info, profile

__version__ = "0.1.0"
__all__ = ["ClassScore", "Classifier", "Prediction", "create_model", "list_models", "load", "load_weights", "model_info",
           "profile", "UserError", "__version__"]
