"""GPTQ (written here) against RTN on the same weights, inputs and grid."""
import pytest
import torch

from qbench.model import new_model
from qbench.quant.gptq import Hessian, gptq_quantize
from qbench.quant.rtn import rtn_weight


def rel(X, A, W):
    return float((X @ A.T - X @ W.T).norm() / (X @ W.T).norm())


def correlated(n, d, g):
    """Two draws (calibration, held-out) of correlated inputs from one distribution."""
    mix = torch.eye(d) + 2 * torch.randn(d, d, generator=g) / d ** 0.5
    out = []
    for _ in range(2):
        X = torch.randn(n, d, generator=g) @ mix
        X[:, :4] *= 8   # a few outlier features, as in trained transformers
        out.append(X)
    return out


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("group_size,symmetric,act_order,static_groups", [
    (None, False, False, False), (32, True, False, False), (32, False, True, False), (32, False, True, True)])
def test_gptq_output_error_well_below_rtn(bits, group_size, symmetric, act_order, static_groups):
    g = torch.Generator().manual_seed(bits)
    d_in, d_out = 128, 96
    X, X_test = correlated(4096, d_in, g)
    W = torch.randn(d_out, d_in, generator=g) * 0.02
    H = Hessian(d_in, "cpu")
    for chunk in X.split(1000):
        H.add(chunk)
    Q, info = gptq_quantize(W, H.H, bits, group_size, symmetric, damp=0.01, act_order=act_order,
                            static_groups=static_groups, block_size=32)
    R = rtn_weight(W, bits, group_size, symmetric)
    assert Q.shape == W.shape and torch.isfinite(Q).all()
    assert not torch.equal(Q, W)
    # on the calibration inputs and on held-out inputs from the same distribution
    assert rel(X, Q, W) < 0.75 * rel(X, R, W), (rel(X, Q, W), rel(X, R, W))
    assert rel(X_test, Q, W) < 0.8 * rel(X_test, R, W)
    # every quantized row lies on a (2^bits)-level grid per group
    grp = group_size or d_in
    levels = Q.reshape(d_out, d_in // grp, grp) if not act_order or static_groups else None
    if levels is not None:
        n_levels = max(len(torch.unique(row)) for row in levels.reshape(-1, grp))
        assert n_levels <= 2 ** bits


def test_gptq_on_real_layer_inputs_beats_rtn():
    """Inputs of every linear layer of a tiny model on random tokens (in-sample, the GPTQ
    objective): GPTQ's summed output error is well below RTN's, and no layer is worse."""
    m = new_model("softmax", seed=0, hidden_size=128, num_hidden_layers=2, num_heads=4, num_kv_heads=2,
                  vocab_size=256, max_position_embeddings=128)
    ids = torch.randint(0, 256, (16, 64), generator=torch.Generator().manual_seed(0))
    xs, hooks = {}, []
    for n, mod in m.named_modules():
        if n.endswith("_proj"):
            def grab(mod, i, o, n=n):
                xs.setdefault(n, i[0].reshape(-1, i[0].shape[-1]))
            hooks.append(mod.register_forward_hook(grab))
    with torch.no_grad():
        m(ids)
    for h in hooks:
        h.remove()
    tot_g = tot_r = 0.0
    for n, X in xs.items():
        W = m.get_submodule(n).weight.data
        H = Hessian(X.shape[1], "cpu")
        H.add(X)
        Q, _ = gptq_quantize(W, H.H, 4, 32, False)
        R = rtn_weight(W, 4, 32, False)
        eg, er = rel(X, Q, W), rel(X, R, W)
        assert eg < er, (n, eg, er)
        tot_g, tot_r = tot_g + eg ** 2, tot_r + er ** 2
    assert tot_g < 0.6 * tot_r


def test_gptq_dead_inputs_and_singular_hessian():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 32, generator=g)
    X[:, 5] = 0                      # a dead input feature
    X = torch.cat([X, X[:, :8]], 1)  # duplicated features: H singular without damping
    W = torch.randn(16, 40, generator=g)
    H = Hessian(40, "cpu")
    H.add(X)
    Q, info = gptq_quantize(W, H.H, 4, None, False, damp=0.01)
    assert torch.isfinite(Q).all() and (Q[:, 5] == 0).all()



def _recipe(method, bits, samples=16, seq_len=64, **weight):
    from qbench.quant import parse_recipe

    d = {"name": f"test-{method}", "method": method, "bits": [bits],
         "weight": {"group_size": 32, "symmetric": False, **weight}}
    if method == "gptq":
        d["calib"] = {"samples": samples, "seq_len": seq_len, "seed": 0}
    return parse_recipe(d)


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_through_quantize_beats_rtn_on_model_output(bits):
    """Whole model, sequential over blocks: same grid (group 32, asymmetric); GPTQ's logits are
    closer to full precision than RTN's on the calibration batch and on held-out tokens."""
    import copy

    from qbench.quant import quantize

    base = new_model("softmax", seed=0, hidden_size=128, num_hidden_layers=2, num_heads=4, num_kv_heads=2,
                     vocab_size=256, max_position_embeddings=128)
    g = torch.Generator().manual_seed(0)
    calib, test = torch.randint(0, 256, (16, 64), generator=g), torch.randint(0, 256, (16, 64), generator=g)
    with torch.no_grad():
        ref_c, ref_t = base(calib).logits, base(test).logits
    errs = {}
    for method in ("rtn", "gptq"):
        m = copy.deepcopy(base)
        report = quantize(m, _recipe(method, bits), bits, calib if method == "gptq" else None)
        with torch.no_grad():
            errs[method] = (float((m(calib).logits - ref_c).norm() / ref_c.norm()),
                            float((m(test).logits - ref_t).norm() / ref_t.norm()))
        if method == "gptq":
            assert report.extra["gptq"]["sequential_blocks"] == "model.layers"
    assert errs["gptq"][0] < 0.8 * errs["rtn"][0], errs
    assert errs["gptq"][1] < errs["rtn"][1], errs


def test_gptq_on_a_model_without_blocks_and_on_a_transformers_llama():
    """Any torch model: no nn.ModuleList of blocks (full-model passes), and transformers'
    LlamaForCausalLM (blocks called with keyword arguments)."""
    import copy

    import transformers

    from qbench.quant import load_recipe, quantize

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(64, 64)
            self.up_proj = torch.nn.Linear(64, 128, bias=False)
            self.down_proj = torch.nn.Linear(128, 64, bias=True)

        def forward(self, ids):
            return self.down_proj(torch.relu(self.up_proj(self.emb(ids))))

    torch.manual_seed(0)
    plain = Plain()
    calib = torch.randint(0, 64, (16, 64), generator=torch.Generator().manual_seed(1))
    report = quantize(plain, _recipe("gptq", 4), 4, calib)
    assert report.layers_quantized == 2 and report.extra["gptq"]["sequential_blocks"] is None

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    llama = transformers.LlamaForCausalLM(cfg).eval()
    ref = llama(calib[:2]).logits
    w4a4 = load_recipe("w4a-rtn").with_axes(act_bits=4)
    w4a4 = w4a4.replace(weight={**w4a4.weight, "group_size": 64})   # the layers are 64 wide
    for recipe, data in ((_recipe("gptq", 4), calib), (w4a4, None)):
        m = copy.deepcopy(llama)
        r = quantize(m, recipe, 4, data)
        assert r.layers_quantized == 14 and r.skipped == ["lm_head"]
        with torch.no_grad():
            out = m(calib[:2]).logits
        assert torch.isfinite(out).all() and not torch.allclose(out, ref)


# ----------------------------------------------------------------- shared-input groups, fewer forwards
@pytest.mark.parametrize("group_size,symmetric,act_order,static_groups", [
    (None, False, False, False), (32, True, False, False), (32, False, True, False), (32, False, True, True)])
def test_group_of_layers_is_bit_identical_to_each_layer_alone(group_size, symmetric, act_order, static_groups):
    """q/k/v (or gate/up) share one Hessian: quantizing their stacked rows in one column loop gives
    exactly what each gets alone (rows are independent in GPTQ)."""
    from qbench.quant.gptq import gptq_quantize_group

    g = torch.Generator().manual_seed(3)
    X, _ = correlated(2048, 128, g)
    X[:, 7] = 0   # a dead input
    H = Hessian(128, "cpu")
    H.add(X)
    Ws = [torch.randn(rows, 128, generator=g) * 0.02 for rows in (96, 32, 32)]
    Qs, infos = gptq_quantize_group(Ws, H.H, 3, group_size, symmetric, 0.01, act_order, static_groups, 32)
    for W, Q, info in zip(Ws, Qs, infos):
        alone, info_alone = gptq_quantize(W, H.H, 3, group_size, symmetric, 0.01, act_order, static_groups, 32)
        assert torch.equal(Q, alone)
        assert info["damp"] == info_alone["damp"] and info["loss"] == pytest.approx(info_alone["loss"], rel=1e-5)


def _block_inputs(model, ids):
    """Inputs of every linear of model.layers.0 in a full-precision forward."""
    xs, hooks = {}, []

    def grab(mod, inp, out, n):
        xs.setdefault(n, inp[0])   # returns None: the module's output stays

    for n, mod in model.named_modules():
        if n.startswith("model.layers.0.") and n.endswith("_proj"):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=n: grab(m, i, o, n)))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return xs


@pytest.mark.parametrize("true_sequential", [True, False])
def test_model_walk_equals_per_layer_gptq_on_the_first_block(true_sequential):
    """Through quantize(): the layers of the first block that see full-precision inputs (its first
    stage; the whole block without true_sequential) get exactly per-layer GPTQ on their own
    Hessians, as before the shared-Hessian walk."""
    import copy

    from qbench.quant import quantize

    base = new_model("softmax", seed=1, hidden_size=64, num_hidden_layers=2, num_heads=4, vocab_size=256,
                     max_position_embeddings=64)
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(2))
    xs = _block_inputs(base, ids)
    recipe = _recipe("gptq", 4, samples=8, seq_len=32, true_sequential=true_sequential)
    m = copy.deepcopy(base)
    quantize(m, recipe, 4, ids)
    w = recipe.weight
    stage = ["q_proj", "k_proj", "v_proj"] if true_sequential else list({n.split(".")[-1] for n in xs})
    for short in stage:
        n = next(x for x in xs if x.endswith("." + short))
        H = Hessian(xs[n].shape[-1], "cpu")
        H.add(xs[n])
        want, _ = gptq_quantize(base.get_submodule(n).weight.data, H.H, 4, w["group_size"], w["symmetric"],
                                w["damp"], w["act_order"], w["static_groups"], w["block_size"])
        assert torch.equal(m.get_submodule(n).weight.data, want), n


def test_stage_forwards_stop_once_the_stage_has_its_inputs():
    """The q/k/v stage never runs attention: its forwards stop after v_proj. Per block, attention
    runs once to find the stages, once per later stage (o, gate/up, down) and once to pass the
    quantized block's output on (not after the last block)."""
    from qbench.quant import quantize

    m = new_model("softpick", seed=0, hidden_size=64, num_hidden_layers=3, num_heads=4, vocab_size=256,
                  max_position_embeddings=64)
    calls = []
    for i, block in enumerate(m.model.layers):
        block.attn.o_proj.register_forward_pre_hook(lambda mod, inp, i=i: calls.append(i))
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    quantize(m, _recipe("gptq", 4, samples=8, seq_len=32), 4, ids)
    assert [calls.count(i) for i in range(3)] == [1 + 3 + 1, 1 + 3 + 1, 1 + 3]
