"""In-process checks of the optimizer factories and of compare.py's arithmetic."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from launch.optimizers import adamw_optimizer, amos_optimizer, nanogpt_lr
from launch.study.compare import first_reach, mean_curve


def test_nanogpt_schedule_matches_get_lr():
    def get_lr(it, lr=1e-3, warm=100, decay=2000, min_lr=1e-4):  # nanoGPT train.py
        if it < warm:
            return lr * (it + 1) / (warm + 1)
        if it > decay:
            return min_lr
        ratio = (it - warm) / (decay - warm)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    for it in [0, 1, 50, 99, 100, 101, 1000, 1999, 2000, 2500]:
        got = float(
            nanogpt_lr(
                it, learning_rate=1e-3, warmup_steps=100, decay_steps=2000, min_learning_rate=1e-4
            )
        )
        assert math.isclose(got, get_lr(it), rel_tol=1e-5), it
    spec = adamw_optimizer(
        2000,
        learning_rate=1e-3,
        warmup_steps=100,
        schedule="nanogpt_cosine",
        min_learning_rate=1e-4,
    )
    assert math.isclose(spec.learning_rate(1), get_lr(0), rel_tol=1e-5)


def test_adamw_decays_matrices_only():
    spec = adamw_optimizer(
        10,
        learning_rate=0.1,
        warmup_steps=0,
        schedule="constant",
        weight_decay=0.5,
        decay_mask="matrices",
    )
    params = {"k": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    grads = {"k": jnp.zeros((2, 2)), "scale": jnp.zeros((2,))}
    updates, _ = spec.tx.update(grads, spec.tx.init(params), params)
    assert float(updates["k"][0, 0]) == pytest.approx(-0.1 * 0.5)
    assert float(updates["scale"][0]) == 0.0


def test_first_reach_interpolates():
    curve = [
        {"step": 10, "loss": 3.0, "t": 1.0},
        {"step": 20, "loss": 2.0, "t": 3.0},
        {"step": 30, "loss": 1.5, "t": 5.0},
    ]
    assert first_reach(curve, 2.5, "step") == pytest.approx(15.0)
    assert first_reach(curve, 2.5, "t") == pytest.approx(2.0)
    assert first_reach(curve, 1.75, "step") == pytest.approx(25.0)
    assert first_reach(curve, 3.5, "step") == 10.0
    assert first_reach(curve, 1.0, "step") is None


def test_mean_curve_averages_shared_steps():
    a = [
        {"step": 10, "loss": 3.0, "train_time_s": 1.0},
        {"step": 20, "loss": 2.0, "train_time_s": 2.0},
    ]
    b = [{"step": 10, "loss": 2.0, "train_time_s": 3.0}]
    assert mean_curve([a, b]) == [{"step": 10, "loss": 2.5, "train_time_s": 2.0}]


def test_paper_adamw_baseline_schedule():
    spec = adamw_optimizer(100, learning_rate=1e-3, warmup_steps=10)
    # Linear warmup to the peak at step 10, then linear decay to 0 at the last step.
    assert spec.learning_rate(1) == 0.0
    assert spec.learning_rate(6) == pytest.approx(0.5e-3, rel=1e-6)
    assert spec.learning_rate(11) == pytest.approx(1e-3, rel=1e-5)
    assert spec.learning_rate(56) == pytest.approx(0.5e-3, rel=1e-3)
    assert spec.learning_rate(101) == pytest.approx(0.0, abs=1e-9)
    # The paper's mask: biases and normalization scales are not decayed.
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    grads = {"dense": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}
    spec = adamw_optimizer(10, learning_rate=0.1, warmup_steps=0, schedule="constant")
    updates, _ = spec.tx.update(grads, spec.tx.init(params), params)
    assert float(updates["dense"]["kernel"][0, 0]) == pytest.approx(-0.1 * 0.01)
    assert float(updates["dense"]["bias"][0]) == 0.0


def test_constant_adam_schedule_of_the_lstm_baseline():
    """jestimator/models/lstm/lm.py: optax.adam at a constant 5e-4, no warmup."""
    spec = adamw_optimizer(
        1000, learning_rate=5e-4, warmup_steps=0, schedule="constant", weight_decay=0.0
    )
    assert [spec.learning_rate(t) for t in (1, 2, 500, 1000)] == [5e-4] * 4


def test_amos_xi_warmup_first_values():
    """jestimator/models/bert/pretrain.py: ``lr_schedule(step) = lr * min(1, step /
    warmup_steps)``, given to amos.amos, which calls it with the 1-based step."""
    spec = amos_optimizer(1000, xi=0.05, warmup_steps=4, momentum=0.9, clip_value=1.0)
    got = [spec.learning_rate(t) for t in (1, 2, 3, 4, 5, 100)]
    assert got == pytest.approx([0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05], rel=1e-6)
    assert amos_optimizer(10, xi=0.05).learning_rate(1) == 0.05  # warmup 0: constant


def test_amos_warmup_is_the_update_amos_takes():
    """The first update is Amos' with xi / warmup_steps, the second with 2 xi / warmup."""
    import amos

    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3) / 10, "bias": jnp.ones(3)}}
    grads = jax.tree_util.tree_map(lambda p: jnp.cos(p) - 0.3, params)
    warm = amos_optimizer(100, xi=0.1, warmup_steps=10, beta=0.9).tx
    state = warm.init(params)
    for step in (1, 2):
        by_hand = amos.amos(
            0.1 * step / 10, amos.default_eta_fn(), amos.default_shape_fn(), beta=0.9
        )
        hand_state = by_hand.init(params)
        if step == 2:  # Replay step 1 at its own xi, then compare step 2.
            first = amos.amos(0.01, amos.default_eta_fn(), amos.default_shape_fn(), beta=0.9)
            _, hand_state = first.update(grads, first.init(params), params)
        expected, _ = by_hand.update(grads, hand_state, params)
        updates, state = warm.update(grads, state, params)
        for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
            assert jnp.allclose(a, b, rtol=1e-6, atol=1e-9), step


def test_multihost_detection():
    from launch.run import multihost_detected

    assert not multihost_detected({})
    assert not multihost_detected({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
    assert multihost_detected({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
    assert multihost_detected({"TPU_WORKER_HOSTNAMES": "a,b"})
    assert not multihost_detected({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert multihost_detected({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})


def test_collapse_and_stall_detection():
    from launch.study.compare import collapse_reason, stall_reason

    def curve(losses, accuracies):
        return [
            {"step": 100 * (i + 1), "loss": loss, "accuracy": acc}
            for i, (loss, acc) in enumerate(zip(losses, accuracies, strict=True))
        ]

    # The stuck BERT seeds of the first CPU comparison: a constant most-frequent guess.
    stuck = curve([3.35, 3.31, 3.312, 3.311, 3.312], [0.1524] * 5)
    assert "frozen at 0.1524" in collapse_reason(stuck) and stall_reason(stuck) is None
    # Learned early, then froze at a constant guess.
    frozen = curve([4.0, 3.2, 3.19, 3.19, 3.188], [0.1, 0.1524, 0.1524, 0.1524, 0.1524])
    assert "frozen at 0.1524" in collapse_reason(frozen)
    learned = curve([3.3, 2.5, 2.1, 1.9], [0.15, 0.3, 0.4, 0.45])
    assert collapse_reason(learned) is None and stall_reason(learned) is None
    # A plateau that still changes its predictions: stalled, not collapsed.
    plateau = curve([3.1435, 3.1433, 3.1356, 3.1238, 3.1381], [0.219, 0.213, 0.218, 0.219, 0.214])
    assert collapse_reason(plateau) is None
    assert "3.1435 at step 100 -> 3.1381 at step 500" in stall_reason(plateau)
    # A converged classifier whose accuracy on a small eval set stops changing while its
    # loss still moves (the ResNet on digits): not a collapse.
    converged = curve([0.5, 0.0384, 0.041, 0.0443], [0.9, 0.9844, 0.9844, 0.9844])
    assert collapse_reason(converged) is None
    # A solved classifier keeps accuracy 1.0: neither.
    solved = curve([1.0, 0.1, 0.05, 0.049], [0.8, 1.0, 1.0, 1.0])
    assert collapse_reason(solved) is None and stall_reason(solved) is None
    # Converged at one error in 160 with a flat loss (the untuned Amos ResNet, seed 1, of
    # the study's first sweep): neither; the same plateau at a low accuracy is a collapse.
    one_error = curve([0.3, 0.0148, 0.0147, 0.0146], [0.9, 0.99375, 0.99375, 0.99375])
    assert collapse_reason(one_error) is None and stall_reason(one_error) is None
    low = curve([0.3, 0.0148, 0.0147, 0.0146], [0.9, 0.5, 0.5, 0.5])
    assert "frozen at 0.5000" in collapse_reason(low)
    assert "nan" in collapse_reason(curve([3.0, float("nan")], [0.1, 0.1]))


# ------------------------------------------------- AdamW: horizon and EMA timescale
def test_adamw_weight_decay_from_the_timescale():
    """Wang & Aitchison (2024): wd = B / (lr * N * tau_epoch); the digits: 32 / (1e-3 * 1438 *
    5) = 4.4506, and AdamW's decoupled decay of theta = 1 is lr * wd per step."""
    from experiments.errors import ConfigError

    spec = adamw_optimizer(
        10,
        learning_rate=1e-3,
        warmup_steps=0,
        schedule="constant",
        weight_decay=None,
        tau_epochs=5.0,
        batch_size=32,
        train_examples=1438,
    )
    params = {"k": jnp.ones((2, 2))}
    updates, _ = spec.tx.update({"k": jnp.zeros((2, 2))}, spec.tx.init(params), params)
    assert float(updates["k"][0, 0]) == pytest.approx(-1e-3 * 4.450625869262865, rel=1e-6)
    with pytest.raises(ConfigError, match="set one of adamw_optimizer.weight_decay"):
        adamw_optimizer(10, learning_rate=1e-3, warmup_steps=0, tau_epochs=5.0)
    with pytest.raises(ConfigError, match=r"train_examples \(@train_examples\(\)\) must be"):
        adamw_optimizer(
            10, learning_rate=1e-3, warmup_steps=0, weight_decay=None, tau_epochs=5.0, batch_size=32
        )
    with pytest.raises(ConfigError, match="ADAMW_TAU_EPOCHS"):
        adamw_optimizer(10, learning_rate=1e-3, warmup_steps=0, weight_decay=None, tau_epochs=-1)


def test_train_examples_comes_from_the_task():
    from experiments.errors import ConfigError
    from experiments.task import ObjectiveTask
    from launch.optimizers import train_examples

    class Task(ObjectiveTask):
        num_train_examples = 1438

    class Unsized(ObjectiveTask):  # the protocol's default: None
        pass

    assert train_examples(Task()) == 1438
    with pytest.raises(ConfigError, match="Unsized does not give its training-set size"):
        train_examples(Unsized())


def test_adamw_horizon_keeps_the_schedule_of_the_planned_run():
    """Trained to 200 steps with its horizon at 100: the paper's schedule of a 100-step run,
    then its end rate (0) from step 101 on."""
    from experiments.errors import ConfigError

    planned = adamw_optimizer(100, learning_rate=1e-3, warmup_steps=10)
    longer = adamw_optimizer(200, learning_rate=1e-3, warmup_steps=10, horizon_steps=100)
    for t in (1, 6, 11, 56, 100, 101):
        assert longer.learning_rate(t) == planned.learning_rate(t), t
    assert longer.learning_rate(56) == pytest.approx(0.5e-3, rel=1e-3)
    assert [longer.learning_rate(t) for t in (101, 150, 200)] == [0.0, 0.0, 0.0]
    # Without the pin, the 200-step run decays over 200 steps.
    assert adamw_optimizer(200, learning_rate=1e-3, warmup_steps=10).learning_rate(
        101
    ) == pytest.approx(1e-3 * 100 / 190, rel=1e-3)
    cosine = adamw_optimizer(
        400, learning_rate=1e-3, warmup_steps=10, schedule="nanogpt_cosine", min_learning_rate=1e-4
    )
    pinned = adamw_optimizer(
        800,
        learning_rate=1e-3,
        warmup_steps=10,
        schedule="nanogpt_cosine",
        min_learning_rate=1e-4,
        horizon_steps=400,
    )
    assert pinned.learning_rate(200) == cosine.learning_rate(200)
    assert pinned.learning_rate(700) == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="adamw_optimizer.horizon_steps must be positive"):
        adamw_optimizer(10, learning_rate=1e-3, warmup_steps=0, horizon_steps=0)


# ------------------------------------------------------- the plug-and-play arms
PNP_PARAMS = {
    "dense": {"kernel": jnp.arange(6.0).reshape(2, 3) / 10 - 0.2, "bias": jnp.ones(3) / 4},
    "ln": {"scale": jnp.ones(3)},
}
PNP_GAINS = {r"dense/kernel$": 2.0}


def _pnp_grads(step: int):
    return jax.tree_util.tree_map(lambda p: jnp.cos(p * step) - 0.3, PNP_PARAMS)


def _sigma(path, shape):
    """Section 5 by hand: kernel sqrt(gain / fan_in) = sqrt(2 / 2), bias and scale 0.5."""
    return {"kernel": 1.0, "bias": 0.5, "scale": 0.5}[path[-1]]


def _updates(tx, steps: int) -> list:
    state, out = tx.init(PNP_PARAMS), []
    for step in range(1, steps + 1):
        updates, state = tx.update(_pnp_grads(step), state, PNP_PARAMS)
        out.append(updates)
    return out


@pytest.mark.parametrize("variant", ["inverse_square", "inverse_time"])
def test_pnp_arm_is_adam_plug_and_play_with_the_familys_sigma(variant: str):
    import amos
    from launch.optimizers import adam_pnp_optimizer

    spec = adam_pnp_optimizer(
        1000, variant=variant, learning_rate=0.05, half_life=10.0, b2=0.99, gains=PNP_GAINS
    )
    assert (
        spec.name == {"inverse_square": "adam_pnp_isq", "inverse_time": "adam_pnp_itime"}[variant]
    )
    direct = amos.adam_plug_and_play(
        0.05, _sigma, b1=0.9, b2=0.99, eps=1e-8, variant=variant, half_life=10.0
    )
    for ours, theirs in zip(_updates(spec.tx, 4), _updates(direct, 4), strict=True):
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
            assert jnp.allclose(a, b, rtol=1e-6, atol=1e-9), variant
    # The first update by hand: Adam's first direction is sign(g) (|u_i| = 1, ||u|| =
    # sqrt(k)), the decay is 1, so delta = -(alpha_0 sigma sign(g) + alpha_0**2 / 2 theta).
    first = _updates(spec.tx, 1)[0]
    g = _pnp_grads(1)
    for path, sigma in [
        (("dense", "kernel"), 1.0),
        (("dense", "bias"), 0.5),
        (("ln", "scale"), 0.5),
    ]:
        theta, grad, got = (
            PNP_PARAMS[path[0]][path[1]],
            g[path[0]][path[1]],
            first[path[0]][path[1]],
        )
        expected = -(0.05 * sigma * jnp.sign(grad) + 0.05**2 / 2 * theta)
        assert jnp.allclose(got, expected, rtol=1e-5), path


def test_pnp_learning_rate_and_warmup():
    """The logged rate alpha_0 * w_t * d_t: both variants halve at t = T; the warmup
    scales the whole update by min(1, n / W) at the 1-based step n."""
    import amos
    from launch.optimizers import adam_pnp_optimizer

    for variant in ("inverse_square", "inverse_time"):
        spec = adam_pnp_optimizer(0, variant=variant, learning_rate=0.1, half_life=10.0)
        assert spec.learning_rate(1) == pytest.approx(0.1)
        assert spec.learning_rate(11) == pytest.approx(0.05, rel=1e-6)  # t = 10 = T
    itime = adam_pnp_optimizer(0, variant="inverse_time", learning_rate=0.1, half_life=10.0)
    assert itime.learning_rate(31) == pytest.approx(0.1 / 4, rel=1e-6)  # 1 / (30/10 + 1)
    isq = adam_pnp_optimizer(0, variant="inverse_square", learning_rate=0.1, half_life=10.0)
    assert isq.learning_rate(31) == pytest.approx(0.1 / (3 * (2**0.5 - 1) + 1) ** 2, rel=1e-6)

    warm = adam_pnp_optimizer(
        0, variant="inverse_time", learning_rate=0.1, half_life=10.0, warmup_steps=4, gains={}
    )
    assert [warm.learning_rate(n) for n in (1, 2, 4)] == pytest.approx(
        [0.025, 0.05 / 1.1, 0.1 / 1.3]
    )
    plain = amos.adam_plug_and_play(
        0.1,
        amos.default_eta_fn(overrides={r"(^|/)(scale|gamma)$": 0.5}),
        variant="inverse_time",
        half_life=10.0,
    )
    for n, (ours, theirs) in enumerate(zip(_updates(warm.tx, 6), _updates(plain, 6)), start=1):
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
            assert jnp.allclose(a, min(1.0, n / 4) * b, rtol=1e-6, atol=1e-9), n


def test_pnp_sigma_defaults_to_the_amos_rules_gin_binds():
    """Without gains given, sigma follows the model gin file's amos_optimizer rules."""
    import gin

    import launch.configurables  # noqa: F401
    from launch.optimizers import adam_pnp_optimizer

    by_hand = adam_pnp_optimizer(
        0, variant="inverse_square", learning_rate=0.05, half_life=10.0, gains=PNP_GAINS
    )
    gin.clear_config()
    try:
        gin.parse_config("amos_optimizer.gains = {'dense/kernel$': 2.0}")
        from_gin = adam_pnp_optimizer(
            0, variant="inverse_square", learning_rate=0.05, half_life=10.0
        )
    finally:
        gin.clear_config()
    plain = adam_pnp_optimizer(0, variant="inverse_square", learning_rate=0.05, half_life=10.0)
    ours, theirs, other = (_updates(s.tx, 1)[0] for s in (from_gin, by_hand, plain))
    assert jnp.allclose(ours["dense"]["kernel"], theirs["dense"]["kernel"])
    # Gain 1: sigma sqrt(1/2) instead of 1.
    assert not jnp.allclose(other["dense"]["kernel"], theirs["dense"]["kernel"])


def test_pnp_arm_names_the_binding_it_rejects():
    from experiments.errors import ConfigError
    from launch.optimizers import adam_pnp_optimizer

    ok = dict(variant="inverse_square", learning_rate=0.05, half_life=10.0)
    for change, culprit in [
        ({"learning_rate": 0.0}, r"adam_pnp_isq_optimizer.learning_rate \(PNP_LR\)"),
        ({"half_life": -1.0}, r"adam_pnp_isq_optimizer.half_life \(PNP_HALF_LIFE\)"),
        ({"b2": 1.0}, r"\(PNP_B2\)"),
        ({"q": float("nan")}, r"\(PNP_Q\)"),
        ({"variant": "linear"}, "variant 'linear' is not one of"),
        ({"eta_overrides": {"(": 1.0}}, "sigma from amos_optimizer.gains / eta_overrides"),
    ]:
        with pytest.raises(ConfigError, match=culprit):
            adam_pnp_optimizer(0, **{**ok, **change})
    # A variable the eta rules cannot name is a ConfigError at init, naming it.
    spec = adam_pnp_optimizer(0, **ok, gains={})
    with pytest.raises(ConfigError, match="'dense/mystery'.*gin bindings: amos_optimizer.gains"):
        spec.tx.init({"dense": {"mystery": jnp.ones((2, 2))}})


def test_each_arm_declares_what_the_study_tunes(tmp_path, monkeypatch):
    """The study reads an arm's knobs from its factory's `@tuned` declaration, found through
    the arm's optimizer file; a factory without one is an error naming the file."""
    from experiments.errors import ConfigError
    from launch import optimizers
    from launch.run import OPTIMIZERS

    for arm in OPTIMIZERS:
        tuning = optimizers.arm_tuning(arm)
        assert tuning.knob in tuning.labels
        assert all(k.name in tuning.labels for k in tuning.design)
    adamw = optimizers.arm_tuning("adamw")
    assert (adamw.knob, adamw.coupled) == ("ADAMW_LR", ("ADAMW_MIN_LR",))
    assert adamw.horizon_binding == "adamw_optimizer.horizon_steps"
    assert optimizers.arm_tuning("amos").horizon_binding is None
    monkeypatch.setattr(optimizers, "OPTIMIZER_FILES", tmp_path)
    (tmp_path / "plain.gin").write_text("train.optimizer = @adam_pnp_optimizer\n")
    with pytest.raises(ConfigError, match="plain.gin: its factory adam_pnp_optimizer declares no"):
        optimizers.arm_tuning("plain")
    with pytest.raises(ConfigError, match="no optimizer arm 'sgd'"):
        optimizers.arm_tuning("sgd")


def test_xi_guidance_is_one_over_the_root_of_the_batches_an_epoch():
    from experiments.errors import ConfigError
    from experiments.task import ObjectiveTask
    from launch.optimizers import xi_guidance

    class Task(ObjectiveTask):
        num_train_examples = 1600

    class Unsized(ObjectiveTask):
        pass

    assert xi_guidance(Task(), 16) == pytest.approx(0.1, rel=1e-12)  # N = 100 batches
    assert xi_guidance(Task(), 1) == pytest.approx(0.025, rel=1e-12)
    with pytest.raises(ConfigError, match=r"xi_guidance.task \(TASK\): Unsized .*set AMOS_XI"):
        xi_guidance(Unsized(), 16)
    with pytest.raises(ConfigError, match=r"xi_guidance.batch_size \(BATCH_SIZE\)"):
        xi_guidance(Task(), 0)
