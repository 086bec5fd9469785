"""The grid points every quantization test covers (tests/test_quant.py on CPU,
tests/test_quant_gpu.py on CUDA): each shipped recipe at each weight width it lists and, where
a sweep varies them as axes, at each KV width (8, 4, 2; fp8 for `kv`) or activation width (8, 4)."""
from qbench.quant import available_recipes, load_recipe

KV_AXIS = (8, 4, 2)
ACT_AXIS = (8, 4)


def axes_of(recipe) -> list[dict]:
    if recipe.kv_cache is not None:
        return [{"kv_bits": b} for b in KV_AXIS + (("fp8",) if recipe.name == "kv" else ())]
    if recipe.activation is not None and recipe.activation.format == "int":
        return [{"act_bits": a} for a in ACT_AXIS]
    return [{}]


def case_id(name, bits, axes) -> str:
    return "-".join([name, f"{bits}bit" if bits else "nobits", *(f"{k}{v}" for k, v in axes.items())])


def cases() -> list[tuple[str, int | None, dict]]:
    out = []
    for name in available_recipes():
        r = load_recipe(name)
        out += [(name, b, ax) for b in (r.bits or (None,)) for ax in axes_of(r)]
    return out


def recipe_at(name, axes):
    r = load_recipe(name)
    return r.with_axes(**axes) if axes else r
