"""Pruning masks: Mask = dict[parameter name -> bool tensor] over the prunable conv weights.

Biases and BatchNorm parameters are never pruned. True = weight kept.

Rounding rule (everywhere): a fraction f of n weights means floor(f * n + 0.5) weights (round half up).
Ties in a ranking are broken by position (parameters in `named_parameters()` order, flattened row-major);
the first in that order is removed first, so a mask is a deterministic function of the weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import io

Mask = dict[str, Tensor]


def round_count(fraction: float, n: int) -> int:
    """The number of weights that `fraction` of `n` means: round half up."""
    return int(fraction * n + 0.5)


def prunable(net: nn.Module) -> dict[str, nn.Parameter]:
    """The conv weights (Conv2d, and the GAN generator's ConvTranspose2d), by name, in `named_parameters()` order."""
    convs = {f"{name}.weight" for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    return {name: p for name, p in net.named_parameters() if name in convs}


def dense_mask(net: nn.Module) -> Mask:
    """The mask that keeps every weight."""
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in prunable(net).items()}


def count_kept(mask: Mask) -> int:
    return sum(int(m.sum()) for m in mask.values())


def count_total(mask: Mask) -> int:
    return sum(m.numel() for m in mask.values())


def sparsity(mask: Mask) -> float:
    """Effective sparsity: the fraction of prunable weights that the mask removes."""
    return 1.0 - count_kept(mask) / count_total(mask)


def mask_distance(a: Mask, b: Mask) -> float:
    """The fraction of prunable weights on which two masks disagree (normalised Hamming distance)."""
    _check_names(a, b)
    return sum(_read_counts({n: (a[n] != b[n]).sum() for n in a}).values()) / count_total(a)


def _read_counts(counts: dict[str, Tensor]) -> dict[str, int]:
    """0-dim integer tensors -> ints, read in one host copy per device they live on (not one sync each)."""
    by_device: dict[torch.device, list[str]] = {}
    for name, c in counts.items():
        by_device.setdefault(c.device, []).append(name)
    read: dict[str, int] = {}
    for names in by_device.values():
        read.update(zip(names, torch.stack([counts[n] for n in names]).tolist()))
    return {name: int(read[name]) for name in counts}


def _remove_smallest(scores: Tensor, alive: Tensor, n_remove: int) -> Tensor:
    """New flat keep-vector: `alive` minus the n_remove alive entries of smallest score (stable ties)."""
    if n_remove <= 0:
        return alive.clone()
    masked = torch.where(alive, scores, torch.full_like(scores, float("inf")))
    order = torch.sort(masked, stable=True).indices
    keep = alive.clone()
    keep[order[:n_remove]] = False
    return keep


def _flat(tensors: dict[str, Tensor], names: list[str], device: torch.device) -> Tensor:
    return torch.cat([tensors[n].detach().reshape(-1).to(device) for n in names])


def _unflat(flat: Tensor, like: Mask) -> Mask:
    devices = {m.device for m in like.values()}
    if len(devices) == 1:  # one copy to where the masks live, not one per layer
        flat = flat.to(devices.pop())
    out, i = {}, 0
    for name, m in like.items():
        out[name] = flat[i : i + m.numel()].view(m.shape).to(m.device)
        i += m.numel()
    return out


def prune_by_score(
    scores: dict[str, Tensor],
    mask: Mask,
    fraction: float,
    scope: str = "global",
    dense_layers: tuple[str, ...] = (),
) -> Mask:
    """Remove `fraction` of the REMAINING weights with the smallest score.

    scope='global' ranks all layers together; 'layer' removes the fraction from each layer separately.
    `dense_layers` (paper-compatible): those layers are ranked with the others but kept dense afterwards,
    so fewer weights than the fraction are removed (effective < nominal sparsity).
    """
    names = list(mask)
    # Ranked where the scores are (the fit's device: no copy of the weights to the host); one host read each for
    # the finite check and the count. A stable sort orders the same values the same way on every device.
    device = scores[names[0]].device if names else torch.device("cpu")
    finite = _read_counts({n: torch.isfinite(scores[n].detach()).all() for n in names})
    broken = [n for n in names if not finite[n]]
    if broken:  # NaN sorts last and inf ties with the padding of pruned weights: the mask would remove too few
        raise ValueError(
            f"cannot rank weights of {broken[:3]}{' ...' if len(broken) > 3 else ''}: their scores are NaN/inf "
            "(weights of a diverged fit?), so the mask could not remove its share; refit the round they come from"
        )
    if scope == "global":
        alive = _flat(mask, names, device)
        n_remove = round_count(fraction, int(alive.sum()))
        new = _unflat(_remove_smallest(_flat(scores, names, device), alive, n_remove), mask)
    elif scope == "layer":
        new = {}
        for n in names:
            alive = mask[n].reshape(-1).to(scores[n].device)
            k = round_count(fraction, int(alive.sum()))
            new[n] = _remove_smallest(scores[n].detach().reshape(-1), alive, k).view(mask[n].shape)
            new[n] = new[n].to(mask[n].device)
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    _check_removed(mask, new, fraction, scope)
    for n in dense_layers:
        new[n] = torch.ones_like(new[n])
    return new


def _check_removed(old: Mask, new: Mask, fraction: float, scope: str) -> None:
    """The new mask removed exactly round_count(fraction) of the weights `old` kept (globally or per layer)."""
    groups = [list(old)] if scope == "global" else [[n] for n in old]
    old_kept = _read_counts({n: m.sum() for n, m in old.items()})
    new_kept = _read_counts({n: m.sum() for n, m in new.items()})
    for names in groups:
        alive = sum(old_kept[n] for n in names)
        kept = sum(new_kept[n] for n in names)
        if alive - kept != round_count(fraction, alive):
            raise RuntimeError(
                f"pruning {names[:3]} removed {alive - kept} weights, not {round_count(fraction, alive)}"
            )


def magnitude_prune(
    net: nn.Module, mask: Mask, fraction: float, scope: str = "global", dense_layers: tuple[str, ...] = ()
) -> Mask:
    """One IMP step: remove `fraction` of the remaining weights of smallest |w| (the net's current weights)."""
    weights = prunable(net)
    _check_names(mask, weights)
    return prune_by_score({n: weights[n].abs() for n in mask}, mask, fraction, scope, dense_layers)


def random_mask(net: nn.Module, sparsity_: float, generator: torch.Generator | None = None) -> Mask:
    """Global random mask removing exactly round_count(sparsity, total) weights chosen uniformly."""
    like = dense_mask(net)
    total = count_total(like)
    flat = torch.ones(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=generator)[: round_count(sparsity_, total)]] = False
    return _unflat(flat, like)


def random_mask_like(mask: Mask, generator: torch.Generator | None = None) -> Mask:
    """Layer-wise matched random mask: in every layer, as many weights removed as `mask` removes there."""
    out = {}
    for name, m in mask.items():
        flat = torch.ones(m.numel(), dtype=torch.bool)
        n_removed = m.numel() - int(m.sum())
        flat[torch.randperm(m.numel(), generator=generator)[:n_removed]] = False
        out[name] = flat.view(m.shape).to(m.device)
    return out


def snip_mask(net: nn.Module, loss_fn: Callable[[nn.Module], Tensor], sparsity_: float) -> Mask:
    """SNIP (Lee et al. 2019) at initialisation: keep the top (1 - s) of |w * dL/dw|, ranked globally.

    `loss_fn(net)` returns the task loss on the observation (e.g. ||A(f(z)) - y||^2). The net is unchanged.
    """
    return prune_by_score(snip_scores(net, loss_fn), dense_mask(net), sparsity_, "global")


def snip_scores(net: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> dict[str, Tensor]:
    """SNIP's saliency |w * dL/dw| of every prunable weight at the net's current weights; the net is unchanged
    (its gradients are cleared again)."""
    weights = prunable(net)
    net.zero_grad(set_to_none=True)
    loss_fn(net).backward()
    scores = {n: (w.detach() * w.grad).abs() for n, w in weights.items()}
    net.zero_grad(set_to_none=True)
    return scores


def keep_top_like(scores: dict[str, Tensor], reference: Mask) -> Mask:
    """In every layer, keep as many weights as `reference` keeps there: those of highest score (ties by position).

    With SNIP's scores this is SNIP's ranking at LIP's layer-wise sparsity: no layer can collapse unless the
    reference's does, so it compares the two criteria at equal allocation."""
    _check_names(reference, scores)
    out = {}
    for name, ref in reference.items():
        flat = scores[name].detach().reshape(-1).cpu()
        alive = torch.ones_like(flat, dtype=torch.bool)
        out[name] = _remove_smallest(flat, alive, ref.numel() - int(ref.sum())).view(ref.shape).to(ref.device)
    return out


def snip_iterative_mask(net: nn.Module, loss_fn: Callable[[nn.Module], Tensor], sparsity_: float, steps: int) -> Mask:
    """Iterative SNIP (de Jorge et al. 2021, "FORCE"-style): reach `sparsity_` in `steps` steps of geometric
    density 1 -> (1 - s)^(j/steps), re-scoring |w * dL/dw| of the net pruned so far at each step.

    One-shot SNIP at high sparsity can remove a whole layer (the net's output then no longer depends on z);
    pruning gradually lets the scores of the remaining weights of a thinned layer grow. The net is unchanged;
    the last step removes exactly round_count(sparsity_) weights, as `snip_mask` does.
    """
    if steps < 1:
        raise ValueError(f"iterative SNIP needs at least 1 step, got {steps}")
    work = copy.deepcopy(net)
    mask = dense_mask(work)
    total = count_total(mask)
    goal = round_count(sparsity_, total)
    for j in range(1, steps + 1):
        removed = goal if j == steps else min(goal, round_count(1.0 - (1.0 - sparsity_) ** (j / steps), total))
        alive = count_kept(mask)
        n_remove = removed - (total - alive)
        if n_remove <= 0:
            continue
        apply_mask(work, mask)
        mask = prune_by_score(snip_scores(work, loss_fn), mask, n_remove / alive, "global")
    return mask


def collapsed_layers(mask: Mask) -> list[str]:
    """Layers that keep no weight at all: the signal through them is cut (layer collapse)."""
    return [name for name, m in mask.items() if not bool(m.any())]


def apply_mask(net: nn.Module, mask: Mask) -> None:
    """Zero the pruned weights in place."""
    weights = prunable(net)
    _check_names(mask, weights)
    with torch.no_grad():
        for name, m in mask.items():
            weights[name].mul_(m.to(weights[name].device, weights[name].dtype))


def _check_names(mask: Mask, weights: dict[str, Tensor]) -> None:
    if set(mask) != set(weights):
        missing, extra = sorted(set(weights) - set(mask)), sorted(set(mask) - set(weights))
        raise ValueError(f"mask does not fit this net: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, m in mask.items():
        if m.shape != weights[name].shape:
            raise ValueError(f"mask '{name}' has shape {tuple(m.shape)}, weight has {tuple(weights[name].shape)}")


def is_monotone(parent: Mask, child: Mask) -> bool:
    """True if `child` keeps no weight that `parent` removed."""
    return all(bool((child[n] & ~parent[n]).sum() == 0) for n in parent)


# ---------------------------------------------------------------- artifacts


def save_mask(path: str | Path, mask: Mask, metadata: dict[str, Any] | None = None) -> None:
    """Save a mask as safetensors (bool tensors) with its metadata (round, sparsity, parent, config...)."""
    meta = {"kind": "lip-mask", "effective_sparsity": sparsity(mask), **(metadata or {})}
    io.save_tensors(path, dict(mask), meta)


def load_mask(path: str | Path, net: nn.Module) -> tuple[Mask, dict[str, Any]]:
    """Load a mask saved by `save_mask`, checking names, shapes and dtype against `net`'s conv weights."""
    tensors, meta = io.load_tensors(path)
    weights = prunable(net)
    io.check_against(tensors, weights, "mask", path)
    bad = [n for n, t in tensors.items() if t.dtype != torch.bool]
    if bad:
        raise ValueError(f"{path}: mask entries must be bool tensors; {bad[:3]} are not")
    return {n: tensors[n] for n in weights}, meta  # in the net's order, on the CPU (a fit moves what it needs)
