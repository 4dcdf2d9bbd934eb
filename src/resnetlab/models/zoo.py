"""Every registered network, one line each (names as in the paper and torchvision)."""
from __future__ import annotations

from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from .registry import register_model
from .resnet import cifar_resnet, imagenet_resnet

# ImageNet nets (Table 1). Plain twins share every layer but the shortcuts (Fig. 3, Table 2).
@register_model("imagenet", 18)
def resnet18(**kw): return imagenet_resnet(BasicBlock, [2, 2, 2, 2], **kw)

@register_model("imagenet", 34)
def resnet34(**kw): return imagenet_resnet(BasicBlock, [3, 4, 6, 3], **kw)

@register_model("imagenet", 50)
def resnet50(**kw): return imagenet_resnet(Bottleneck, [3, 4, 6, 3], **kw)

@register_model("imagenet", 101)
def resnet101(**kw): return imagenet_resnet(Bottleneck, [3, 4, 23, 3], **kw)

@register_model("imagenet", 152)
def resnet152(**kw): return imagenet_resnet(Bottleneck, [3, 8, 36, 3], **kw)

@register_model("imagenet", 18, residual=False)
def plain18(**kw): return imagenet_resnet(BasicBlock, [2, 2, 2, 2], residual=False, **kw)

@register_model("imagenet", 34, residual=False)
def plain34(**kw): return imagenet_resnet(BasicBlock, [3, 4, 6, 3], residual=False, **kw)

@register_model("imagenet", 50, residual=False)
def plain50(**kw): return imagenet_resnet(Bottleneck, [3, 4, 6, 3], residual=False, **kw)

@register_model("imagenet", 101, residual=False)
def plain101(**kw): return imagenet_resnet(Bottleneck, [3, 4, 23, 3], residual=False, **kw)

@register_model("imagenet", 152, residual=False)
def plain152(**kw): return imagenet_resnet(Bottleneck, [3, 8, 36, 3], residual=False, **kw)

# Pre-activation ImageNet nets (He et al., "Identity Mappings in Deep Residual Networks").
@register_model("imagenet", 18, preact=True)
def preact_resnet18(**kw): return imagenet_resnet(PreActBasicBlock, [2, 2, 2, 2], **kw)

@register_model("imagenet", 34, preact=True)
def preact_resnet34(**kw): return imagenet_resnet(PreActBasicBlock, [3, 4, 6, 3], **kw)

@register_model("imagenet", 50, preact=True)
def preact_resnet50(**kw): return imagenet_resnet(PreActBottleneck, [3, 4, 6, 3], **kw)

@register_model("imagenet", 101, preact=True)
def preact_resnet101(**kw): return imagenet_resnet(PreActBottleneck, [3, 4, 23, 3], **kw)

@register_model("imagenet", 152, preact=True)
def preact_resnet152(**kw): return imagenet_resnet(PreActBottleneck, [3, 8, 36, 3], **kw)

# CIFAR nets (Sec. 4.2, Table 6): 6n+2 layers; any other 6n+2 depth: cifar_resnet(depth).
@register_model("cifar", 20)
def resnet20(**kw): return cifar_resnet(20, **kw)

@register_model("cifar", 32)
def resnet32(**kw): return cifar_resnet(32, **kw)

@register_model("cifar", 44)
def resnet44(**kw): return cifar_resnet(44, **kw)

@register_model("cifar", 56)
def resnet56(**kw): return cifar_resnet(56, **kw)

@register_model("cifar", 110)
def resnet110(**kw): return cifar_resnet(110, **kw)

@register_model("cifar", 1202)
def resnet1202(**kw): return cifar_resnet(1202, **kw)

@register_model("cifar", 20, residual=False)
def plain20(**kw): return cifar_resnet(20, residual=False, **kw)

@register_model("cifar", 32, residual=False)
def plain32(**kw): return cifar_resnet(32, residual=False, **kw)

@register_model("cifar", 44, residual=False)
def plain44(**kw): return cifar_resnet(44, residual=False, **kw)

@register_model("cifar", 56, residual=False)
def plain56(**kw): return cifar_resnet(56, residual=False, **kw)

@register_model("cifar", 110, residual=False)
def plain110(**kw): return cifar_resnet(110, residual=False, **kw)

# Pre-activation CIFAR nets of the Identity Mappings paper (Table 3 there).
@register_model("cifar", 110, preact=True)
def preact_resnet110(**kw): return cifar_resnet(110, preact=True, **kw)

@register_model("cifar", 164, preact=True)
def preact_resnet164(**kw): return cifar_resnet(164, bottleneck=True, preact=True, **kw)

@register_model("cifar", 1001, preact=True)
def preact_resnet1001(**kw): return cifar_resnet(1001, bottleneck=True, preact=True, **kw)
