"""lipcore.multi: a group of images as one problem (shared and average modes)."""

import pytest
import torch

from lipcore.config import DegradationConfig, NetConfig
from lipcore.fit import _DataLoss
from lipcore.multi import GroupOperator, group_problem, group_size
from lipcore.nets import build_net, net_from_state
from lipcore.physics import make_problem
from lipcore.trials import group_initialisation, initialisation

NET = NetConfig(scales=2, in_channels=4, channels_down=8, channels_up=8, channels_skip=2)
SIZE = 16


def problems(task: str = "inpaint", n: int = 3):
    cfg = {"inpaint": DegradationConfig(task="inpaint", keep=0.5), "sr": DegradationConfig(task="sr", factor=2)}[task]
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        out.append(make_problem(torch.rand((1, 3, SIZE, SIZE), generator=g), cfg, g))
    return out


def loss_and_grads(net, z, problem):
    """The objective the fit differentiates, for one net and one problem, and its gradients."""
    net.zero_grad(set_to_none=True)
    _, loss = _DataLoss([problem.op], [problem.y])(slice(None), net(z).unsqueeze(0))
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("task", ["inpaint", "sr"])
def test_average_loss_and_step_are_the_sum_of_the_single_image_ones(task):
    """One step of the 'average' fit: its loss and gradient equal the sum over the images fitted one by one."""
    singles = problems(task)
    theta0, z = initialisation(NET, 0, 0, SIZE, SIZE)
    net = net_from_state(NET, theta0)
    group_loss, group_grads = loss_and_grads(net, z, group_problem(singles, "average"))
    parts = [loss_and_grads(net_from_state(NET, theta0), z, p) for p in singles]
    assert group_loss == pytest.approx(sum(loss for loss, _ in parts), rel=1e-6)
    for i, g in enumerate(group_grads):
        torch.testing.assert_close(g, sum(grads[i] for _, grads in parts), rtol=1e-5, atol=1e-7)


def test_shared_loss_is_the_sum_of_each_images_loss_on_its_own_output():
    """'shared': image i's output (its own z_i, one batch through the net) is scored against image i only."""
    singles = problems()
    theta0, z = group_initialisation(NET, 0, 0, len(singles), SIZE, SIZE)
    x = net_from_state(NET, theta0)(z).detach()
    per_image, loss = _DataLoss([group_problem(singles, "shared").op], [group_problem(singles, "shared").y])(
        slice(None), x.unsqueeze(0)
    )
    alone = [float((p.op(x[i : i + 1]) - p.y).pow(2).mean()) for i, p in enumerate(singles)]
    assert float(loss) == pytest.approx(sum(alone), rel=1e-6)
    assert per_image.shape == (1, len(singles))


def test_with_one_image_either_mode_is_the_single_image_problem():
    (p,) = problems(n=1)
    for mode in ("shared", "average"):
        g = group_problem([p], mode)
        torch.testing.assert_close(g.y, p.y)
        torch.testing.assert_close(g.x_true, p.x_true)
        torch.testing.assert_close(g.op(p.x_true), p.op(p.x_true))


def test_average_scores_against_the_mean_image_its_loss_is_minimised_by():
    singles = problems()
    g = group_problem(singles, "average")
    torch.testing.assert_close(g.x_true, torch.cat([p.x_true for p in singles]).mean(0, keepdim=True))
    assert group_problem(singles, "shared").x_true.shape == (3, 3, SIZE, SIZE)


def test_group_inputs_share_theta0_with_the_single_image_fits():
    theta0, z = initialisation(NET, 0, 1, SIZE, SIZE)
    shared_theta, shared_z = group_initialisation(NET, 0, 1, 3, SIZE, SIZE)
    avg_theta, avg_z = group_initialisation(NET, 0, 1, group_size("average", 3), SIZE, SIZE)
    for k in theta0:
        assert torch.equal(theta0[k], shared_theta[k]) and torch.equal(theta0[k], avg_theta[k])
    assert torch.equal(avg_z, z)
    assert shared_z.shape == (3, *z.shape[1:])
    assert not torch.equal(shared_z[0], shared_z[1])


def test_groups_of_mixed_tasks_or_wrong_batches_are_refused():
    with pytest.raises(ValueError, match="one task"):
        GroupOperator([problems("inpaint", 1)[0].op, problems("sr", 1)[0].op], "shared")
    with pytest.raises(ValueError, match="mode"):
        group_problem(problems(), "mean")
    op = group_problem(problems(), "shared").op
    with pytest.raises(ValueError, match="expected 3 outputs"):
        op(torch.rand(1, 3, SIZE, SIZE))


def test_a_group_fit_trains(tmp_path):
    """The fit loop takes a group problem unchanged: a short shared fit lowers the group's loss."""
    from lipcore.config import FitConfig
    from lipcore.fit import fit

    g = group_problem(problems(), "shared")
    theta0, z = group_initialisation(NET, 0, 0, 3, SIZE, SIZE)
    net = build_net(NET, torch.Generator().manual_seed(0))
    net.load_state_dict(theta0)
    res = fit(net, z, g.op, g.y, FitConfig(iterations=30, log_every=10, es_window=5, es_patience=5), x_true=g.x_true)
    assert res.x_last.shape == (3, 3, SIZE, SIZE)
    assert res.history["loss"][-1] < res.history["loss"][0]
