"""ResNets of He et al. 2016: blocks, one ResNet class, the registry of named builders, weights
(loading any layout, and the published weights by name)."""
from . import zoo  # noqa: F401  (the module that defines and registers every named builder)
from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from .hub import load_pretrained
from .pretrained import PretrainedWeights, get_weights, list_weights
from .profile import Profile, count_macs, count_params, profile
from .registry import ModelInfo, create_model, list_models, model_info, register_model
from .resnet import ResNet, cifar_resnet, imagenet_resnet
from .weights import LoadReport, load_weights, read_state_dict, save_safetensors

__all__ = [
    "BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck", "ResNet", "cifar_resnet",
    "imagenet_resnet", "create_model", "list_models", "model_info", "register_model", "ModelInfo",
    "load_weights", "read_state_dict", "save_safetensors", "LoadReport", "profile", "Profile",
    "count_params", "count_macs", "PretrainedWeights", "get_weights", "list_weights", "load_pretrained",
]
