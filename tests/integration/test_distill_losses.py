"""Every distillation loss term, on the same tensors, agrees across frameworks and with a float64 numpy reference
written here from the papers' definitions (not from either backend's code); hooks give the same feature maps on
both; the layer table the recipe checks against is what the two frameworks' models really have."""
from __future__ import annotations

import json

import numpy as np
import pytest

from backends.base import DistillPlan, DistillTerm
from common.config import ModelConfig
from common.metrics import hinton_kd_loss
from tests.integration.conftest import transfer

pytestmark = [pytest.mark.torch, pytest.mark.paddle]

RNG = np.random.default_rng(0)
N, C = 32, 10
S_LOGITS = (RNG.normal(0, 3, (N, C))).astype(np.float32)
T_LOGITS = (RNG.normal(0, 3, (N, C))).astype(np.float32)
LABELS = RNG.integers(0, C, N)
T_FEAT = RNG.normal(0, 1, (N, 32, 4, 4)).astype(np.float32)
S_FEAT = (T_FEAT + RNG.normal(0, 0.7, T_FEAT.shape)).astype(np.float32)  # near the teacher: small losses too
S_NARROW = RNG.normal(0, 1, (N, 16, 4, 4)).astype(np.float32)
ADAPTER = RNG.uniform(-0.25, 0.25, (32, 16, 1, 1)).astype(np.float32)
FEATS_S = {"wide": S_FEAT, "narrow": S_NARROW}
FEATS_T = {"t": T_FEAT}


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def ref_kd(s, t, T):
    ls, lt = _log_softmax(s / T), _log_softmax(t / T)
    return T * T * (np.exp(lt) * (lt - ls)).sum(axis=1).mean()


def ref_ce(s, y):
    return -_log_softmax(s)[np.arange(len(y)), y].mean()


def ref_dkd(s, t, y, alpha, beta, T):
    """Zhao et al. 2022, eq. 7: binary target/non-target KL (TCKD) and KL among the non-target classes (NCKD)."""
    ps, pt = np.exp(_log_softmax(s / T)), np.exp(_log_softmax(t / T))
    idx = np.arange(len(y))
    bs = np.stack([ps[idx, y], 1 - ps[idx, y]], axis=1)
    bt = np.stack([pt[idx, y], 1 - pt[idx, y]], axis=1)
    tckd = (bt * (np.log(bt) - np.log(bs))).sum(axis=1).mean()
    mask = np.ones_like(ps, bool)
    mask[idx, y] = False
    qs = ps[mask].reshape(len(y), -1)
    qt = pt[mask].reshape(len(y), -1)
    qs, qt = qs / qs.sum(axis=1, keepdims=True), qt / qt.sum(axis=1, keepdims=True)
    nckd = (qt * (np.log(qt) - np.log(qs))).sum(axis=1).mean()
    return T * T * (alpha * tckd + beta * nckd)


def ref_adapter(x, w):
    """1x1 convolution then batch norm on the batch's statistics (training mode, gamma 1, beta 0)."""
    y = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), x)
    mean = y.mean(axis=(0, 2, 3), keepdims=True)
    var = y.var(axis=(0, 2, 3), keepdims=True)
    return (y - mean) / np.sqrt(var + 1e-5)


def ref_distance(a, b, kind):
    d = a - b
    return (d * d).mean() if kind == "mse" else np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5).mean()


def ref_attention(s, t, p):
    """Zagoruyko & Komodakis 2017: Q = vec(mean_c |A|^p), normalised; mean squared difference."""
    def q(f):
        a = (np.abs(f) ** p).mean(axis=1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    return ((q(s) - q(t)) ** 2).mean()


S64, T64, F_S, F_T, F_N = (a.astype(np.float64) for a in (S_LOGITS, T_LOGITS, S_FEAT, T_FEAT, S_NARROW))
CASES = [
    ("kd T=4", DistillTerm("kd", {"temperature": 4.0}), ref_kd(S64, T64, 4.0)),
    ("kd T=1", DistillTerm("kd", {"temperature": 1.0}), ref_kd(S64, T64, 1.0)),
    ("ce", DistillTerm("ce"), ref_ce(S64, LABELS)),
    ("hard_label", DistillTerm("hard_label"), ref_ce(S64, T_LOGITS.argmax(1))),
    ("dkd", DistillTerm("dkd", {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}), ref_dkd(S64, T64, LABELS, 1, 8, 4)),
    ("dkd T=2 a=.5 b=2", DistillTerm("dkd", {"alpha": 0.5, "beta": 2.0, "temperature": 2.0}),
     ref_dkd(S64, T64, LABELS, 0.5, 2, 2)),
    ("feature mse", DistillTerm("feature", {"distance": "mse"}, (("t", "wide"),), (None,)),
     ref_distance(F_S, F_T, "mse")),
    ("feature smooth_l1", DistillTerm("feature", {"distance": "smooth_l1"}, (("t", "wide"),), (None,)),
     ref_distance(F_S, F_T, "smooth_l1")),
    ("feature adapter", DistillTerm("feature", {"distance": "mse"}, (("t", "narrow"),), (ADAPTER,)),
     ref_distance(ref_adapter(F_N, ADAPTER), F_T, "mse")),
    ("attention p=2", DistillTerm("attention", {"p": 2.0}, (("t", "wide"), ("t", "narrow")), (None, None)),
     ref_attention(F_S, F_T, 2.0) + ref_attention(F_N, F_T, 2.0)),
    ("attention p=1", DistillTerm("attention", {"p": 1.0}, (("t", "wide"),), (None,)), ref_attention(F_S, F_T, 1.0)),
]


@pytest.mark.parametrize("name,term,ref", CASES, ids=[c[0] for c in CASES])
def test_each_term_agrees_across_frameworks_and_with_the_float64_reference(backends, name, term, ref):
    for b in backends:
        got = b.distill_loss(DistillPlan((term,)), [1.0], S_LOGITS, T_LOGITS, LABELS, FEATS_S, FEATS_T)
        assert abs(got - ref) <= 1e-6 * max(1.0, abs(ref)), (b.name, got, ref)
    tv, pv = (b.distill_loss(DistillPlan((term,)), [1.0], S_LOGITS, T_LOGITS, LABELS, FEATS_S, FEATS_T)
              for b in backends)
    assert abs(tv - pv) <= 1e-6 * max(abs(tv), 1e-3), (tv, pv)


def test_the_weighted_sum_and_the_two_term_hinton_form(backends):
    plan = DistillPlan(tuple(term for _, term, _ in CASES))
    scales = list(np.linspace(0.1, 2.0, len(CASES)))
    ref = sum(s * r for s, (_, _, r) in zip(scales, CASES))
    hinton = DistillPlan((DistillTerm("kd", {"temperature": 4.0}), DistillTerm("ce")))
    for b in backends:
        got = b.distill_loss(plan, scales, S_LOGITS, T_LOGITS, LABELS, FEATS_S, FEATS_T)
        assert abs(got - ref) <= 1e-6 * abs(ref)
        two = b.distill_loss(hinton, [0.9, 0.1], S_LOGITS, T_LOGITS, LABELS, {}, {})
        assert abs(two - hinton_kd_loss(S_LOGITS, T_LOGITS, LABELS, 4.0, 0.9)) < 1e-6 * max(1, abs(two))


def test_dkd_stays_finite_for_a_confident_student(backends):
    """A student sure of the target class has 1 - p_target ~ 0: computed in log space there is no log(0)."""
    s = S_LOGITS.copy()
    s[np.arange(N), LABELS] = 60.0
    for b in backends:
        value = b.distill_loss(DistillPlan((DistillTerm("dkd", {"alpha": 1.0, "beta": 8.0, "temperature": 1.0}),)),
                               [1.0], s, T_LOGITS, LABELS, {}, {})
        assert np.isfinite(value)


@pytest.mark.parametrize("arch,layers", [("resnet50", ["layer1", "layer2", "layer3", "layer4.2.conv3"]),
                                         ("mobilenet_v2", ["features.3", "features.6", "features.13"]),
                                         ("mobilenet_v3_small", ["features.0", "features.4", "features.12"])])
def test_hooks_give_the_same_feature_shapes_on_both_frameworks(backends, arch, layers):
    from common.stages.distill_layers import backend_layer_name
    tb, pb = backends
    tm, pm = transfer(tb, pb, arch)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ts = tb.feature_shapes(tm, layers, x)
    ps = pb.feature_shapes(pm, [backend_layer_name(arch, n, "paddle") for n in layers], x)
    assert [ts[n] for n in layers] == [ps[backend_layer_name(arch, n, "paddle")] for n in layers]
    assert all(calls == 1 for _, calls in ts.values())
    np.testing.assert_allclose(tb.predict(tm, x), pb.predict(pm, x), rtol=1e-4, atol=1e-4)  # models unchanged


def test_the_committed_layer_table_is_what_both_frameworks_have():
    """Regenerate with `python -m backends.layer_table > common/stages/distill_layers.json`."""
    from backends.layer_table import table
    from common.stages.distill_layers import TABLE
    assert json.loads(TABLE.read_text()) == json.loads(json.dumps(table()))
