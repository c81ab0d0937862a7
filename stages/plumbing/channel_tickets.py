"""Channel tickets in evaluate (evaluate.channels): IMP over whole output channels, trained as smaller nets.

Round k's ticket removes a fraction of each conv's remaining output channels, those whose trained filter has the
smallest L1 norm (lipcore.channels), starting from round 0's trained dense weights, then from each round's trained
ticket. The ticket is materialised as a physically smaller skip net and trained from the slice of LIP's rewind
weights, on the same z and reg-noise stream (fit_stream) as LIP's rounds and with the same fit, on the observation
(ground-truth free, whatever params.protocol says: its scores come from that fit, as an IMP round's evaluation).

Recorded per round: the channels kept per layer, the parameters of the small net (comparable with
lipcore.baselines.nonzero_parameters of an unstructured mask: conv weights kept plus every bias and BN parameter),
its FLOPs per fitting step at the problem's size (torch's counter: convs and matmuls), and its scores. Seconds per
step are not recorded (stage outputs are byte-deterministic): bench/channel_speed.py measures them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lipcore import channels
from lipcore.config import FitConfig, NetConfig
from lipcore.fit import FitJob, fit_many
from lipcore.nets import skeleton
from lipcore.physics import Problem
from lipcore.scoring import fit_scores

from .params import Params
from .retrain import fit_stream


def fit_rounds(
    *,
    params: Params,
    seed: int,
    fit: FitConfig,
    z: Tensor,
    problem: Problem,
    rewind: dict[str, Tensor],
    trained: dict[str, Tensor],
    label: str,
) -> list[dict[str, Any]]:
    """Rounds 1..evaluate.channels.rounds of one seed from round 0's `trained` dense weights: one record each."""
    cfg, net_cfg = params.evaluate.channels, params.net
    fraction = cfg.per_round(params.imp.fraction)
    mask = channels.dense_channel_mask(skeleton(net_cfg))
    scores = channels.channel_scores(trained, net_cfg)
    stream = fit_stream(params.seed, seed)
    out = []
    for k in range(1, cfg.rounds + 1):
        mask = channels.prune_channels(scores, mask, fraction)
        net = channels.materialise(net_cfg, rewind, mask)
        flops = cost(net_cfg, mask, z)
        job = FitJob(
            net, z, problem.op, problem.y, problem.x_true, None, stream, problem.psnr, f"{label} channels r{k}"
        )
        (res,) = fit_many([job], fit, device=params.device)
        small = {n: v.detach().cpu() for n, v in net.state_dict().items()}
        out.append(
            {
                "round": k,
                "channels": {n: int(m.sum()) for n, m in mask.items()},
                "parameters": channels.kept_parameters(net_cfg, mask),
                "flops": flops,
                **fit_scores(res, problem, fit),
            }
        )
        scores = channels.ticket_scores(net_cfg, small, mask)
    return out


def cost(net_cfg: NetConfig, mask: channels.ChannelMask | None, z: Tensor) -> int:
    """FLOPs per fitting step of the ticket of `mask` (None: the dense net) on input z, counted on the `meta`
    device: shapes only, no arithmetic (the same count on every device)."""
    net = skeleton(net_cfg)
    if mask is not None:
        net = channels.materialise(net_cfg, net.state_dict(), mask)
    return channels.flops_per_iteration(net, z.to("meta"))


def dense_cost(net_cfg: NetConfig, z: Tensor) -> dict[str, int]:
    """The dense skip net's parameters and FLOPs per fitting step: the ratios' reference."""
    return {"parameters": sum(p.numel() for p in skeleton(net_cfg).parameters()), "flops": cost(net_cfg, None, z)}
