"""KernelWarehouse (KW; Li & Yao, ICML 2024): a conv kernel assembled cell by cell from a
warehouse of kernel cells shared by the layers of a stage.

Each layer's static kernel (O, I/g, kh, kw) is cut into m equal kernel cells ("mixtures"):
``go = O / co`` blocks of output channels, ``gi = (I/g) / ci`` blocks of input channels and
``gs = kh*kw`` spatial taps (with ``spatial_partition``; else one block of the whole k x k).
The warehouse holds n cells of shape (co, ci, 1, 1) (or (co, ci, kh, kw)); per example, every
mixture j of a layer is ``sum_c a[b, j, c] * cell_c`` with its attention ``a`` (B, m, n) from
the contrasting-driven attention function (:class:`WarehouseAttention`). The cell size comes
from the warehouse's layers: ``co = max(int(gcd(O) * cell_outplane_ratio), 1)``, ``ci`` the same
over ``I/g``; ``n = max(int(sum of the layers' m * cell_num_ratio), 1)``.

Use (what a model builder does, as the official ``Warehouse_Manager``)::

    manager = KernelWarehouseManager(cell_num_ratio=4, sharing_range=("layer", "conv"))
    model.warehouse_manager = manager                 # a submodule: the model owns the cells
    conv = manager.reserve(64, 64, 3, padding=1, warehouse_name="stage0_layer1_conv0")
    ...                                               # every layer reserved, model built
    manager.store()                                   # create the warehouses' cells
    manager.allocate(model)                           # attentions + cell init, in module order

State dicts have the official keys (``warehouse_manager.weights.<i>``, ``<layer>.attention.fc1``,
``norm1``, ``fc2``, ``fc3``, ``basis_bias``, ``<layer>.bias``) plus one buffer per layer,
``<layer>.attention.temperature``, which loading tolerates missing; :func:`to_official_state_dict`
drops it for the official modules. The per-example kernels run through
:func:`odconv.ops.cell_conv.cell_conv2d` (``strategy``: ``grouped``, the official algorithm;
``chunked``, what ``auto`` trains with; ``fused``, the memory floor), not through
:func:`odconv.functional.dynamic_conv2d`: that op mixes n whole kernels with one weight per
example, while KW mixes every cell position with its own weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..autotune import forced_strategy
from ..ops.cell_conv import CELL_STRATEGIES, assemble_kernels, auto_cell_strategy, cell_conv2d
from ..ops.primitives import IntPair, conv_output_hw, pair
from .base import init_attention_head, register_temperature

MIN_HIDDEN = 16            # the attention's hidden width is max(int(in_planes * reduction), 16)
L1_EPS = 1e-3              # added to the L1 norm that divides each mixture's logits
PerWarehouse = Union[float, Sequence[float]]


def _per_warehouse(value, count: int, name: str) -> list:
    """A setting given once or once per warehouse, as a list of ``count`` values."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * count
    values = list(value)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ValueError(f"{name}: give one value or one per warehouse ({count}), got {len(values)}")
    return values


def assign_initial_cells(num_mixtures: int, num_cells: int, start_cell: int,
                       cell_num_ratio: float) -> tuple[Tensor, int]:
    """The temperature-bias one-hot rows of a layer, (m, n + 1), and the next free cell.

    ``cell_num_ratio >= 1``: mixture j gets cell ``start + j * int(ratio)`` (the layer claims
    ``int(ratio) * m`` cells). ``< 1``: with ``k = int(1 / ratio)``, mixture j gets the next
    free cell when ``j % k == (j // k) % k`` and the zero cell (column n) otherwise.
    """
    rows = torch.zeros(num_mixtures, num_cells + 1)
    cell = start_cell
    per_mixture = int(cell_num_ratio) if cell_num_ratio >= 1 else 0
    sharing = int(1.0 / cell_num_ratio) if cell_num_ratio < 1 else 1
    for j in range(num_mixtures):
        if per_mixture or j % sharing == (j // sharing) % sharing:
            if cell >= num_cells:
                raise ValueError(f"the warehouse's {num_cells} cells run out at mixture {j} of a layer: "
                                 f"cell_num_ratio={cell_num_ratio} does not split these layers evenly")
            rows[j, cell] = 1.0
            cell += per_mixture or 1
        else:
            rows[j, num_cells] = 1.0
    return rows, cell


class WarehouseAttention(nn.Module):
    """The contrasting-driven attention function of one layer: (B, I, H, W) -> (B, m, n).

    GAP -> ``fc1`` (I -> hidden, no bias) -> ``norm1`` (BatchNorm1d) -> ReLU -> ``fc2``: per
    mixture n + 1 logits (the last one a "zero cell"), each row divided by its L1 norm + 1e-3,
    then blended with the layer's initial one-hot assignment,
    ``(1 - t) * a + t * initial_assignment`` (t, ``temperature``, goes 1 -> 0 in training); the
    zero cell is dropped. With ``nonlocal_basis_ratio < 1``, ``fc2`` (no bias) gives per mixture
    the logits of the layer's own L = int(ratio * m) cells, of ``nb = max(int((n - L) *
    nonlocal_basis_ratio), 16)`` basis cells and of the zero cell; ``fc3`` (nb -> n - L) maps the
    basis to the other cells; ``basis_bias`` (m * (n + 1)) is added.

    Batch size 1 in training: BatchNorm1d has no batch statistics of one value (the official
    module raises); the head then normalises with its running statistics, as in eval mode,
    and leaves them unchanged (as :class:`odconv.layers.ODConv2d`).
    """

    def __init__(self, in_planes: int, reduction: float, num_cells: int, num_mixtures: int, start_cell: int,
                 cell_num_ratio: float, nonlocal_basis_ratio: float = 1.0) -> None:
        super().__init__()
        self.hidden_planes = max(int(in_planes * reduction), MIN_HIDDEN)
        self.num_cells, self.num_mixtures, self.start_cell = num_cells, num_mixtures, start_cell
        self.num_local_cells = int(cell_num_ratio * num_mixtures)
        self.num_nonlocal_cells = num_cells - self.num_local_cells
        self.uses_basis = nonlocal_basis_ratio < 1.0
        logits_per_mixture = num_cells + 1
        # Creation order as the official module (fc1, norm1, fc2, fc3): a seeded layer starts
        # from the same numbers.
        self.fc1 = nn.Linear(in_planes, self.hidden_planes, bias=False)
        self.norm1 = nn.BatchNorm1d(self.hidden_planes)
        if self.uses_basis:
            self.num_basis = max(int(self.num_nonlocal_cells * nonlocal_basis_ratio), MIN_HIDDEN)
            logits_per_mixture = self.num_local_cells + self.num_basis + 1
            self.fc2 = nn.Linear(self.hidden_planes, logits_per_mixture * num_mixtures, bias=False)
            self.fc3 = nn.Linear(self.num_basis, self.num_nonlocal_cells, bias=False)
            self.basis_bias = nn.Parameter(torch.zeros(num_mixtures * (num_cells + 1)))
        else:
            self.fc2 = nn.Linear(self.hidden_planes, logits_per_mixture * num_mixtures, bias=True)
        assignment, self.end_cell = assign_initial_cells(num_mixtures, num_cells, start_cell, cell_num_ratio)
        self.register_buffer("initial_assignment", assignment, persistent=False)      # (m, n + 1)
        register_temperature(self, 0.0)                           # the official starts at 0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_attention_head(self, weighted=(nn.Linear,), norms=(nn.BatchNorm1d,))

    def update_temperature(self, temperature: float) -> None:
        """Set the blend weight t of the initial assignment, 0 <= t <= 1."""
        if not 0.0 <= temperature <= 1.0:
            raise ValueError(f"KernelWarehouse temperature must be in [0, 1], got {temperature}")
        self.temperature.fill_(float(temperature))

    def _normalize(self, z: Tensor) -> Tensor:
        if self.training and z.shape[0] == 1:
            bn = self.norm1
            return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return self.norm1(z)

    def _cell_logits_from_basis(self, logits: Tensor) -> Tensor:
        """fc2's (B, m * (L + nb + 1)) -> (B, m, n + 1): own cells in place, the others from the basis."""
        batch, local = logits.shape[0], self.num_local_cells
        rows = logits.view(batch, self.num_mixtures, -1)
        nonlocal_cells = self.fc3(rows[..., local:-1])
        start = self.start_cell
        cells = torch.cat([nonlocal_cells[..., :start], rows[..., :local], nonlocal_cells[..., start:],
                           rows[..., -1:]], dim=-1)
        return cells + self.basis_bias.view(self.num_mixtures, -1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, I, H, W) -> mixing weights (B, m, n) of every mixture over the warehouse's cells."""
        hidden = F.relu(self._normalize(self.fc1(x.flatten(2).mean(dim=-1))))
        logits = self.fc2(hidden)
        if self.uses_basis:
            logits = self._cell_logits_from_basis(logits)
        else:
            logits = logits.view(x.shape[0], self.num_mixtures, self.num_cells + 1)
        weights = logits / (logits.abs().sum(dim=-1, keepdim=True) + L1_EPS)
        t = self.temperature
        weights = (1.0 - t) * weights + t * self.initial_assignment
        return weights[..., :-1]


class KWConv2d(nn.Module):
    """A 2-d KernelWarehouse conv: its kernel per example from the cells of its warehouse.

    Made by :meth:`KernelWarehouseManager.reserve`; usable after the manager's ``store()`` and
    ``allocate(model)``, which attach the ``attention`` (:class:`WarehouseAttention`). Holds a
    reference to its manager (not registered: the model owns the cells once). Any groups
    (depthwise included), 1x1 and k x k kernels. Shapes: (B, in_planes, H, W) -> (B, out_planes, H', W').
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1, bias: bool = False, *,
                 manager: "KernelWarehouseManager", warehouse_id: int) -> None:
        super().__init__()
        if in_planes % groups or out_planes % groups:
            raise ValueError(f"in_planes={in_planes} and out_planes={out_planes} must be divisible by groups={groups}")
        self.in_planes, self.out_planes, self.kernel_size = in_planes, out_planes, pair(kernel_size)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.warehouse_id = warehouse_id
        self._manager = [manager]
        self.bias = nn.Parameter(torch.zeros(out_planes)) if bias else None
        self.attention: Optional[WarehouseAttention] = None
        self.strategy = "auto"          # or one of odconv.ops.cell_conv.CELL_STRATEGIES

    @property
    def manager(self) -> "KernelWarehouseManager":
        return self._manager[0]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The static kernel's shape (O, I/g, kh, kw)."""
        return (self.out_planes, self.in_planes // self.groups, *self.kernel_size)

    def attach(self, cell_shape: Sequence[int], start_cell: int, reduction: float, cell_num_ratio: float,
               nonlocal_basis_ratio: float) -> int:
        """Cut the kernel into cells of ``cell_shape`` (n, co, ci, ckh, ckw), build the attention
        for cells from ``start_cell`` on; returns the layer's end cell (exclusive)."""
        n, co, ci, ckh, ckw = cell_shape
        (kh, kw), cin = self.kernel_size, self.in_planes // self.groups
        if self.out_planes % co or cin % ci or kh % ckh or kw % ckw:
            raise ValueError(f"cells {tuple(cell_shape[1:])} do not divide the kernel {self.weight_shape}")
        self.cell_shape = tuple(cell_shape)
        self.out_blocks, self.in_blocks = self.out_planes // co, cin // ci
        self.spatial_blocks = (kh // ckh) * (kw // ckw)
        self.num_mixtures = self.out_blocks * self.in_blocks * self.spatial_blocks
        self.attention = WarehouseAttention(self.in_planes, reduction, n, self.num_mixtures, start_cell,
                                            cell_num_ratio, nonlocal_basis_ratio)
        self.start_cell, self.end_cell = start_cell, self.attention.end_cell
        return self.end_cell

    def update_temperature(self, temperature: float) -> None:
        """Blend weight t in [0, 1] of the initial one-hot cell assignment (1 -> 0 in training)."""
        self._attached().update_temperature(temperature)

    def _attached(self) -> WarehouseAttention:
        if self.attention is None:
            raise RuntimeError("KWConv2d has no cells yet: call the manager's store() and allocate(model) first")
        return self.attention

    @property
    def grid(self) -> tuple[int, int, int]:
        """(gs, go, gi): the spatial, output and input blocks the kernel is cut into."""
        return self.spatial_blocks, self.out_blocks, self.in_blocks

    def kernels(self, x: Tensor) -> Tensor:
        """The kernel of every example, (B, O, I/g, kh, kw)."""
        mix = self._attached()(x)                                         # (B, m, n)
        cells = self.manager.weights[self.warehouse_id]                   # (n, co, ci, ckh, ckw)
        return assemble_kernels(mix, cells, self.grid, self.weight_shape)

    def chosen_strategy(self, batch: int) -> str:
        """The algorithm this layer runs at ``batch``: a KW strategy forced by
        :func:`odconv.use_strategy`, else its ``strategy``; ``auto``:
        :func:`odconv.ops.cell_conv.auto_cell_strategy`."""
        forced = forced_strategy()
        name = forced if forced in ("auto", *CELL_STRATEGIES) else self.strategy
        if name != "auto":
            return name
        return auto_cell_strategy(batch, self.weight_shape, torch.is_grad_enabled() and self.training)

    def forward(self, x: Tensor) -> Tensor:
        mix = self._attached()(x)
        cells = self.manager.weights[self.warehouse_id]
        out = cell_conv2d(x, mix, cells, self.grid, self.weight_shape, self.stride, self.padding,
                          self.dilation, self.groups, self.chosen_strategy(x.shape[0]))
        return out + self.bias.view(1, -1, 1, 1) if self.bias is not None else out

    def mac_breakdown(self, in_hw: tuple[int, int]) -> dict[str, int]:
        """MACs per example by part (as :meth:`odconv.layers.DynamicConvBase.mac_breakdown`):
        the conv, assembling the kernel (m x n mixing weights times cells), the attention (GAP and FCs)."""
        out_hw = conv_output_hw(in_hw, self.kernel_size, self.stride, self.padding, self.dilation)
        conv = math.prod(self.weight_shape) * out_hw[0] * out_hw[1]
        att = self._attached()
        fc2_out = att.fc2.out_features
        attention = self.in_planes * (in_hw[0] * in_hw[1] + att.hidden_planes) + att.hidden_planes * fc2_out
        if att.uses_basis:
            attention += self.num_mixtures * att.num_basis * att.num_nonlocal_cells
        aggregation = self.num_mixtures * self.cell_shape[0] * math.prod(self.cell_shape[1:])
        return {"conv": conv, "aggregation": aggregation, "attention": attention, "modulation": 0}

    def macs(self, in_hw: tuple[int, int]) -> int:
        return sum(self.mac_breakdown(in_hw).values())

    def extra_repr(self) -> str:
        return (f"{self.in_planes}, {self.out_planes}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"warehouse_id={self.warehouse_id}, bias={self.bias is not None}")


class KernelWarehouseManager(nn.Module):
    """The warehouses of a network: reserves its KW layers, then creates and owns their cells.

    Args (each of ``reduction``, ``cell_num_ratio``, ``cell_inplane_ratio``,
    ``cell_outplane_ratio``, ``spatial_partition``: one value, or one per warehouse in order
    of first reservation):
        reduction: attention hidden width ``max(int(in_planes * reduction), 16)``.
        cell_num_ratio: warehouse cells / the cells its layers are cut into (1/4x ... 4x).
        cell_inplane_ratio, cell_outplane_ratio: cell channels / the gcd of the layers' (I/g, O).
        sharing_range: name prefixes that merge warehouses: with ``("layer", "conv")`` the layer
            ``stage2_layer1_conv0`` goes to warehouse ``stage2_layer_conv`` (one per stage). A
            string is split at ``_`` (the official configs write ``"layer_conv"``).
        nonlocal_basis_ratio: < 1 maps the cells of other layers through a smaller basis (one value).
        spatial_partition: cut kernels into 1x1 spatial cells (else cells keep the k x k taps).

    ``weights[i]`` (a ParameterList, after :meth:`store`): warehouse i's cells (n, co, ci, ckh, ckw).
    """

    def __init__(self, reduction: PerWarehouse = 0.0625, cell_num_ratio: PerWarehouse = 1.0,
                 cell_inplane_ratio: PerWarehouse = 1.0, cell_outplane_ratio: PerWarehouse = 1.0,
                 sharing_range: Union[str, Sequence[str]] = (), nonlocal_basis_ratio: float = 1.0,
                 spatial_partition: Union[bool, Sequence[bool]] = True) -> None:
        super().__init__()
        if isinstance(sharing_range, str):
            sharing_range = tuple(p for p in sharing_range.split("_") if p)
        self.sharing_range = tuple(sharing_range)
        self.settings = {"reduction": reduction, "cell_num_ratio": cell_num_ratio,
                         "cell_inplane_ratio": cell_inplane_ratio, "cell_outplane_ratio": cell_outplane_ratio,
                         "spatial_partition": spatial_partition}
        self.nonlocal_basis_ratio = float(nonlocal_basis_ratio)
        self.reserved: dict[str, list[tuple[int, ...]]] = {}    # warehouse name -> its layers' kernel shapes
        self.weights = nn.ParameterList()
        self.stored = self.allocated = False

    def warehouse_key(self, warehouse_name: str) -> str:
        """The warehouse a layer name maps to: each ``_`` part that starts with a sharing prefix
        becomes the (last matching) prefix."""
        parts = []
        for part in warehouse_name.split("_"):
            for prefix in self.sharing_range:
                if part.startswith(prefix):
                    part = prefix
            parts.append(part)
        return "_".join(parts)

    @property
    def warehouse_names(self) -> list[str]:
        return list(self.reserved)

    def reserve(self, in_planes: int, out_planes: int, kernel_size: IntPair = 1, stride: IntPair = 1,
                padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1, bias: bool = True,
                warehouse_name: str = "default", enabled: bool = True) -> nn.Module:
        """A :class:`KWConv2d` in warehouse ``warehouse_key(warehouse_name)`` (its cells come at
        :meth:`store`), or with ``enabled=False`` a plain ``nn.Conv2d``. ``bias`` defaults to True
        as the official ``reserve``."""
        if not enabled:
            return nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, bias=bias)
        if self.stored:
            raise RuntimeError("reserve() after store(): the warehouses are already built")
        key = self.warehouse_key(warehouse_name)
        layer = KWConv2d(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, bias,
                         manager=self, warehouse_id=list(self.reserved).index(key) if key in self.reserved
                         else len(self.reserved))
        self.reserved.setdefault(key, []).append(layer.weight_shape)
        return layer

    def _cell_plan(self, shapes: list[tuple[int, ...]], idx: int) -> tuple[int, ...]:
        """Cell shape (n, co, ci, ckh, ckw) of warehouse ``idx`` from its layers' kernel shapes."""
        s = self.per_warehouse
        co = max(int(math.gcd(*(o for o, *_ in shapes)) * s["cell_outplane_ratio"][idx]), 1)
        ci = max(int(math.gcd(*(i for _, i, *_ in shapes)) * s["cell_inplane_ratio"][idx]), 1)
        if not s["spatial_partition"][idx] and len({shape[2:] for shape in shapes}) > 1:
            raise ValueError(f"warehouse {self.warehouse_names[idx]!r}: spatial_partition=False needs one kernel size")
        cell_k = (1, 1) if s["spatial_partition"][idx] else tuple(shapes[0][2:])
        mixtures = 0
        for o, i, kh, kw in shapes:
            if o % co or i % ci:
                raise ValueError(f"warehouse {self.warehouse_names[idx]!r}: cells ({co}, {ci}) do not divide "
                                 f"a kernel with {o} outputs and {i} inputs per group")
            mixtures += (o // co) * (i // ci) * (kh // cell_k[0]) * (kw // cell_k[1])
        return (max(int(mixtures * s["cell_num_ratio"][idx]), 1), co, ci, *cell_k)

    def store(self) -> None:
        """Create every warehouse's cells (``torch.randn``; :meth:`allocate` initialises them)."""
        if self.stored:
            raise RuntimeError("store() was already called")
        count = len(self.reserved)
        self.per_warehouse = {k: _per_warehouse(v, count, k) for k, v in self.settings.items()}
        for idx, shapes in enumerate(self.reserved.values()):
            self.weights.append(nn.Parameter(torch.randn(self._cell_plan(shapes, idx))))
        self.stored = True

    def allocate(self, model: nn.Module, init_cells: Optional[Callable[[Tensor], object]] = None) -> None:
        """Attach every KW layer of ``model`` (in ``model.modules()`` order) to its cells and
        initialise the cells it claims, viewed as (cells * co, ci, ckh, ckw), with ``init_cells``
        (default: Kaiming normal, fan_out, ReLU gain, as the official code)."""
        if not self.stored:
            raise RuntimeError("allocate() needs store() first")
        if self.allocated:
            raise RuntimeError("allocate() was already called")
        init_cells = init_cells or (lambda t: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"))
        next_free = [0] * len(self.weights)
        layers = [m for m in model.modules() if isinstance(m, KWConv2d) and m.manager is self]
        for layer in layers:
            idx, cells = layer.warehouse_id, self.weights[layer.warehouse_id]
            start = next_free[idx]
            end = layer.attach(tuple(cells.shape), start, self.per_warehouse["reduction"][idx],
                               self.per_warehouse["cell_num_ratio"][idx], self.nonlocal_basis_ratio)
            with torch.no_grad():
                init_cells(cells[start:end].view(-1, *cells.shape[2:]))
            next_free[idx] = end
        for idx, (name, cells) in enumerate(zip(self.warehouse_names, self.weights)):
            if next_free[idx] != cells.shape[0]:
                raise ValueError(f"warehouse {name!r}: its layers in the model claim {next_free[idx]} of its "
                                 f"{cells.shape[0]} cells (every reserved layer must be in the model, and "
                                 f"cell_num_ratio must split the layers evenly)")
        self.allocated = True


def warehouse_layers(model: nn.Module) -> list[KWConv2d]:
    """Every KW layer of ``model``."""
    return [m for m in model.modules() if isinstance(m, KWConv2d)]


def set_warehouse_temperature(model: nn.Module, temperature: float) -> int:
    """Set the temperature (blend weight, [0, 1]) of every KW layer; returns how many."""
    layers = warehouse_layers(model)
    for layer in layers:
        layer.update_temperature(temperature)
    return len(layers)


def linear_warehouse_temperature(progress_epochs: float, epochs: float = 20.0, init: float = 1.0,
                                 final: float = 0.0) -> float:
    """The official KW schedule: ``init`` at epoch 0 linearly to ``final`` at ``epochs``
    (official default 20; its MobileNetV2 configs 15), then ``final``."""
    if epochs <= 0:
        return float(final)
    frac = min(max(progress_epochs / epochs, 0.0), 1.0)
    return float(final + (init - final) * (1.0 - frac))


def to_official_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` without the KW temperature buffers, loadable by the official modules
    (with ``strict=True``; everything else has the official names already)."""
    return {k: v for k, v in state_dict.items() if not k.endswith("attention.temperature")}
