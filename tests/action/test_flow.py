"""Flow matching: interpolation, training times, loss, and Euler sampling against closed-form fields.

For data x ~ N(mu, S) and eps ~ N(0, I), x_t = t x + (1 - t) eps ~ N(t mu, St), St = t^2 S + (1-t)^2 I,
and the marginal velocity E[x - eps | x_t] = mu + (t S - (1 - t) I) St^-1 (x_t - t mu) is affine, so the
Euler sampler maps the noise affinely and its output mean and covariance follow a short recursion.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.action import flow as F
from ar1_jax.config import ActionConfig

CFG = ActionConfig()


def _rng():
    seed = np.random.SeedSequence().entropy % (2**31)
    print(f"seed {seed}")
    return np.random.default_rng(seed), jax.random.key(seed)


def _gaussian_velocity(mu, cov):
    mu = jnp.asarray(mu, jnp.float32)
    cov = jnp.asarray(cov, jnp.float32)
    eye = jnp.eye(mu.shape[-1])

    def velocity(x, t):  # x [B, D], t [B]
        tt = t[:, None, None]
        st = tt**2 * cov + (1 - tt) ** 2 * eye  # [B, D, D]
        gain = tt * cov - (1 - tt) * eye
        centred = x - t[:, None] * mu
        return mu + jnp.einsum("bij,bj->bi", gain, jnp.linalg.solve(st, centred[..., None])[..., 0])

    return velocity


def _euler_moments(mu, cov, steps):
    """Exact mean and covariance of the Euler sampler's output for the Gaussian field (float64)."""
    d = len(mu)
    m, c, eye = np.zeros(d), np.eye(d), np.eye(d)
    for i in range(steps):
        t, dt = i / steps, 1.0 / steps
        gain = (t * cov - (1 - t) * eye) @ np.linalg.inv(t * t * cov + (1 - t) ** 2 * eye)
        step = eye + dt * gain
        m = step @ m + dt * (mu - t * gain @ mu)
        c = step @ c @ step.T
    return m, c


def _random_gaussian(rng, d=2):
    mu = rng.uniform(-2, 2, d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    cov = q @ np.diag(rng.uniform(0.3, 3.0, d)) @ q.T
    return mu, cov


def test_interpolate_and_target():
    rng, _ = _rng()
    x = rng.normal(size=(4, 64, 2)).astype(np.float32)
    eps = rng.normal(size=(4, 64, 2)).astype(np.float32)
    t = rng.uniform(size=4).astype(np.float32)
    xt = np.asarray(F.interpolate(x, eps, t))
    np.testing.assert_allclose(xt, t[:, None, None] * x + (1 - t[:, None, None]) * eps, atol=1e-6)
    np.testing.assert_allclose(F.interpolate(x, eps, 0.0), eps)  # t = 0 is noise
    np.testing.assert_allclose(F.interpolate(x, eps, 1.0), x)  # t = 1 is data
    np.testing.assert_allclose(F.target_velocity(x, eps), x - eps)
    # d x_t / dt is the target velocity.
    d = jax.jvp(lambda s: F.interpolate(x, eps, s), (jnp.asarray(t),), (jnp.ones(4),))[1]
    np.testing.assert_allclose(d, x - eps, atol=1e-5)


def test_sample_time_range_and_mean():
    _, key = _rng()
    t = np.asarray(jax.jit(F.sample_time, static_argnums=(1, 2))(key, (200_000,), CFG))
    assert t.dtype == np.float32 and t.shape == (200_000,)
    assert t.min() >= 0.0 and t.max() <= CFG.flow_time_scale + 1e-7
    # s ~ Beta(1.5, 1): E[s] = 0.6, so E[t] = 0.999 * 0.4; Var[s] = 1.5 / (2.5^2 * 3.5).
    sd = CFG.flow_time_scale * np.sqrt(1.5 / (2.5**2 * 3.5)) / np.sqrt(t.size)
    assert abs(t.mean() - 0.999 * 0.4) < 5 * sd, (t.mean(), 0.999 * 0.4)
    # The density of t is 1.5 sqrt(1 - t/0.999) / 0.999: more mass near the noise end.
    assert np.mean(t < 0.5) == pytest.approx(1 - (1 - 0.5 / 0.999) ** 1.5, abs=0.005)


def test_noisy_inputs_shapes():
    rng, key = _rng()
    x = jnp.asarray(rng.normal(size=(8, 64, 2)), jnp.bfloat16)
    xt, t, eps = jax.jit(F.noisy_inputs, static_argnums=2)(key, x, CFG)
    assert xt.shape == x.shape and xt.dtype == jnp.bfloat16 and t.shape == (8,) and eps.shape == x.shape
    np.testing.assert_allclose(np.asarray(xt, np.float32), np.asarray(F.interpolate(x, eps, t), np.float32))


def test_loss_zero_and_finite_gradient():
    rng, _ = _rng()
    x = jnp.asarray(rng.normal(size=(4, 64, 2)), jnp.float32)
    eps = jnp.asarray(rng.normal(size=(4, 64, 2)), jnp.float32)
    true_v = x - eps
    assert float(F.loss(true_v, x, eps)) == 0.0
    g = jax.grad(F.loss)(true_v, x, eps)
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    pred = true_v + jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    value, g = jax.value_and_grad(F.loss)(pred, x, eps)
    np.testing.assert_allclose(value, np.mean(np.square(np.asarray(pred - true_v))), rtol=1e-5)
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


def test_loss_mask():
    rng, _ = _rng()
    x, eps, pred = (jnp.asarray(rng.normal(size=(3, 64, 2)), jnp.float32) for _ in range(3))
    err = np.square(np.asarray(pred - (x - eps)))
    sample_mask = np.array([1, 0, 1], bool)
    np.testing.assert_allclose(F.loss(pred, x, eps, sample_mask), err[sample_mask].mean(), rtol=1e-5)
    step_mask = rng.uniform(size=(3, 64)) < 0.5
    np.testing.assert_allclose(F.loss(pred, x, eps, step_mask), err[step_mask].mean(), rtol=1e-5)
    assert float(F.loss(pred, x, eps, np.zeros(3, bool))) == 0.0
    g = jax.grad(F.loss)(pred, x, eps, sample_mask)
    np.testing.assert_array_equal(np.asarray(g)[1], 0.0)


def test_loss_parts_with_the_whole_denominator_add_up_to_the_whole_mean():
    rng, _ = _rng()
    x, eps, pred = (jnp.asarray(rng.normal(size=(6, 64, 2)), jnp.float32) for _ in range(3))
    mask = np.array([1, 1, 1, 0, 1, 0], bool)  # 3 valid samples in the first half, 1 in the second
    whole = float(F.loss(pred, x, eps, mask))
    den = mask.sum() * 64 * 2
    parts = [float(F.loss(pred[s], x[s], eps[s], mask[s], denominator=den)) for s in (slice(0, 3), slice(3, 6))]
    np.testing.assert_allclose(sum(parts), whole, rtol=1e-5)
    # The parts' own means do not average to it when the valid samples are uneven.
    own = [float(F.loss(pred[s], x[s], eps[s], mask[s])) for s in (slice(0, 3), slice(3, 6))]
    assert abs(np.mean(own) - whole) > 1e-3 * whole


def test_euler_time_grid_and_jit():
    _, key = _rng()

    def velocity(x, t):
        assert t.shape == (5,) and t.dtype == jnp.float32  # per batch element
        return jnp.broadcast_to(t[:, None, None], x.shape)

    sample = jax.jit(functools.partial(F.euler_sample, velocity, (5, 64, 2), num_steps=10))
    noise = jax.random.normal(key, (5, 64, 2))
    out = sample(key)
    # x_1 = x_0 + sum_i dt * t_i with t_i = i / 10: 0.45.
    np.testing.assert_allclose(out, noise + 0.45, atol=1e-5)
    # A scalar time with batch_ndim=0, and explicit noise.
    out0 = F.euler_sample(lambda x, t: jnp.broadcast_to(t, x.shape), (5, 64, 2), None, 4, noise=noise, batch_ndim=0)
    np.testing.assert_allclose(out0, noise + (0 + 0.25 + 0.5 + 0.75) / 4, atol=1e-5)
    with pytest.raises(ValueError, match="key"):
        F.euler_sample(velocity, (5, 64, 2), None, 10)


@pytest.mark.parametrize("steps", [10, 200])
def test_euler_recovers_a_gaussian(steps):
    rng, key = _rng()
    mu, cov = _random_gaussian(rng)
    n = 20_000
    sample = jax.jit(functools.partial(F.euler_sample, _gaussian_velocity(mu, cov), (n, 2), num_steps=steps))
    out = np.asarray(sample(key), np.float64)
    mean, emp_cov = out.mean(0), np.cov(out.T)
    scale = np.sqrt(np.trace(cov) / 2)
    # The mean is exact for any number of steps (the path of the mean is straight).
    assert np.abs(mean - mu).max() < 0.05 * scale, (mean, mu)
    # The covariance is what the Euler recursion predicts, within 5% ...
    _, euler_cov = _euler_moments(mu, cov, steps)
    assert np.abs(emp_cov - euler_cov).max() < 0.05 * np.abs(euler_cov).max(), (emp_cov, euler_cov)
    if steps >= 200:  # ... and with enough steps it is the target's.
        assert np.abs(emp_cov - cov).max() < 0.05 * np.abs(cov).max(), (emp_cov, cov)
    else:  # With 10 steps Euler shrinks the variance by roughly a quarter on this path.
        assert np.trace(euler_cov) < 0.9 * np.trace(cov)


def test_euler_on_a_two_component_mixture():
    rng, key = _rng()
    weights = np.array([0.3, 0.7])
    mus = np.array([[-3.0, 1.0], [2.5, -1.5]])
    var = 0.25  # isotropic components

    def velocity(x, t):
        tt = t[:, None]
        st = tt**2 * var + (1 - tt) ** 2  # [B, 1]
        logits = []
        vels = []
        for w, m in zip(weights, mus):
            centred = x - tt * m
            logits.append(np.log(w) - 0.5 * jnp.sum(centred**2, -1) / st[:, 0] - jnp.log(st[:, 0]))
            vels.append(m + (tt * var - (1 - tt)) / st * centred)
        post = jax.nn.softmax(jnp.stack(logits, -1), axis=-1)  # [B, 2]
        return jnp.einsum("bk,kbd->bd", post, jnp.stack(vels))

    n = 20_000
    for steps in (10, 100):
        out = np.asarray(jax.jit(functools.partial(F.euler_sample, velocity, (n, 2), num_steps=steps))(key))
        nearest = np.argmin(((out[:, None, :] - mus[None]) ** 2).sum(-1), axis=1)
        frac = np.bincount(nearest, minlength=2) / n
        assert np.abs(frac - weights).max() < 0.05, (steps, frac)  # the split is right after 10 steps
        if steps >= 100:  # the components sharpen onto their means with finer steps
            for k in range(2):
                got = out[nearest == k]
                assert np.abs(got.mean(0) - mus[k]).max() < 0.05, (k, got.mean(0))
                assert abs(got.var(0).mean() - var) < 0.1 * var, (k, got.var(0))
