"""Writing a diagnose_arms() result: Markdown (the paper's Table 2 layout), CSV, PNG and JSON."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

FILES = {"markdown": "diagnostics.md", "csv": "diagnostics.csv", "png": "diagnostics.png", "json": "diagnostics.json"}
PER_LAYER_COLUMNS = [("attn_in", "max \\|x\\| q/k/v in"), ("o_proj", "max \\|x\\| o_proj in"),
                     ("mlp_in", "max \\|x\\| gate/up in"), ("down_proj", "max \\|x\\| down_proj in")]


def _f(v, digits=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _g(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _pm(entry) -> str:
    return f"{_f(entry['value'])} ± {_f(entry['sd'])}"


def _models(result):
    """The arms' labels in the order they were diagnosed."""
    return list(result["models"])


def markdown_table(result: dict) -> str:
    """The paper's Table 2 layout, one row per model: value over all windows ± sd over sub-samples."""
    lines = ["| model | sink rate eps=0.2 / 0.3 (%) | hidden-state kurtosis | min / max activation | "
             "attention sparsity (%) |", "|---|---|---|---|---|"]
    for kind in _models(result):
        s = result["models"][kind]["summary"]
        lines.append(f"| {kind} | {_pm(s['sink_0.2'])} / {_pm(s['sink_0.3'])} | {_pm(s['kurtosis'])} | "
                     f"{_pm(s['min_act'])} / {_pm(s['max_act'])} | {_pm(s['sparsity'])} |")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    sample, defs = result["sample"], result["definitions"]
    kinds = _models(result)
    out = ["# Diagnostics (paper Table 2)", "",
           f"Sample: {sample['samples']} windows x {sample['seq_len']} tokens, seed {sample['seed']}, from "
           f"{sample['text']}; {sample['window_rule']}. Tokens sha256 {sample['tokens_sha256'][:16]}.", "",
           "Models: " + "; ".join(f"{k} `{m['path']}` ({m.get('format', 'qbench')}, "
                                  f"{m.get('architecture', 'QBenchForCausalLM')}, attention {m.get('attention', k)}, "
                                  f"hash {m['hash'][:12]}, {m['device']}, {m['dtype']}, attention statistics from the "
                                  f"{m['attention_path']} path)" for k, m in result["models"].items()),
           "", markdown_table(result),
           f"Each entry: the value over all windows ± the standard deviation over sub-samples ({defs['spread']}).",
           f"Sink rate: {defs['sink']}. Sparsity: {defs['sparsity']}. Kurtosis: {defs['kurtosis']}; "
           f"hidden states = {defs['hidden_states']}; min / max activation over the same values.", "",
           f"## Per layer ({' / '.join(kinds)})", "",
           "Max |x|: " + defs["linear_input_max_abs"] + ". Hidden kurtosis and min .. max: of that layer's block "
           "output. Sparsity and sink rate (eps 0.3) of that layer's attention.", ""]
    n_layers = max(result["models"][k]["num_layers"] for k in kinds)
    head = ["layer"] + [c for _, c in PER_LAYER_COLUMNS] + ["hidden kurtosis", "hidden min / max", "sparsity (%)",
                                                             "sink 0.3 (%)"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pair_of(getter, fmt=_f):
        return " / ".join(fmt(getter(result["models"][k]["per_layer"])) for k in kinds)

    for i in range(n_layers):
        row = [str(i)]
        row += [pair_of(lambda p: p["linear_input_max_abs"][g][i]) for g, _ in PER_LAYER_COLUMNS]
        row += [pair_of(lambda p: p["hidden_kurtosis"][i]),
                " / ".join(f"{_f(result['models'][k]['per_layer']['hidden_min'][i])} .. "
                           f"{_f(result['models'][k]['per_layer']['hidden_max'][i])}" for k in kinds),
                pair_of(lambda p: p["sparsity"][i]), pair_of(lambda p: p["sink_0.3"][i])]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    qe = result.get("quant_error")
    if qe is not None:
        out += [f"## Weight quantization error per layer ({' / '.join(kinds)})", "",
                f"From {qe['source']}: relative weight error ||W_q - W|| / ||W|| of each layer's linear layers, "
                "combined per layer as their RMS; overall = the report's size-weighted error.", ""]
        combos = sorted({(r["recipe"], r["bits"]) for r in qe["rows"]}, key=lambda c: (str(c[0]), -(c[1] or 0)))
        if not combos:
            out.append(f"No cell with a quantization report for these checkpoints (skipped: {qe['skipped']}).")
        else:
            head = ["recipe", "bits"] + [f"layer {i}" for i in range(n_layers)] + ["overall"]
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for recipe, bits in combos:
                rows = {r["model"]: r for r in qe["rows"] if (r["recipe"], r["bits"]) == (recipe, bits)}
                cells = [" / ".join(_g(rows[k]["per_layer"][i]) if k in rows and i < len(rows[k]["per_layer"])
                                    else "-" for k in kinds) for i in range(n_layers)]
                cells.append(" / ".join(_g(rows[k]["overall"]) if k in rows else "-" for k in kinds))
                out.append("| " + " | ".join([str(recipe), str(bits)] + cells) + " |")
        out.append("")
    return "\n".join(out)


def csv_text(result: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "metric", "layer", "module", "recipe", "bits", "value", "mean", "sd", "subsamples"])
    for kind in _models(result):
        m = result["models"][kind]
        for name, e in m["summary"].items():
            w.writerow([kind, name, "", "", "", "", repr(e["value"]), repr(e["mean"]), repr(e["sd"]),
                        " ".join(repr(v) for v in e["subsamples"])])
        p = m["per_layer"]
        for name in ("hidden_kurtosis", "hidden_min", "hidden_max", "sink_0.3", "first_token_attention_max_head",
                     "sparsity"):
            for i, v in enumerate(p[name]):
                w.writerow([kind, f"layer_{name}", i, "", "", "", repr(v), "", "", ""])
        for group, values in p["linear_input_max_abs"].items():
            for i, v in enumerate(values):
                w.writerow([kind, "layer_linear_input_max_abs", i, group, "", "", repr(v), "", "", ""])
        for module, v in p["linear_input_max_abs_by_module"].items():
            layer = module.split(".")[2]
            w.writerow([kind, "linear_input_max_abs", layer, module, "", "", repr(v), "", "", ""])
    for r in (result.get("quant_error") or {}).get("rows", []):
        for i, v in enumerate(r["per_layer"]):
            w.writerow([r["model"], "layer_weight_error", i, "", r["recipe"], r["bits"], repr(v), "", "", ""])
        if r["overall"] is not None:
            w.writerow([r["model"], "weight_error", "", "", r["recipe"], r["bits"], repr(r["overall"]), "", "", ""])
    return buf.getvalue()


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = _models(result)
    colors = {k: f"C{i % 10}" for i, k in enumerate(kinds)}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (a, b), (c, d) = axes
    b2 = b.twinx()
    for kind in kinds:
        p = result["models"][kind]["per_layer"]
        x = range(len(p["hidden_kurtosis"]))
        lin = p["linear_input_max_abs"]
        a.plot(x, lin["all"], "o-", color=colors[kind], label=f"{kind}: all linears")
        a.plot(x, lin["down_proj"], "s--", color=colors[kind], alpha=0.7, label=f"{kind}: down_proj")
        b.plot(x, p["hidden_kurtosis"], "o-", color=colors[kind], label=f"{kind}: kurtosis")
        b2.plot(x, [max(abs(lo), abs(hi)) for lo, hi in zip(p["hidden_min"], p["hidden_max"])], "^:",
                color=colors[kind], alpha=0.7, label=f"{kind}: max |h|")
        c.plot(x, p["sparsity"], "o-", color=colors[kind], label=f"{kind}: sparsity (%)")
        c.plot(x, [100 * v for v in p["first_token_attention_max_head"]], "s--", color=colors[kind], alpha=0.7,
               label=f"{kind}: max head attn to first token (%)")
    a.set(title="largest |input| of the linear layers", xlabel="layer", ylabel="max |x|")
    b.set(title="hidden states (block outputs)", xlabel="layer", ylabel="kurtosis (Pearson, solid)")
    b2.set_ylabel("max |h| (dotted)")
    c.set(title="attention", xlabel="layer", ylabel="%", ylim=(-2, 102))
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b, b2, c, d):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (a, b, c):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    qe = result.get("quant_error")
    if qe and qe["rows"]:
        combos = sorted({(r["recipe"], r["bits"]) for r in qe["rows"]}, key=lambda t: (str(t[0]), -(t[1] or 0)))
        cmap = plt.get_cmap("tab10" if len(combos) <= 10 else "tab20")
        for j, combo in enumerate(combos):
            for r in qe["rows"]:
                if (r["recipe"], r["bits"]) == combo and r["model"] in colors:
                    style = ("o-", "s--", "^:", "d-.")[kinds.index(r["model"]) % 4]
                    d.plot(range(len(r["per_layer"])), r["per_layer"], style, color=cmap(j % cmap.N),
                           label=f"{combo[0]} {combo[1]}-bit {r['model']}")
        d.set(title="weight quantization error per layer (" + ", ".join(
                  f"{('solid', 'dashed', 'dotted', 'dash-dot')[i % 4]} {k}" for i, k in enumerate(kinds)) + ")",
              xlabel="layer",
              ylabel="relative weight error (RMS over the layer's linears)")
        d.legend(fontsize=6, ncol=2)
        d.grid(alpha=0.3)
    else:
        d.axis("off")
        d.text(0.5, 0.5, "no quantization reports\n(qbench diagnose ... --results RESULTS_DIR)", ha="center",
               va="center")
    for ax in (a, b, b2, d):
        _auto_log(ax)
    s = result["sample"]
    fig.suptitle(f"{' vs '.join(kinds)} diagnostics: {s['samples']} x {s['seq_len']} tokens, seed {s['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _auto_log(ax, ratio=30.0) -> None:
    """Log scale when the plotted values span more than `ratio` (outliers), else linear."""
    ys = [float(y) for line in ax.get_lines() for y in line.get_ydata() if math.isfinite(float(y)) and float(y) > 0]
    if ys and max(ys) / min(ys) > ratio:
        ax.set_yscale("log")


def check_out_dir(out_dir) -> Path:
    """The output folder, refused (DiagnosticsError) when it exists as something else than a folder."""
    from .collect import DiagnosticsError

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DiagnosticsError(f"--out {out_dir}: exists and is not a folder")
    for parent in out_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise DiagnosticsError(f"--out {out_dir}: {parent} is not a folder")
    return out_dir


def write_diagnostics(result: dict, out_dir) -> dict[str, Path]:
    """Write diagnostics.{md,csv,png,json} into out_dir; returns {kind: path}."""
    out_dir = check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {k: out_dir / v for k, v in FILES.items()}
    files["markdown"].write_text(markdown(result))
    files["csv"].write_text(csv_text(result))
    files["json"].write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot(result, files["png"])
    return files
