"""Shapes through a network: spatial extent, width and Gaussianity after every layer.

``trace(spec, input_shape)`` walks the layers (branches included) from the input's shape
``(spatial..., channels)`` — ``(d,)`` for ``n × d`` inputs, ``(L, C)`` or ``(H, W, C)`` for
convolutional ones — and raises ``ValueError`` naming the layer (``layers[2]``,
``layers[4].branches[0][1]``) for a network that does not fit its input or that
neural-tangents refuses:

- ``conv``/pooling need as many spatial axes as ``filter_shape``/``window_shape`` entries, and
  a ``VALID`` window no larger than its input;
- the network must end without spatial axes (flatten or a global pool; both are the identity on
  ``n × d`` representations), so that every kernel is ``n1 × n2``;
- activations, ``layer_norm`` and the ``sum`` merge need Gaussian inputs (neural-tangents'
  ``is_gaussian``): the input itself is not Gaussian, a ``dense``/``conv`` output is, a
  nonlinearity's, ``flatten``'s and a ``product``'s are not; pooling, global pooling,
  ``layer_norm``, ``identity`` and a ``sum`` of Gaussians keep it;
- merges add (``sum``) or multiply (``product``) the branch kernels, which is exact only for
  independent branches: all but at most one branch must draw weights of their own (a dense or
  conv layer), as in residual blocks. neural-tangents accepts ``[[], []]`` or
  ``[[avg_pool], []]`` and returns the kernel of independent branches (``2K`` for ``z + z``, whose
  kernel is ``4K``); here they are refused.
- branches must agree in spatial shape and (when known) width;
- under ``standard`` parameterization the fan-in of every ``dense``/``conv`` must be known
  (the ``width`` of the previous one).

Output sizes follow ``lax``/neural-tangents: ``VALID`` ``⌊(n − f)/s⌋ + 1``; ``SAME`` and
``CIRCULAR`` ``⌈n/s⌉`` with ``max((out − 1)·s + f − n, 0)`` padding, the smaller half first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from core.kernels import spec as S


@dataclass(frozen=True, slots=True)
class Shape:
    """The representation between two layers: ``spatial`` extent, channel ``width`` (``None``:
    unknown, which only standard parameterization needs) and whether it is Gaussian."""

    spatial: tuple[int, ...]
    width: int | None
    gaussian: bool = False

    @property
    def positions(self) -> int:
        return math.prod(self.spatial)


def window_geometry(size: int, window: int, stride: int, padding: str) -> tuple[int, int, int]:
    """``(out, pad_lo, pad_hi)`` of one spatial axis (raises for a VALID window larger than ``size``)."""
    if padding == "VALID":
        if window > size:
            raise ValueError(f"a window of {window} does not fit an input of {size} with VALID padding")
        return (size - window) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return out, total // 2, total - total // 2


def _spatial_args(shape: Shape, window: tuple[int, ...], strides: tuple[int, ...] | None, what: str, where: str,
                  padding: str, default_strides: tuple[int, ...]) -> tuple[int, ...]:
    if not shape.spatial:
        raise ValueError(f"{where}: {what} needs inputs with spatial axes (n × L × C or n × H × W × C), "
                         "but this representation has none (n × d input, or after flatten/global pooling)")
    if len(window) != len(shape.spatial):
        raise ValueError(f"{where}: {len(window)} window entries for {len(shape.spatial)} spatial axes "
                         f"(shape {list(shape.spatial)})")
    strides = default_strides if strides is None else strides
    if len(strides) != len(shape.spatial):
        raise ValueError(f"{where}: {len(strides)} strides for {len(shape.spatial)} spatial axes")
    out = []
    for size, f, s in zip(shape.spatial, window, strides):
        try:
            out.append(window_geometry(size, f, s, padding)[0])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc} (spatial shape {list(shape.spatial)})") from None
    return tuple(out)


def _fan_in(shape: Shape, parameterization: str, where: str, factor: int = 1) -> None:
    if parameterization == "standard" and shape.width is None:
        raise ValueError(f"{where}: standard parameterization needs this layer's fan-in; set `width` on the "
                         "dense/conv layer before it")


def step(shape: Shape, layer: S.Layer, parameterization: str, where: str) -> Shape:
    """The shape after ``layer``."""
    if isinstance(layer, S.Dense):
        _fan_in(shape, parameterization, where)
        return Shape(shape.spatial, layer.width, True)
    if isinstance(layer, S.Conv):
        spatial = _spatial_args(shape, layer.filter_shape, layer.strides, "conv", where, layer.padding,
                                (1,) * len(layer.filter_shape))
        _fan_in(shape, parameterization, where)
        return Shape(spatial, layer.width, True)
    if isinstance(layer, (S.AvgPool, S.SumPool)):
        name = "avg_pool" if isinstance(layer, S.AvgPool) else "sum_pool"
        spatial = _spatial_args(shape, layer.window_shape, layer.strides, name, where, layer.padding,
                                layer.window_shape)
        return replace(shape, spatial=spatial)
    if isinstance(layer, (S.GlobalAvgPool, S.GlobalSumPool)):  # the identity without spatial axes
        return replace(shape, spatial=())
    if isinstance(layer, S.Flatten):  # positions of different variances: no longer one Gaussian kernel
        width = None if shape.width is None else shape.width * shape.positions
        return Shape((), width, False)
    if isinstance(layer, S.LayerNorm):
        if not shape.gaussian:
            raise ValueError(f"{where}: layer_norm needs Gaussian inputs (put it after a dense or conv layer, "
                             "not after a nonlinearity or on the raw input), as in neural-tangents")
        return shape
    if isinstance(layer, S.Activation):
        if layer.name == "identity":
            return shape
        if not shape.gaussian:
            raise ValueError(f"{where}: an activation needs Gaussian inputs: put a dense or conv layer before it "
                             "(not the raw input, another nonlinearity, flatten or a product merge), as in "
                             "neural-tangents")
        return replace(shape, gaussian=False)
    if isinstance(layer, S.Branches):
        outs = [trace_layers(branch, shape, parameterization, f"{where}.branches[{b}]")
                for b, branch in enumerate(layer.branches)]
        first = outs[0]
        for b, out in enumerate(outs[1:], 1):
            if out.spatial != first.spatial:
                raise ValueError(f"{where}: branch {b} ends with spatial shape {list(out.spatial)}, branch 0 with "
                                 f"{list(first.spatial)}: branches must agree to be merged")
            if out.width is not None and first.width is not None and out.width != first.width:
                raise ValueError(f"{where}: branch {b} ends with width {out.width}, branch 0 with {first.width}: "
                                 "branches must agree to be merged")
        shared = [b for b, branch in enumerate(layer.branches) if not fresh_weights(branch)]
        if len(shared) > 1:
            raise ValueError(f"{where}: branches {shared} carry the same randomness (none has a dense or conv "
                             "layer of its own), so they are not independent and merging them has no kernel of "
                             "this form; neural-tangents would silently treat them as independent. Give all but one "
                             "branch a dense or conv layer (a residual block: [[..., dense], []])")
        if layer.merge == "sum" and len(outs) > 1 and not all(o.gaussian for o in outs):
            bad = [b for b, o in enumerate(outs) if not o.gaussian]
            raise ValueError(f"{where}: a sum merge needs Gaussian branch outputs (each branch ending in a "
                             f"dense/conv layer, or an identity branch on a Gaussian input); branch(es) {bad} are "
                             "not, as neural-tangents refuses")
        width = next((o.width for o in outs if o.width is not None), None)
        gaussian = all(o.gaussian for o in outs) and (layer.merge == "sum" or len(outs) == 1)
        return Shape(first.spatial, width, gaussian)
    raise ValueError(f"{where}: not a layer: {layer!r}")


def fresh_weights(layers: Sequence[S.Layer]) -> bool:
    """Whether a branch draws weights of its own (a dense/conv layer, or nested branches that all
    do): then, in the infinite-width limit, it is independent of its sibling branches."""
    return any(isinstance(layer, (S.Dense, S.Conv))
               or (isinstance(layer, S.Branches) and all(fresh_weights(b) for b in layer.branches))
               for layer in layers)


def trace_layers(layers: Sequence[S.Layer], shape: Shape, parameterization: str, where: str = "layers") -> Shape:
    """The shape after ``layers`` applied to ``shape``."""
    for i, layer in enumerate(layers):
        shape = step(shape, layer, parameterization, f"{where}[{i}]")
    return shape


def input_shape(spec: S.Network, feature_shape: Sequence[int]) -> Shape:
    """The shape of inputs whose rows have ``feature_shape`` (``(d,)``, ``(L, C)``, ``(H, W, C)``)."""
    dims = tuple(int(v) for v in feature_shape)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"inputs must be n × d, n × L × C or n × H × W × C, got rows of shape {list(dims)}")
    return Shape(dims[:-1], dims[-1], False)


def trace(spec: S.Network, feature_shape: Sequence[int]) -> Shape:
    """Check that ``spec`` fits inputs with rows of ``feature_shape``; its output shape."""
    out = trace_layers(spec.layers, input_shape(spec, feature_shape), spec.parameterization)
    if out.spatial:
        raise ValueError(f"the network ends with spatial axes {list(out.spatial)}: reduce them with flatten or a "
                         "global pool so that every kernel is n1 × n2")
    return out


def is_chain(spec: S.Network) -> bool:
    """True for fully connected chains of dense layers and activations (the fused engine's networks)."""
    return all(isinstance(layer, S.CHAIN_LAYERS) for layer in spec.layers)
