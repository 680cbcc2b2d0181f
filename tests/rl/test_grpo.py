"""Token-policy RL: advantages, dynamic sampling and the clipped losses against hand-computed numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ar1_jax.rl import grpo


def _rng():
    seed = np.random.SeedSequence().entropy % (2**31)
    print(f"seed {seed}")
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- advantages


def test_group_advantages_by_hand():
    # G = 2: r = [1, 3], mean 2, centred [-1, 1], var (ddof=1) = (1 + 1) / 1 = 2 -> [-1, 1] / (sqrt 2 + 1e-6).
    # G = 4: r = [0, 1, 2, 5], mean 2, centred [-2, -1, 0, 3], var = (4 + 1 + 0 + 9) / 3 = 14 / 3.
    adv2 = grpo.group_advantages(jnp.array([[1.0, 3.0]]))
    np.testing.assert_allclose(adv2, [[-1 / (math.sqrt(2) + 1e-6), 1 / (math.sqrt(2) + 1e-6)]], rtol=1e-6)
    adv4 = grpo.group_advantages(jnp.array([[0.0, 1.0, 2.0, 5.0], [3.0, 3.0, 3.0, 3.0]]))
    std = math.sqrt(14 / 3)  # 2.1602469
    np.testing.assert_allclose(adv4[0], np.array([-2, -1, 0, 3]) / (std + 1e-6), rtol=1e-6)  # [-0.926, -0.463, 0, 1.389]
    np.testing.assert_array_equal(adv4[1], np.zeros(4))  # a constant group: exactly 0, no NaN
    np.testing.assert_allclose(grpo.group_advantages(jnp.array([[0.0, 1, 2, 5]]), normalize_std=False),
                               [[-2, -1, 0, 3]])
    np.testing.assert_array_equal(grpo.group_advantages(jnp.array([[7.0]])), [[0.0]])  # G = 1


def test_drgrpo_and_rloo_by_hand():
    r = jnp.array([[0.0, 1.0, 2.0, 5.0], [4.0, 4.0, 4.0, 4.0]])
    np.testing.assert_allclose(grpo.ADVANTAGES["drgrpo"](r), [[-2, -1, 0, 3], [0, 0, 0, 0]])
    # RLOO: r_i - mean of the others: 0 - (1+2+5)/3 = -8/3, 1 - 7/3 = -4/3, 2 - 6/3 = 0, 5 - 3/3 = 4.
    np.testing.assert_allclose(grpo.ADVANTAGES["rloo"](r), [[-8 / 3, -4 / 3, 0, 4], [0, 0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(grpo.rloo_advantages(jnp.array([[1.0, 3.0]])), [[-2.0, 2.0]])  # 2/1 * [-1, 1]
    np.testing.assert_array_equal(grpo.rloo_advantages(jnp.array([[7.0]])), [[0.0]])


@pytest.mark.parametrize("name", sorted(grpo.ADVANTAGES))
def test_advantages_jit_vmap(name):
    rng = _rng()
    fn = grpo.advantage_fn(name)
    r = jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.float32)
    r = r.at[1, 0].set(0.5)  # one constant group
    eager = np.stack([np.asarray(fn(r[i])) for i in range(3)])
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(r), eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(r[0]), eager[0], rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(eager)) and np.all(eager[1, 0] == 0)
    # every estimator is centred within a group
    np.testing.assert_allclose(eager.sum(-1), 0.0, atol=1e-5)


def test_keep_groups():
    r = jnp.array([[1.0, 1, 1], [0, 1, 1], [2, 2, 2], [0.5, 0.5, 0.6]])
    np.testing.assert_array_equal(grpo.keep_groups(r), [False, True, False, True])
    np.testing.assert_array_equal(grpo.keep_groups(r, tol=0.2), [False, True, False, False])
    np.testing.assert_array_equal(jax.jit(grpo.keep_groups)(r), [False, True, False, True])


# ----------------------------------------------------------------------------- token losses

# The 2x3 example. Ratios r = exp(logp - old):
#   sequence 0, A = +1: r = [1.1, 1.5, 0.5]
#     1.1 inside [0.8, 1.28]: loss -1.1; 1.5 > 1.28 with A > 0: clipped, loss -1.28;
#     0.5 < 0.8 with A > 0: min(0.5, 0.8) = 0.5 is the unclipped term, loss -0.5 (not clipped).
#   sequence 1, A = -2: r = [0.5, (masked), 4.0]
#     0.5 < 0.8 with A < 0: -min(-1.0, -1.6) = 1.6, clipped; 4.0: -min(-8, -2.56) = 8, dual cap 3 * 2 = 6.
#   grpo = mean(mean(-1.1, -1.28, -0.5), mean(1.6, 6)) = mean(-0.96, 3.8) = 1.42
#   dapo = (-1.1 - 1.28 - 0.5 + 1.6 + 6) / 5 = 0.944
#   clip_frac 2/5, dual_clip_frac 1/5, ratio_mean (1.1 + 1.5 + 0.5 + 0.5 + 4) / 5 = 1.52
#   kl vs old (k3 with d = -log r): 1/r + log r - 1 = [0.0044011, 0.0721318, 0.3068528, 0.3068528, 0.6362944] -> mean 0.2653066
RATIOS = np.array([[1.1, 1.5, 0.5], [0.5, 1.2, 4.0]])
OLD = np.array([[-1.0, -2.0, -0.5], [-3.0, -1.0, -0.2]], np.float32)
ADV = jnp.array([1.0, -2.0])
MASK = jnp.array([[True, True, True], [True, False, True]])
CFG = grpo.PolicyLossConfig(eps_low=0.2, eps_high=0.28, dual_clip=3.0)


def _logp(ratios=RATIOS, garbage=True):
    lp = OLD + np.log(ratios)
    if garbage:
        lp[1, 1] = 80.0  # a masked position holding garbage must not leak (exp(81) overflows float32)
    return jnp.asarray(lp, jnp.float32), jnp.asarray(OLD)


def test_grpo_and_dapo_by_hand():
    lp, old = _logp()
    loss, m = grpo.policy_loss_fn("grpo")(lp, old, ADV, MASK, cfg=CFG)
    np.testing.assert_allclose(loss, 1.42, rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], 0.4, rtol=1e-6)
    np.testing.assert_allclose(m["dual_clip_frac"], 0.2, rtol=1e-6)
    np.testing.assert_allclose(m["ratio_mean"], 1.52, rtol=1e-5)
    np.testing.assert_allclose(m["kl"], (0.0044011 + 0.0721318 + 2 * 0.3068528 + 0.6362944) / 5, rtol=1e-4)
    loss_d, m_d = jax.jit(lambda *a: grpo.dapo_loss(*a, cfg=CFG))(lp, old, ADV, MASK)
    np.testing.assert_allclose(loss_d, 0.944, rtol=1e-5)
    np.testing.assert_allclose(m_d["clip_frac"], 0.4, rtol=1e-6)
    # dual clip off: the last token's loss is 8 -> mean(-0.96, (1.6 + 8) / 2) = 1.92
    off = grpo.PolicyLossConfig(eps_low=0.2, eps_high=0.28, dual_clip=None)
    np.testing.assert_allclose(grpo.grpo_loss(lp, old, ADV, MASK, cfg=off)[0], 1.92, rtol=1e-5)
    # symmetric clip 0.2 / 0.2: the 1.5 token is clipped at 1.2 -> mean(-(1.1 + 1.2 + 0.5) / 3, 3.8)
    sym = grpo.PolicyLossConfig(eps_low=0.2, eps_high=0.2, dual_clip=3.0)
    np.testing.assert_allclose(grpo.grpo_loss(lp, old, ADV, MASK, cfg=sym)[0], (-2.8 / 3 + 3.8) / 2, rtol=1e-5)
    # Dr. GRPO aggregation: token sums over L = 3: mean(-2.88 / 3, 7.6 / 3)
    drg = grpo.PolicyLossConfig(eps_low=0.2, eps_high=0.28, dual_clip=3.0, aggregation="seq_mean_token_sum")
    np.testing.assert_allclose(grpo.grpo_loss(lp, old, ADV, MASK, cfg=drg)[0], (-2.88 + 7.6) / 6, rtol=1e-5)


def test_grpo_k3_kl_to_reference():
    # d = ref - logp = [[0, 0.5, -0.5], [1, (masked), 0]]; k3 = e^d - d - 1 = [[0, 0.1487213, 0.1065307], [0.7182818, -, 0]]
    # loss = 1.42 + 0.1 * mean(0.2552520 / 3, 0.7182818 / 2) = 1.42 + 0.1 * 0.2221125
    lp, old = _logp()
    ref = (lp + jnp.array([[0.0, 0.5, -0.5], [1.0, 0.0, 0.0]])).at[1, 1].set(500.0)  # masked garbage: no inf/NaN
    cfg = grpo.PolicyLossConfig(eps_low=0.2, eps_high=0.28, dual_clip=3.0, kl_beta=0.1)
    loss, m = grpo.grpo_loss(lp, old, ADV, MASK, cfg=cfg, ref_logp=ref)
    np.testing.assert_allclose(loss, 1.42 + 0.1 * 0.2221125, rtol=1e-5)
    np.testing.assert_allclose(m["kl"], (0.1487213 + 0.1065307 + 0.7182818) / 5, rtol=1e-5)
    np.testing.assert_allclose(grpo.k3_kl(jnp.array(0.0), jnp.array(1.0)), math.e - 2, rtol=1e-6)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.grpo_loss(lp, old, ADV, MASK, cfg=cfg)
    # gspo with the same reference: sequence losses (-s0, 2 s1 with eps 0.1 as in test_gspo_by_hand) plus
    # 0.1 * each sequence's token-mean k3
    gcfg = grpo.PolicyLossConfig(eps_low=0.1, eps_high=0.1, dual_clip=None, kl_beta=0.1)
    loss, m = grpo.gspo_loss(lp, old, ADV, MASK, cfg=gcfg, ref_logp=ref)
    s0, s1 = 0.825 ** (1 / 3), math.sqrt(2)
    np.testing.assert_allclose(loss, (-s0 + 2 * s1) / 2 + 0.1 * 0.2221125, rtol=1e-5)
    np.testing.assert_allclose(m["kl"], (0.1487213 + 0.1065307 + 0.7182818) / 5, rtol=1e-5)


def test_grpo_gradient_by_hand():
    # All tokens counted, grpo weight 1 / (3 tokens * 2 sequences) per token; d(-r A)/dlogp = -r A.
    #   seq 0 (A = 1): r = 1.1 -> -1.1 / 6; r = 1.5 clipped -> 0; r = 0.5 unclipped -> -0.5 / 6
    #   seq 1 (A = -2): r = 0.5 clipped -> 0; r = 1.2 inside -> 2.4 / 6; r = 4 dual-clipped -> 0
    lp, old = _logp(garbage=False)
    g = jax.grad(lambda x: grpo.grpo_loss(x, old, ADV, jnp.ones((2, 3), bool), cfg=CFG)[0])(lp)
    np.testing.assert_allclose(g, [[-1.1 / 6, 0, -0.5 / 6], [0, 2.4 / 6, 0]], rtol=1e-5, atol=1e-7)
    # the old log-probs carry no gradient
    g_old = jax.grad(lambda o: grpo.grpo_loss(lp, o, ADV, jnp.ones((2, 3), bool), cfg=CFG)[0])(old)
    np.testing.assert_array_equal(g_old, 0.0)


def test_gspo_by_hand():
    # eps 0.1 / 0.1, no dual clip. Sequence ratios (masked token left out):
    #   s0 = (1.1 * 1.5 * 0.5) ** (1/3) = 0.825 ** (1/3) = 0.9378877 (inside), A = 1 -> loss -0.9378877
    #   s1 = (0.5 * 4) ** (1/2) = 1.4142136; A = -2 -> -min(-2.828427, -2.2) = 2.828427 (not clipped)
    #   A1 = +2 instead -> -min(2.828427, 2.2) = -2.2 (clipped)
    lp, old = _logp()
    cfg = grpo.PolicyLossConfig(eps_low=0.1, eps_high=0.1, dual_clip=None)
    s0, s1 = 0.825 ** (1 / 3), math.sqrt(2)
    loss, m = grpo.gspo_loss(lp, old, ADV, MASK, cfg=cfg)
    np.testing.assert_allclose(loss, (-s0 + 2 * s1) / 2, rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], 0.0)
    np.testing.assert_allclose(m["ratio_mean"], (s0 + s1) / 2, rtol=1e-5)
    adv = jnp.array([1.0, 2.0])
    loss, m = grpo.gspo_loss(lp, old, adv, MASK, cfg=cfg)
    np.testing.assert_allclose(loss, (-s0 - 2.2) / 2, rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], 0.5)
    # gradient reaches every counted token of sequence 0: d(-s0)/dlogp_j = -s0 / 3, then / 2 sequences
    g = jax.grad(lambda x: grpo.gspo_loss(x, old, adv, MASK, cfg=cfg)[0])(lp)
    np.testing.assert_allclose(g, [[-s0 / 6] * 3, [0, 0, 0]], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(grpo.POLICY_LOSSES))
def test_no_counted_tokens_gives_zero(name):
    lp, old = _logp()
    fn = grpo.policy_loss_fn(name)
    none = jnp.zeros((2, 3), bool)
    loss, m = fn(lp, old, ADV, none, cfg=CFG)
    assert float(loss) == 0.0 and all(np.isfinite(float(v)) for v in m.values())
    g = jax.grad(lambda x: fn(x, old, ADV, none, cfg=CFG)[0])(lp)
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("name", sorted(grpo.POLICY_LOSSES))
def test_on_policy_ratio_one(name):
    # logp == old_logp: ratio 1 everywhere, nothing clipped, kl 0, loss = -mean A (over sequences or tokens).
    rng = _rng()
    lp = jnp.asarray(-rng.uniform(0.1, 3.0, size=(4, 5)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=4), jnp.float32)
    loss, m = jax.jit(lambda *a: grpo.policy_loss_fn(name)(*a, cfg=CFG))(lp, lp, adv, jnp.ones((4, 5)))
    np.testing.assert_allclose(loss, -np.mean(adv), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([m["ratio_mean"], m["clip_frac"], m["kl"]], [1.0, 0.0, 0.0], atol=1e-6)


def test_token_logp_and_entropy_by_hand():
    # row 0: logsumexp(0, 1, 2) = 2 + log(1 + e^-1 + e^-2) = 2.4076059 -> logp(2) = -0.4076059;
    #   p = [0.0900306, 0.2447285, 0.6652410], H = 2.4076059 - (0.2447285 + 2 * 0.6652410) = 0.8323954
    # row 1: uniform over 3 -> logp = -log 3, H = log 3
    logits = jnp.array([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]], jnp.bfloat16)
    lp = grpo.masked_token_logp(logits, jnp.array([[2, 0]]))
    assert lp.dtype == jnp.float32
    np.testing.assert_allclose(lp, [[-0.4076059, -math.log(3)]], rtol=1e-6)
    np.testing.assert_array_equal(grpo.masked_token_logp(logits, jnp.array([[2, -1]]), jnp.array([[1, 0]]))[0, 1], 0.0)
    np.testing.assert_allclose(grpo.token_entropy(logits, jnp.array([[1, 0]])), 0.8323954, rtol=1e-6)
    np.testing.assert_allclose(grpo.token_entropy(logits, jnp.array([[1, 1]])), (0.8323954 + math.log(3)) / 2, rtol=1e-6)
    assert float(grpo.token_entropy(logits, jnp.zeros((1, 2)))) == 0.0
    rng = _rng()
    big = jnp.asarray(rng.normal(size=(2, 3, 7)) * 3, jnp.float32)
    tgt = jnp.asarray(rng.integers(0, 7, size=(2, 3)))
    ref = jnp.take_along_axis(jax.nn.log_softmax(big), tgt[..., None], -1)[..., 0]
    np.testing.assert_allclose(grpo.masked_token_logp(big, tgt), ref, rtol=1e-5, atol=1e-6)


def test_registries_validate_names():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'.*\['drgrpo', 'grpo', 'rloo'\]"):
        grpo.advantage_fn("ppo")
    with pytest.raises(ValueError, match=r"unknown policy loss 'ppo'.*\['dapo', 'grpo', 'gspo'\]"):
        grpo.policy_loss_fn("ppo")
    with pytest.raises(ValueError, match="aggregation"):
        grpo.PolicyLossConfig(aggregation="sum")
    assert grpo.advantage_fn("grpo") is grpo.group_advantages
