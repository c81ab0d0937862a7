"""Adding a task is one Operator class registered with @register_task: a toy colour-to-grey task, defined here and
nowhere else, runs through the pipeline's degrade and dense fit with no other file edited."""

import json

import pytest
import torch
from torch import Tensor

from lipcore import physics
from lipcore.config import DegradationConfig
from lipcore.physics import Operator, register_task
from stages.plumbing import artifacts, layout
from tests.conftest import dvc_stages, make_project, run_stage_in_process, tiny_params


class Grey(Operator):
    """A = the mean over the colour channels: y (1, 1, H, W), the grey image (a toy task for this test)."""

    task = "grey"
    default_sigma = 0.02

    @classmethod
    def check_shape(cls, cfg: DegradationConfig, image_shape) -> None:
        if image_shape[0] < 2:
            raise ValueError(f"task: a colour-to-grey degradation needs colour images, got {image_shape[0]} channel")

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1, keepdim=True)

    def adjoint(self, y: Tensor) -> Tensor:
        c = self.image_shape[0]
        return y.expand(-1, c, -1, -1) / c

    def display(self, y: Tensor) -> Tensor:
        return y.clamp(0, 1)


@pytest.fixture
def grey(monkeypatch):
    monkeypatch.setattr(physics, "TASKS", dict(physics.TASKS))  # registered for this test only
    return register_task(Grey)


def test_a_registered_task_is_a_task(grey):
    cfg = DegradationConfig(task="grey")
    assert cfg.noise_std == 0.02
    op = physics.sample_operator(cfg, (3, 8, 8), torch.Generator().manual_seed(0))
    assert isinstance(op, Grey) and op(torch.rand(2, 3, 8, 8)).shape == (2, 1, 8, 8)
    x, y = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose((op(x) * y).sum(), (x * op.adjoint(y)).sum())  # adjoint
    with pytest.raises(ValueError, match="needs colour images"):
        physics.sample_operator(cfg, (1, 8, 8))
    with pytest.raises(ValueError, match="registered already"):
        register_task(type("Other", (Grey,), {}))
    with pytest.raises(ValueError, match="task must be one of denoise, inpaint, sr, cs, grey; got 'blur'"):
        DegradationConfig(task="blur")


def test_a_new_task_runs_through_degrade_and_a_dense_fit(grey, tmp_path, monkeypatch):
    params = tiny_params(images=["f16"], tasks=["grey"])
    params["task_defs"] = {"grey": {"degradation": {"task": "grey"}, "fit": {"ema_weight": 0.0}}}
    project = make_project(tmp_path, params)
    monkeypatch.chdir(project)
    ran = []
    for stage in dvc_stages(project):
        if stage.addressing.split("@")[0] in ("check_params", "degrade", "dense_fit"):
            run_stage_in_process(stage)
            ran.append(stage.addressing)
    assert ran == ["check_params", "degrade@f16-grey", "dense_fit@f16-grey-0"]
    problem = artifacts.load_problem(project / "outs/degrade/f16-grey")
    assert isinstance(problem.op, Grey) and problem.y.shape == (1, 1, 32, 32)
    rounds = layout.round_dir(layout.pair_rounds("f16", "grey"), 0, 0)
    metrics = json.loads((project / rounds / layout.FIT_METRICS).read_text())
    assert metrics["last"]["iteration"] == 12 and metrics["last"]["psnr"] > 0
