import math
import sys
import types

import pytest
import torch
from transformers.optimization import Adafactor, AdafactorSchedule

from trainers.optim import (
    OPTIMIZERS,
    SCHEDULERS,
    adafactor_relative_step,
    build_optimizer,
    build_scheduler,
    optimizer_label,
    parse_key_values,
    schedule_steps,
)

LR, LR2 = 1e-3, 4e-4


def groups() -> list[dict]:
    """Two param groups of a tiny model, like unet / text-encoder groups with their own lr."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
    return [{"params": list(a.parameters()), "lr": LR}, {"params": list(b.parameters()), "lr": LR2}]


def step(opt: torch.optim.Optimizer, sched=None) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.full_like(p, 0.1)
    opt.step()
    if sched is not None:
        sched.step()


def first_param(opt: torch.optim.Optimizer) -> torch.Tensor:
    return opt.param_groups[0]["params"][0]


def lrs_over(flat: dict, total: int, steps: int, accumulation: int = 1) -> list[list[float]]:
    """Each group's lr before the first step and after each of `steps` optimizer + scheduler steps."""
    opt = build_optimizer(groups(), flat)
    sched = build_scheduler(opt, flat, total, accumulation)
    out = [[g["lr"] for g in opt.param_groups]]
    for _ in range(steps):
        step(opt, sched)
        out.append([g["lr"] for g in opt.param_groups])
    return out


# ---------------------------------------------------------------- optimizers

def test_adamw_default_builds_steps_and_takes_args():
    opt = build_optimizer(groups(), {"learning_rate": LR, "optimizer_args": ["weight_decay=0.1", "betas=0.9,0.99"]})
    assert type(opt) is torch.optim.AdamW
    assert [g["lr"] for g in opt.param_groups] == [LR, LR2]
    assert opt.defaults["weight_decay"] == 0.1 and opt.defaults["betas"] == (0.9, 0.99)
    before = first_param(opt).detach().clone()
    step(opt)
    assert not torch.equal(before, first_param(opt))


def test_optimizer_type_is_case_insensitive_and_unknown_lists_known():
    assert type(build_optimizer(groups(), {"learning_rate": LR, "optimizer_type": "adamw"})) is torch.optim.AdamW
    with pytest.raises(ValueError, match="Lion") as err:
        build_optimizer(groups(), {"learning_rate": LR, "optimizer_type": "Lion"})
    assert all(name in str(err.value) for name in OPTIMIZERS)


def test_learning_rate_is_required():
    with pytest.raises(ValueError, match="learning_rate"):
        build_optimizer(groups(), {})


def test_caller_groups_are_not_mutated():
    given = groups()
    build_optimizer(given, {"learning_rate": LR, "optimizer_type": "Adafactor"})
    assert [g["lr"] for g in given] == [LR, LR2]


def test_optimizer_args_parsing():
    # sd-scripts: key, value = arg.split("="); value = ast.literal_eval(value)
    assert parse_key_values(["weight_decay=0.01", "betas=0.9,0.999", "decouple=True", "d_coef=2", "eps=1e-8",
                             "name='x'"], "optimizer_args") == {
        "weight_decay": 0.01, "betas": (0.9, 0.999), "decouple": True, "d_coef": 2, "eps": 1e-8, "name": "x"}
    assert parse_key_values("weight_decay=0.1 relative_step=False", "optimizer_args") == {
        "weight_decay": 0.1, "relative_step": False}  # the command-line form, one string
    assert parse_key_values(None, "optimizer_args") == {}
    with pytest.raises(ValueError, match="optimizer_args entry 'weight_decay'"):
        parse_key_values(["weight_decay"], "optimizer_args")
    with pytest.raises(ValueError, match="not a Python literal"):
        parse_key_values(["mode=fast"], "optimizer_args")
    with pytest.raises(ValueError, match="list of"):
        parse_key_values([0.1], "optimizer_args")


def _stub_package(monkeypatch, module: str, attr_path: list[str]) -> list[dict]:
    """Install a fake optional optimizer package whose class records how it was built (an SGD underneath)."""
    calls: list[dict] = []

    class Recorded(torch.optim.SGD):
        def __init__(self, params, lr=None, **kwargs):
            calls.append({"lr": lr, **kwargs})
            super().__init__(params, lr=lr)

    root = types.ModuleType(module)
    holder = root
    for name in attr_path[:-1]:
        child = types.ModuleType(name)
        setattr(holder, name, child)
        holder = child
    setattr(holder, attr_path[-1], Recorded)
    monkeypatch.setitem(sys.modules, module, root)
    return calls


def test_adamw8bit_uses_bitsandbytes(monkeypatch):
    calls = _stub_package(monkeypatch, "bitsandbytes", ["optim", "AdamW8bit"])
    opt = build_optimizer(groups(), {"learning_rate": LR, "optimizer_type": "AdamW8bit",
                                     "optimizer_args": ["weight_decay=0.05"]})
    assert calls == [{"lr": LR, "weight_decay": 0.05}]
    step(opt)
    legacy = build_optimizer(groups(), {"learning_rate": LR, "use_8bit_adam": True})  # sd-scripts' old flag
    assert type(legacy) is type(opt)


def test_prodigy_uses_prodigyopt(monkeypatch):
    calls = _stub_package(monkeypatch, "prodigyopt", ["Prodigy"])
    build_optimizer(groups(), {"learning_rate": 1.0, "optimizer_type": "prodigy",
                               "optimizer_args": ["decouple=True", "d_coef=2"]})
    assert calls == [{"lr": 1.0, "decouple": True, "d_coef": 2}]


@pytest.mark.parametrize(("name", "module"), [("AdamW8bit", "bitsandbytes"), ("Prodigy", "prodigyopt")])
def test_missing_package_is_named_with_its_install_command(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ValueError, match=rf"optimizer_type = \"{name}\".*{module}.*pip install {module}"):
        build_optimizer(groups(), {"learning_rate": LR, "optimizer_type": name})


@pytest.mark.parametrize(("name", "module", "lr"), [("AdamW8bit", "bitsandbytes", LR), ("Prodigy", "prodigyopt", 1.0)])
def test_real_optional_optimizers_step_when_installed(name, module, lr):
    pytest.importorskip(module)
    params = [torch.nn.Parameter(torch.randn(64, 64))]
    opt = build_optimizer([{"params": params}], {"learning_rate": lr, "optimizer_type": name})
    before = params[0].detach().clone()
    step(opt, build_scheduler(opt, {"lr_scheduler": "cosine"}, 10))
    assert not torch.equal(before, params[0])


def test_adafactor_relative_step_uses_its_own_schedule():
    flat = {"learning_rate": LR, "optimizer_type": "Adafactor", "lr_scheduler": "cosine"}
    opt = build_optimizer(groups(), flat)
    assert isinstance(opt, Adafactor) and opt.defaults["relative_step"] and opt.defaults["lr"] is None
    assert all(g["lr"] is None for g in opt.param_groups)  # sd-scripts drops the groups' lr
    assert adafactor_relative_step(flat)
    sched = build_scheduler(opt, flat, 100)  # lr_scheduler is replaced by "adafactor:<learning_rate>"
    assert isinstance(sched, AdafactorSchedule)
    assert sched.get_last_lr() == [LR, LR]
    rms = first_param(opt).detach().pow(2).mean().sqrt().item()
    step(opt, sched)
    # transformers' Adafactor._get_lr at step 1: min(1e-2, 1/sqrt(1)) * max(eps2 = 1e-3, RMS(param before the step))
    assert float(sched.get_last_lr()[0]) == pytest.approx(1e-2 * max(1e-3, rms), rel=1e-6)
    assert optimizer_label(opt, flat) == "transformers.optimization.Adafactor(relative_step=True)"
    with pytest.raises(ValueError, match="lr_warmup_steps = 0"):
        build_scheduler(opt, {**flat, "lr_warmup_steps": 10}, 100)


def test_adafactor_warmup_init_forces_relative_step_and_fixed_lr_keeps_scheduler():
    forced = {"learning_rate": LR, "optimizer_type": "Adafactor",
              "optimizer_args": ["relative_step=False", "warmup_init=True"]}
    assert build_optimizer(groups(), forced).defaults["relative_step"] is True
    fixed = {"learning_rate": LR, "optimizer_type": "Adafactor", "lr_scheduler": "constant_with_warmup",
             "lr_warmup_steps": 2, "optimizer_args": ["relative_step=False", "scale_parameter=False"]}
    opt = build_optimizer(groups(), fixed)
    assert [g["lr"] for g in opt.param_groups] == [LR, LR2]
    assert lrs_over(fixed, 10, 3) == [[0.0, 0.0], [LR / 2, LR2 / 2], [LR, LR2], [LR, LR2]]
    with pytest.raises(ValueError, match="adafactor:<initial lr>"):
        build_scheduler(opt, {**fixed, "lr_scheduler": "adafactor", "lr_warmup_steps": 0}, 10)


def test_adafactor_scheduler_needs_adafactor():
    opt = build_optimizer(groups(), {"learning_rate": LR})
    with pytest.raises(ValueError, match="only with optimizer_type"):
        build_scheduler(opt, {"lr_scheduler": "adafactor:0.001"}, 10)


def test_optimizer_label_matches_sd_scripts():
    # sd-scripts: optimizer_class.__module__ + "." + __name__, then "(k=v,...)" of its kwargs (train_network.py)
    flat = {"learning_rate": LR, "optimizer_args": ["weight_decay=0.1", "betas=0.9,0.99"]}
    opt = build_optimizer(groups(), flat)
    assert optimizer_label(opt, flat) == "torch.optim.adamw.AdamW(weight_decay=0.1,betas=(0.9, 0.99))"
    assert optimizer_label(opt, {"learning_rate": LR}) == "torch.optim.adamw.AdamW"


# ---------------------------------------------------------------- schedulers (closed forms)

def _close(actual: list[list[float]], expected: list[list[float]]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_constant_and_constant_with_warmup_ratio():
    _close(lrs_over({"learning_rate": LR}, 20, 3), [[LR, LR2]] * 4)
    # lr_warmup_steps = 0.1 of 50 steps → int(5.0) = 5 warmup steps: lr * k / 5
    flat = {"learning_rate": LR, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 0.1}
    _close(lrs_over(flat, 50, 7), [[LR * min(k / 5, 1), LR2 * min(k / 5, 1)] for k in range(8)])


def test_cosine_with_warmup():
    flat = {"learning_rate": LR, "lr_scheduler": "cosine", "lr_warmup_steps": 4}
    factor = [k / 4 if k < 4 else 0.5 * (1 + math.cos(math.pi * (k - 4) / 36)) for k in range(41)]
    _close(lrs_over(flat, 40, 40), [[LR * f, LR2 * f] for f in factor])


def test_cosine_with_restarts():
    # warmup ratio 0.25 of 40 → 10 steps; then 3 hard restarts over the remaining 30
    flat = {"learning_rate": LR, "lr_scheduler": "cosine_with_restarts", "lr_warmup_steps": 0.25,
            "lr_scheduler_num_cycles": 3}

    def factor(k: int) -> float:
        if k < 10:
            return k / 10
        progress = (k - 10) / 30
        return 0.0 if progress >= 1 else 0.5 * (1 + math.cos(math.pi * ((3 * progress) % 1)))

    got = lrs_over(flat, 40, 42)
    _close(got, [[LR * factor(k), LR2 * factor(k)] for k in range(43)])
    assert got[20][0] == pytest.approx(LR) and got[30][0] == pytest.approx(LR)  # the restarts


def test_polynomial_power():
    # transformers' polynomial decay: (lr_init - lr_end) * (1 - k/T)^power + lr_end, lr_end = 1e-7, divided by
    # lr_init = the optimizer's default lr (learning_rate) and applied to every group's own lr
    flat = {"learning_rate": LR, "lr_scheduler": "polynomial", "lr_scheduler_power": 2.0}
    factor = [((LR - 1e-7) * (1 - k / 30) ** 2 + 1e-7) / LR for k in range(31)]
    _close(lrs_over(flat, 30, 30), [[LR * f, LR2 * f] for f in factor])


def test_linear_with_truncated_warmup_ratio():
    # 0.19 * 30 = 5.7 → int() → 5 warmup steps (sd-scripts truncates, never rounds)
    flat = {"learning_rate": LR, "lr_scheduler": "linear", "lr_warmup_steps": 0.19}
    factor = [k / 5 if k < 5 else max(0.0, (30 - k) / 25) for k in range(33)]
    _close(lrs_over(flat, 30, 32), [[LR * f, LR2 * f] for f in factor])


def test_warmup_stable_decay():
    # 20 steps: warmup 4, decay 0.25 * 20 = 5, stable 11; decay is cosine with num_cycles 1/2 down to 0
    flat = {"learning_rate": LR, "lr_scheduler": "warmup_stable_decay", "lr_warmup_steps": 4, "lr_decay_steps": 0.25}

    def factor(k: int) -> float:
        if k < 4:
            return k / 4
        if k < 15:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (k - 15) / 5)) if k < 20 else 0.0

    _close(lrs_over(flat, 20, 21), [[LR * factor(k), LR2 * factor(k)] for k in range(22)])


def test_accumulation_does_not_stretch_the_schedule():
    # sd-scripts: num_training_steps = max_train_steps * num_processes (the accumulation factor is commented out)
    flat = {"learning_rate": LR, "lr_scheduler": "cosine", "lr_warmup_steps": 2}
    assert lrs_over(flat, 12, 12, accumulation=4) == lrs_over(flat, 12, 12)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        lrs_over(flat, 12, 1, accumulation=0)


def test_schedule_steps_forms():
    assert schedule_steps(7, "lr_warmup_steps", 100) == 7
    assert schedule_steps(0.25, "lr_warmup_steps", 10) == 2
    assert schedule_steps("10%", "lr_warmup_steps", 50) == 5
    assert schedule_steps("0.5", "lr_warmup_steps", 9) == 4
    assert schedule_steps("12", "lr_warmup_steps", 50) == 12
    assert schedule_steps(None, "lr_warmup_steps", 50) == 0
    for bad in (1.5, 100.0, -1, True, "many"):
        with pytest.raises(ValueError, match="lr_warmup_steps"):
            schedule_steps(bad, "lr_warmup_steps", 50)


def test_scheduler_errors():
    opt = build_optimizer(groups(), {"learning_rate": LR})
    with pytest.raises(ValueError, match="constant takes no warmup"):
        build_scheduler(opt, {"lr_scheduler": "constant", "lr_warmup_steps": 3}, 10)
    with pytest.raises(ValueError, match="exceeds"):
        build_scheduler(opt, {"lr_scheduler": "cosine", "lr_warmup_steps": 11}, 10)
    with pytest.raises(ValueError, match="lr_scheduler 'cosine_annealing' is not supported") as err:
        build_scheduler(opt, {"lr_scheduler": "cosine_annealing"}, 10)
    assert all(name in str(err.value) for name in SCHEDULERS)
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        build_scheduler(opt, {"lr_scheduler_type": "CosineAnnealingLR"}, 10)
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(opt, {}, 0)
