"""Expert RL: the Flow-GRPO SDE sampler and its step log-probs, and the Flow-GRPO, AWFM and FPO losses.

Closed-form field: for data x ~ N(mu, s^2) per dim and eps ~ N(0, 1), x_t ~ N(t mu, t^2 s^2 + (1 - t)^2)
and the exact velocity E[x - eps | x_t] = mu + (t s^2 - (1 - t)) / (t^2 s^2 + (1 - t)^2) (x_t - t mu).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.action import flow
from ar1_jax.rl import flow_policy as fp

MU, S = 1.5, 0.5


def _rng():
    seed = np.random.SeedSequence().entropy % (2**31)
    print(f"seed {seed}")
    return np.random.default_rng(seed), jax.random.key(seed)


def _gauss_velocity(x, t):
    tt = t.reshape((-1,) + (1,) * (x.ndim - 1))
    var = tt**2 * S**2 + (1 - tt) ** 2
    return MU + (tt * S**2 - (1 - tt)) / var * (x - tt * MU)


def _linear_velocity(theta):
    return lambda x, t: theta * x


@functools.partial(jax.jit, static_argnums=(2, 3))
def _sample(noise, key, num_steps, noise_level):
    return fp.sde_sample(_gauss_velocity, noise, key, num_steps, noise_level)


def test_step_logp_by_hand():
    # v = x (theta = 1), a = 0.2, S = 2: t_grid [0, 0.5, 1], dt 0.5; sigma at t = 0 and 0.5 uses t_c = 0.5:
    # sigma = 0.2 sqrt(0.5 / 0.5) = 0.2, std = 0.2 sqrt(0.5) = 0.1414214, log std = -1.9560115.
    # step 0: x = [0.3, -0.2], v = x, score coefficient sigma^2 / (2 (1 - 0)) = 0.02 times (x - 0 v) = x:
    #   drift = [0.3 - 0.006, -0.2 + 0.004] = [0.294, -0.196], mean = x + 0.5 drift = [0.447, -0.298]
    #   next [0.4, -0.1]: diff [-0.047, 0.198], z^2 = [0.002209, 0.039204] / 0.02 = [0.11045, 1.9602]
    #   logp = -0.5 * 2.07065 - 2 (-1.9560115) - log(2 pi) = -1.035325 + 3.912023 - 1.8378771 = 1.0388209
    # step 1: x = [0.4, -0.1], t = 0.5, coefficient 0.04 / (2 * 0.5) = 0.04, x - t v = [0.2, -0.05]
    #   drift = [0.392, -0.098], mean = [0.596, -0.149]; next [0.5, 0.1]: diff [-0.096, 0.249]
    #   z^2 = [0.009216, 0.062001] / 0.02 = [0.4608, 3.10005] -> logp = -1.780425 + 3.912023 - 1.8378771 = 0.2937209
    states = jnp.array([[[[0.3, -0.2]]], [[[0.4, -0.1]]], [[[0.5, 0.1]]]])  # [S + 1 = 3, N = 1, A = 1, 2]
    lp = fp.step_logp(_linear_velocity(1.0), states, fp.time_grid(2), 0.2)
    np.testing.assert_allclose(lp, [[1.0388209, 0.2937209]], rtol=1e-5)
    means, stds, _ = fp.step_gaussians(_linear_velocity(1.0), states, fp.time_grid(2), 0.2)
    np.testing.assert_allclose(means[:, 0, 0], [[0.447, -0.298], [0.596, -0.149]], rtol=1e-5)
    np.testing.assert_allclose(stds, [0.2 * math.sqrt(0.5)] * 2, rtol=1e-6)
    # the Gaussian density itself, written out for one point
    y, m, sd = jnp.array([[1.0, 2.0]]), jnp.array([[0.5, 2.5]]), 0.5
    np.testing.assert_allclose(fp.gaussian_logp(y, m, sd), [-0.5 * 2 - 2 * math.log(0.5) - math.log(2 * math.pi)],
                               rtol=1e-6)


def test_sde_zero_noise_is_euler():
    _, key = _rng()
    noise = jax.random.normal(key, (64, 3, 2))
    euler = flow.euler_sample(_gauss_velocity, noise.shape, None, 10, noise=noise)
    traj = _sample(noise, key, 10, 0.0)
    np.testing.assert_allclose(traj.x_final, euler, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(traj.states[0], noise)
    np.testing.assert_array_equal(traj.states[-1], traj.x_final)
    assert traj.states.shape == (11, 64, 3, 2) and traj.logp.shape == (64, 10) and traj.means.shape == (10, 64, 3, 2)
    # a small noise level stays close to the ODE
    np.testing.assert_allclose(_sample(noise, key, 10, 1e-3).x_final, euler, atol=5e-3)


def test_sde_marginal_matches_gaussian_target():
    # 20000 samples x 2 dims; standard errors ~0.0018 (mean) and ~0.0013 (std). 50 Euler-Maruyama
    # steps leave a discretisation bias of a few 1e-3 in the std (the ODE's own Euler bias is larger).
    _, key = _rng()
    k_noise, k_sde = jax.random.split(key)
    noise = jax.random.normal(k_noise, (20000, 1, 2))
    traj = _sample(noise, k_sde, 50, 0.5)
    x = np.asarray(traj.x_final)
    assert abs(x.mean() - MU) < 0.01 and abs(x.std() - S) < 0.012, (x.mean(), x.std())
    assert np.all(np.isfinite(traj.logp))
    # the injected noise matters: the end point is not the ODE's map of the same noise
    euler = flow.euler_sample(_gauss_velocity, noise.shape, None, 50, noise=noise)
    assert np.mean(np.abs(x - np.asarray(euler))) > 0.05


def test_sample_logp_equals_recomputed_and_is_differentiable():
    _, key = _rng()
    noise = jax.random.normal(key, (8, 4, 2))
    traj = fp.sde_sample(_linear_velocity(0.7), noise, key, 4, 0.3)
    lp = fp.step_logp(_linear_velocity(0.7), traj.states, traj.t_grid, 0.3)
    np.testing.assert_allclose(lp, traj.logp, rtol=1e-5, atol=1e-4)  # same params: ratio 1

    def total(theta):
        return jnp.sum(fp.step_logp(_linear_velocity(theta), traj.states, traj.t_grid, 0.3))

    g = jax.grad(total)(0.7)
    h = 1e-2
    fd = (total(0.7 + h) - total(0.7 - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=2e-2)


def test_gaussian_step_kl():
    # diff 0.1 in each of 2 dims, std 0.1 -> 0.5 * (1 + 1) = 1; second step diff 0 -> 0
    mp = jnp.array([[[0.1, 0.1]], [[0.0, 0.0]]])  # [S = 2, N = 1, 2]
    kl = fp.gaussian_step_kl(mp, jnp.zeros_like(mp), jnp.array([0.1, 0.3]))
    np.testing.assert_allclose(kl, [[1.0, 0.0]], rtol=1e-5)


def test_flow_grpo_loss_by_hand():
    # log ratios [[log 1.1, log 1.5], [log 0.5, 0]], A = [1, -1], eps 0.2:
    #   sample 0: -1.1, -1.2 (1.5 clipped at 1.2); sample 1 (A = -1): r = 0.5 -> -min(-0.5, -0.8) = 0.8 (clipped), r = 1 -> 1
    #   mean = (-1.1 - 1.2 + 0.8 + 1) / 4 = -0.125, clip_frac 2/4; step 0 only: (-1.1 + 0.8) / 2 = -0.15
    old = jnp.array([[-3.0, -1.0], [2.0, 0.5]])
    new = old + jnp.log(jnp.array([[1.1, 1.5], [0.5, 1.0]]))
    adv = jnp.array([1.0, -1.0])
    loss, m = fp.expert_loss_fn("flow_grpo")(new, old, adv)
    np.testing.assert_allclose(loss, -0.125, rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], 0.5)
    np.testing.assert_allclose(m["ratio_mean"], (1.1 + 1.5 + 0.5 + 1.0) / 4, rtol=1e-5)
    loss, m = fp.flow_grpo_loss(new, old, adv, step_mask=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(loss, -0.15, rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], 0.5)
    # gradient: d(-r A)/dnew = -r A / 4 for the unclipped steps (1.1 and 1.0), 0 for the clipped ones
    g = jax.grad(lambda x: fp.flow_grpo_loss(x, old, adv)[0])(new)
    np.testing.assert_allclose(g, [[-1.1 / 4, 0.0], [0.0, 1.0 / 4]], rtol=1e-5, atol=1e-7)
    # KL term: + beta * mean(kl)
    cfg = fp.ExpertLossConfig(kl_beta=0.5)
    kl = jnp.array([[0.4, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(fp.flow_grpo_loss(new, old, adv, cfg=cfg, kl=kl)[0], -0.125 + 0.5 * 0.1, rtol=1e-5)


def test_awfm_weights_and_loss_by_hand():
    # exp weights, beta 1, cap 20: [e, 1, e^-1, min(e^5, 20) = 20], sum 24.0861612, times N = 4 / sum
    adv = jnp.array([1.0, 0.0, -1.0, 5.0])
    raw = np.array([math.e, 1.0, math.exp(-1), 20.0])
    w = fp.awfm_weights(adv)
    np.testing.assert_allclose(w, raw * 4 / raw.sum(), rtol=1e-5)  # [0.4514, 0.1661, 0.0611, 3.3214]
    relu = fp.ExpertLossConfig(awfm_weighting="relu")
    np.testing.assert_allclose(fp.awfm_weights(adv, relu), [4 / 6, 0, 0, 20 / 6], rtol=1e-6)
    # masking the A = 5 sample renormalises over the other three
    np.testing.assert_allclose(fp.awfm_weights(adv, mask=jnp.array([1, 1, 1, 0])), list(raw[:3] * 3 / raw[:3].sum()) + [0],
                               rtol=1e-5)
    # loss: pred = 0 and x - eps = c_i in every dim -> per-sample FM loss c_i^2 = [1, 4, 0, 0.25]
    c = jnp.array([1.0, 2.0, 0.0, 0.5])
    x = jnp.broadcast_to(c[:, None, None], (4, 3, 2))
    eps = jnp.zeros_like(x)
    np.testing.assert_allclose(fp.fm_per_sample(jnp.zeros_like(x), x, eps), [1, 4, 0, 0.25])
    loss, m = fp.awfm_loss(jnp.zeros_like(x), x, eps, adv)
    np.testing.assert_allclose(loss, np.sum(raw * np.array([1, 4, 0, 0.25])) / raw.sum(), rtol=1e-5)
    np.testing.assert_allclose(m["fm"], 5.25 / 4, rtol=1e-6)
    loss, _ = fp.awfm_loss(jnp.zeros_like(x), x, eps, adv, cfg=relu)
    np.testing.assert_allclose(loss, (1 * 1 + 5 * 0.25) / 6, rtol=1e-6)
    # all advantages <= 0 with relu weights: nothing to imitate, loss 0 (no NaN)
    loss, m = fp.awfm_loss(jnp.zeros_like(x), x, eps, -jnp.abs(adv), cfg=relu)
    assert float(loss) == 0.0 and np.isfinite(float(m["ess"]))
    # the gradient is the weighted FM gradient: d/dpred of w_i mean((pred - c_i)^2) / N = -2 w_i c_i / (6 N)
    g = jax.grad(lambda p: fp.awfm_loss(p, x, eps, adv)[0])(jnp.zeros_like(x))
    np.testing.assert_allclose(g[:, 0, 0], -2 * np.asarray(w) * np.asarray(c) / (6 * 4), rtol=1e-5, atol=1e-7)


def test_fpo_loss_by_hand():
    # ratio = exp(L_old - L_new): L_old = 1, L_new = 1 - log r with r = [1.1, 1.5], A = [1, 1], eps 0.2
    #   losses [-1.1, -1.2 (clipped)] -> -1.15, clip_frac 0.5; d(-r A / 2)/dL_new = r A / 2 = 0.55 (unclipped), 0
    old = jnp.array([1.0, 1.0])
    new = 1.0 - jnp.log(jnp.array([1.1, 1.5]))
    adv = jnp.array([1.0, 1.0])
    loss, m = fp.expert_loss_fn("fpo")(new, old, adv)
    np.testing.assert_allclose(loss, -1.15, rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], 0.5)
    g = jax.grad(lambda n: fp.fpo_loss(n, old, adv)[0])(new)
    np.testing.assert_allclose(g, [0.55, 0.0], rtol=1e-5, atol=1e-7)
    # [N, M] draws are averaged before the exp
    new_m = jnp.stack([new - 0.1, new + 0.1], axis=1)
    np.testing.assert_allclose(fp.fpo_loss(new_m, jnp.stack([old, old], 1), adv)[0], -1.15, rtol=1e-5)


def test_registry_validates_names():
    assert set(fp.EXPERT_LOSSES) == {"flow_grpo", "awfm", "fpo"}
    with pytest.raises(ValueError, match=r"unknown expert loss 'dppo'.*\['awfm', 'flow_grpo', 'fpo'\]"):
        fp.expert_loss_fn("dppo")
    with pytest.raises(ValueError, match="awfm_weighting"):
        fp.ExpertLossConfig(awfm_weighting="softmax")
