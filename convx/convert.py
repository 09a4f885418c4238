"""Drop-in conversion of any nn.Module to convx kernels.

    model = convx.convert(torchvision.models.resnet50())                 # swap layers
    model, report = convx.convert(model, fuse=True, return_report=True)  # + fx fusion

``convert`` replaces every torch.nn layer that convx implements (Conv2d,
ConvTranspose2d, BatchNorm1d/2d/3d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
AdaptiveMaxPool2d) by its convx twin, in place: the twin subclasses the torch
module and takes its place, so the model, its parameter tensors, buffers,
hooks and state_dict keys are the very same objects and only ``forward``
changes. An optimizer built before the conversion keeps training the model
(``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` keeps parameters too).
``inplace=False`` converts a deep copy instead.

``fuse=True`` also rewrites the graph with torch.fx (where the model traces)
and returns the new ``torch.fx.GraphModule``; the converted model itself is
not changed by the fusion:
  * training mode: batch_norm -> (+ residual) -> relu becomes one fused
    convx.BatchNorm2d call (the tail of every ResNet block). The fused batch
    norms share their parameters and running statistics with the model's.
  * eval mode (inference): batch norm directly after a convolution is folded
    into new weights and bias of a copy of the convolution; then
    conv -> relu and conv -> + residual -> relu become one convolution with
    the epilogue in its own pass (convx.Conv2d(activation="relu"),
    torch.ops.convx.conv2d_fused), and any other add -> relu becomes
    convx.AddReLU. Every other parameter is shared.
Models that do not trace are returned converted but unfused (the report says so).
"""
import copy
import operator
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import nn as cnn

_TWINS = {
    nn.Conv2d: cnn.Conv2d,
    nn.ConvTranspose2d: cnn.ConvTranspose2d,
    nn.BatchNorm1d: cnn.BatchNorm1d,
    nn.BatchNorm2d: cnn.BatchNorm2d,
    nn.BatchNorm3d: cnn.BatchNorm3d,
    nn.MaxPool2d: cnn.MaxPool2d,
    nn.AvgPool2d: cnn.AvgPool2d,
    nn.AdaptiveAvgPool2d: cnn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d: cnn.AdaptiveMaxPool2d,
}


def convert(model: nn.Module, fuse: bool = False, inplace: bool = True, return_report: bool = False,
            sync_bn: bool = False, process_group=None) -> Union[nn.Module, Tuple[nn.Module, List[str]]]:
    """Swap ``model``'s layers for convx's in place and return it (with
    ``inplace=False``: a converted deep copy; with ``fuse=True``: a fused
    GraphModule over the converted model); with ``return_report=True`` also a
    list of what was replaced or fused. ``sync_bn=True`` makes every batch norm
    (torch's or convx's, 1d/2d/3d) a :class:`convx.SyncBatchNorm` over
    ``process_group`` (default: the whole world), keeping its tensors and a
    fused ReLU."""
    if not inplace:
        model = copy.deepcopy(model)
    report: List[str] = []
    for name, m in model.named_modules():
        if sync_bn and isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) is not cnn.SyncBatchNorm:
            src = type(m)
            cnn.SyncBatchNorm.adopt(m, process_group)
            origin = "convx" if src.__module__.startswith("convx") else "torch.nn"
            report.append(f"{name or '<root>'}: {origin}.{src.__name__} -> convx.SyncBatchNorm")
            continue
        twin = _TWINS.get(type(m))  # exact types: convx modules and other subclasses stay as they are
        if twin is None:
            continue
        m.__class__ = twin
        if issubclass(twin, (cnn._BatchNormTail, cnn.Conv2d)):
            m.activation = None
        report.append(f"{name or '<root>'}: torch.nn.{twin.__name__} -> convx.{twin.__name__}")
    if fuse:
        model = _fuse(model, report)
    return (model, report) if return_report else model


# ---------------------------------------------------------------- fx fusion


def _is_relu(node, mods):
    if node.op == "call_module":
        return isinstance(mods.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_add(node):
    if node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add):
        return len(node.args) == 2 and not node.kwargs
    return node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2 and not node.kwargs


def _module_node(node, mods, cls):
    return node.op == "call_module" and isinstance(mods.get(node.target), cls)


def _fusable_conv(node, mods, gm):
    """A convx.Conv2d call whose output feeds one op only, with no epilogue yet."""
    return (isinstance(node, torch.fx.Node) and _module_node(node, mods, cnn.Conv2d) and _single_use(node)
            and _uses(gm, node.target) == 1 and len(node.args) == 1 and not node.kwargs
            and getattr(mods[node.target], "activation", None) is None)


def _single_use(node):
    return len(node.users) == 1


def _uses(gm, target):
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target)


class _Tracer(torch.fx.Tracer):
    """convx modules are leaves: the graph calls them, it does not look inside."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__module__.startswith("convx.") or super().is_leaf_module(m, qualname)


def _install(gm: torch.fx.GraphModule, mods: dict, target: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``target`` in the GraphModule only (its containers are
    its own: fx copies the path to each called module, not the model's)."""
    parent, _, field = target.rpartition(".")
    setattr(gm.get_submodule(parent), field, new)
    mods[target] = new
    return new


def _fuse(model: nn.Module, report: List[str]) -> nn.Module:
    try:
        graph = _Tracer().trace(model)
        gm = torch.fx.GraphModule(model, graph, model.__class__.__name__)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "leave it unfused"
        report.append(f"fuse: not traceable by torch.fx ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                      "layers converted, graph not fused")
        return model
    mods = dict(gm.named_modules())
    graph = gm.graph
    gm.train(model.training)
    if model.training:
        for node in list(graph.nodes):
            if not _is_relu(node, mods):
                continue
            src = node.args[0]
            if _module_node(src, mods, cnn.BatchNorm2d) and _single_use(src) and _uses(gm, src.target) == 1 \
                    and mods[src.target].activation is None:
                _install(gm, mods, src.target, cnn.shallow_clone(mods[src.target])).activation = "relu"
                node.replace_all_uses_with(src)
                graph.erase_node(node)
                report.append(f"fuse: {src.target} -> relu as one kernel (bn+relu)")
                continue
            if not (_is_add(src) and _single_use(src)):
                continue
            a, b = src.args
            for bn_node, other in ((a, b), (b, a)):
                if isinstance(bn_node, torch.fx.Node) and _module_node(bn_node, mods, cnn.BatchNorm2d) and \
                        _single_use(bn_node) and _uses(gm, bn_node.target) == 1 and \
                        mods[bn_node.target].activation is None:
                    _install(gm, mods, bn_node.target, cnn.shallow_clone(mods[bn_node.target])).activation = "relu"
                    with graph.inserting_before(node):
                        fused = graph.call_module(bn_node.target, (bn_node.args[0], other))
                    node.replace_all_uses_with(fused)
                    graph.erase_node(node)
                    graph.erase_node(src)
                    graph.erase_node(bn_node)
                    report.append(f"fuse: {bn_node.target} -> + residual -> relu as one kernel (bn+add+relu)")
                    break
    else:
        for node in list(graph.nodes):
            if not _module_node(node, mods, cnn.BatchNorm2d) or _uses(gm, node.target) != 1:
                continue
            bn = mods[node.target]
            conv_node = node.args[0]
            if bn.activation is not None or not bn.track_running_stats or not isinstance(conv_node, torch.fx.Node):
                continue
            if not (_module_node(conv_node, mods, cnn.Conv2d) and _single_use(conv_node)
                    and _uses(gm, conv_node.target) == 1):
                continue
            conv = _install(gm, mods, conv_node.target, cnn.shallow_clone(mods[conv_node.target]))
            _fold_bn_into_conv(conv, bn)
            node.replace_all_uses_with(conv_node)
            graph.erase_node(node)
            report.append(f"fold: {node.target} into {conv_node.target} (eval)")
        relu_id = 0
        for node in list(graph.nodes):
            if not _is_relu(node, mods):
                continue
            src = node.args[0]
            if _fusable_conv(src, mods, gm):
                _install(gm, mods, src.target, cnn.shallow_clone(mods[src.target])).activation = "relu"
                node.replace_all_uses_with(src)
                graph.erase_node(node)
                report.append(f"fuse: {src.target} -> relu as one kernel (conv+bias+relu)")
                continue
            if not _is_add(src) or not _single_use(src):
                continue
            if not all(isinstance(t, torch.fx.Node) for t in src.args):
                continue
            a, b = src.args
            conv_node = a if _fusable_conv(a, mods, gm) else b if _fusable_conv(b, mods, gm) else None
            if conv_node is not None:
                other = b if conv_node is a else a
                _install(gm, mods, conv_node.target, cnn.shallow_clone(mods[conv_node.target])).activation = "relu"
                with graph.inserting_before(node):
                    fused = graph.call_module(conv_node.target, (conv_node.args[0], other))
                node.replace_all_uses_with(fused)
                graph.erase_node(node)
                graph.erase_node(src)
                graph.erase_node(conv_node)
                report.append(f"fuse: {conv_node.target} -> + residual -> relu as one kernel (conv+bias+add+relu)")
                continue
            name = f"convx_add_relu_{relu_id}"
            relu_id += 1
            gm.add_submodule(name, cnn.AddReLU())
            with graph.inserting_before(node):
                fused = graph.call_module(name, tuple(src.args))
            node.replace_all_uses_with(fused)
            graph.erase_node(node)
            graph.erase_node(src)
            report.append(f"fuse: add -> relu as one kernel ({name})")
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


@torch.no_grad()
def _fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """w' = w * gamma / sqrt(var + eps); b' = (b - mean) * gamma / sqrt(var + eps) + beta,
    as new parameters of ``conv`` (the tensors it had are left as they were)."""
    # in float64, rounded once into the convolution's dtype
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.affine:
        shift = shift + bn.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    w = conv.weight
    conv.weight = nn.Parameter((w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype), requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(shift.to(w.dtype), requires_grad=w.requires_grad)
