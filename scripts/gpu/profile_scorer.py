"""Where our scorer's time goes on a random paper-size model (cProfile, CUDA synchronised at the
end of each scoring call, so time waiting for the GPU shows as the final .cpu() copies):
python3 scripts/gpu/profile_scorer.py SIZE OUT_FILE"""
import cProfile
import pstats
import sys
import time

import torch

from qbench.bench import models as bench_models
from qbench.eval.runner import evaluate, run_lm_eval

size, out = sys.argv[1], sys.argv[2]
model, tok, _ = bench_models.load_spec(f"random:{size}", "cuda", torch.bfloat16)
evaluate(model, tok, tasks="paper", limit=2, bootstrap_iters=0)   # warm-up
with open(out, "w") as f:
    for share in (True, False):
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        r = run_lm_eval(model, tok, tasks="paper", limit=None, bootstrap_iters=0, share_contexts=share)
        torch.cuda.synchronize()
        prof.disable()
        print(f"== share_contexts={share}: {time.perf_counter() - t:.2f} s, timing {r['timing']}, "
              f"stats {r['lm'].stats}", file=f)
        pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(30)
