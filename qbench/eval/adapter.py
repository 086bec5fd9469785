"""A fast, exact lm-eval scorer for any Hugging Face causal LM object (lm-eval model name "qbench").

`QBenchLM` is lm-eval's own `HFLM` with the two scoring paths replaced, so tokenization
(`tok_encode`, `_encode_pair`, the empty-context prefix token, add_bos_token, max_length) and
everything else (generate_until, chat templates) are HFLM's by construction. What changes is
how the token requests are run:

* tokenization is batched (one call of a fast tokenizer per list of distinct strings, checked
  to give the same ids as HFLM's one-string `tok_encode`);
* every request becomes the same model input HFLM builds ((context + continuation) truncated on
  the left to max_length + 1, minus the last token); inputs that are a prefix of another input
  are not run at all (a causal model's logits at those positions are the same), which covers
  HFLM's one-token "logits cache" and more;
* the answer choices of one context (multiple choice) run as one row where the model takes a
  visibility mask (qbench's models; not under attention-side quantizers): the context once, then
  each continuation, each seeing the context and itself at HFLM's positions (`_plan_rows`);
* the distinct inputs are sorted by length and packed into right-padded batches under a token
  budget (rows x padded length <= max_batch_tokens), no attention mask (as HFLM);
* the output layer runs only on the scored (continuation) positions: a forward pre-hook on
  `model.get_output_embeddings()` gathers their hidden states (fallback: full logits, cut with
  `logits_to_keep` where the forward takes it); float32 log-softmax is taken on those rows
  only, and the sums / greedy checks are vectorized on the device, with
  one transfer at the end (rolling windows skip the greedy check, whose result HFLM discards);
* loglikelihood_rolling uses lm-eval's own window functions (get_rolling_token_windows +
  make_disjoint_window, context_len 1, the model's max_length) and scores all windows of all
  documents in one pass of the packer.
"""
from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import numpy as np
import torch
from lm_eval import utils as lm_utils
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

from .errors import TokenizerError


class _Row(NamedTuple):
    """One forward row: its tokens; for a shared-context row also position ids and segment ids."""
    tokens: tuple
    positions: list | None
    segments: list | None


class _NoGather(Exception):
    """The output layer does not see [batch, time, hidden] states: gather after it instead."""


def check_tokenizer(tokenizer) -> None:
    if tokenizer is None:
        raise TokenizerError("no tokenizer given")
    if getattr(tokenizer, "bos_token_id", None) is None and getattr(tokenizer, "eos_token_id", None) is None:
        raise TokenizerError(
            f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '')!r}) has neither a bos "
            f"nor an eos token: lm-eval needs one of them as the prefix token of loglikelihood requests with an "
            f"empty context and of the first rolling window. Set one (e.g. tokenizer.bos_token = '<s>').")


def default_max_batch_tokens(device) -> int:
    return 32768 if torch.device(device).type == "cuda" else 4096


@register_model("qbench")
class QBenchLM(HFLM):
    """lm-eval LM for a model object (or a path HFLM can load) with a fast, exact scorer.

    pretrained: a causal LM (nn.Module whose forward(input_ids) returns .logits) or a path.
    max_batch_tokens: token budget of one forward (rows x padded length); default 32768 on CUDA,
        4096 on CPU.
    batch_size: at most this many rows per forward (None: only the token budget limits); also the
        batch size of generate_until.
    gather_in_head: run the output layer on the scored positions only (see the module docstring).
    share_contexts: run the answer choices of one context as one shared-context row where the
        model allows it (see `shares_contexts`, `_plan_rows`).
    """

    def __init__(self, pretrained, tokenizer=None, max_batch_tokens: int | None = None,
                 batch_size: int | str | None = None, max_length: int | None = None,
                 device: str | None = None, gather_in_head: bool = True, share_contexts: bool = True,
                 **kwargs):
        if tokenizer is not None and not isinstance(tokenizer, str):
            check_tokenizer(tokenizer)
        if isinstance(batch_size, str) and batch_size.isdigit():
            batch_size = int(batch_size)
        if isinstance(batch_size, str):   # "auto": the token budget does the sizing here
            batch_size = None
        self.max_rows = int(batch_size) if batch_size else None
        hf_kwargs = dict(kwargs)
        if device is not None:
            hf_kwargs["device"] = device
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, backend="causal",
                         batch_size=self.max_rows or 64, max_length=max_length, **hf_kwargs)
        check_tokenizer(self.tokenizer)
        self.max_batch_tokens = int(max_batch_tokens or default_max_batch_tokens(self.device))
        params = inspect.signature(self.model.forward).parameters
        self._forward_kwargs = {"use_cache": False} if "use_cache" in params else {}
        self._takes_logits_to_keep = "logits_to_keep" in params
        self._gather_in_head = gather_in_head and callable(getattr(self.model, "get_output_embeddings", None)) \
            and self.model.get_output_embeddings() is not None
        self._share_contexts = None if share_contexts else False
        self.stats = {"requests": 0, "forward_rows": 0, "forwards": 0, "padded_tokens": 0, "real_tokens": 0,
                      "shared_context_rows": 0}

    # ------------------------------------------------------------------ info (no hub look-ups)
    def get_model_info(self) -> dict:
        m = self._model
        return {"model_num_parameters": sum(p.numel() for p in m.parameters()),
                "model_dtype": str(getattr(m, "dtype", "")), "model_class": type(m).__name__}

    # ------------------------------------------------------------------ tokenization
    def _encode_many(self, strings: list[str], add_special_tokens: bool | None = None) -> list[list[int]]:
        """tok_encode of each string, with one tokenizer call per group of strings."""
        if not strings:
            return []
        if not getattr(self.tokenizer, "is_fast", False):
            return [self.tok_encode(s, add_special_tokens=add_special_tokens) for s in strings]
        base = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        groups: dict[tuple, list[int]] = {}
        if add_special_tokens is None:
            bos_str = self.tokenizer.decode(self.prefix_token_id)
            for i, s in enumerate(strings):
                kw = {**base, "add_special_tokens": False} if has_bos_prefix(s, bos_str) else base
                groups.setdefault(tuple(sorted(kw.items())), []).append(i)
        else:
            groups[tuple(sorted(base.items()))] = list(range(len(strings)))
        out: list = [None] * len(strings)
        for kw, idx in groups.items():
            enc = self.tokenizer([strings[i] for i in idx], return_attention_mask=False,
                                 return_token_type_ids=False, **dict(kw))["input_ids"]
            for i, ids in zip(idx, enc):
                out[i] = list(ids)
        return out

    def encode_requests(self, args: list[tuple[str, str]]):
        """(context, continuation) pairs -> ((context, continuation), context_enc, continuation_enc),
        exactly as TemplateLM.loglikelihood / _encode_pair do it."""
        plan = []        # per request: ("empty", cont_string) or ("pair", ctx_string, whole_string)
        default_strings: dict[str, int] = {}
        nospecial_strings: dict[str, int] = {}
        for context, continuation in args:
            if context == "":
                plan.append(("empty", nospecial_strings.setdefault(continuation, len(nospecial_strings))))
            else:
                n_spaces = len(context) - len(context.rstrip())
                ctx, cont = context, continuation
                if n_spaces > 0:
                    cont = ctx[-n_spaces:] + cont
                    ctx = ctx[:-n_spaces]
                plan.append(("pair", default_strings.setdefault(ctx, len(default_strings)),
                             default_strings.setdefault(ctx + cont, len(default_strings))))
        enc_default = self._encode_many(list(default_strings))
        enc_nospecial = self._encode_many(list(nospecial_strings), add_special_tokens=False)
        out = []
        for (context, continuation), p in zip(args, plan):
            if p[0] == "empty":
                cont_enc = enc_nospecial[p[1]]
                if self.prefix_token_id != cont_enc[0]:
                    ctx_enc = [self.prefix_token_id]
                else:
                    ctx_enc, cont_enc = cont_enc[:1], cont_enc[1:]
            else:
                ctx_enc = enc_default[p[1]]
                cont_enc = enc_default[p[2]][len(ctx_enc):]
            out.append(((context, continuation), ctx_enc, cont_enc))
        return out

    # ------------------------------------------------------------------ lm-eval entry points
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if self.backend != "causal":
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        new_reqs = self.encode_requests([req.args for req in requests])
        return self._loglikelihood_tokens(new_reqs, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        if self.backend != "causal":
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        strings = [req.args[0] for req in requests]
        windows, counts = [], []
        for tokens in self._encode_many(strings):
            ws = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)]
            windows.extend((None, a, b) for a, b in ws)
            counts.append(len(ws))
        scores = self._score(windows, greedy=False)   # HFLM discards the greedy flags of windows
        out, pos = [], 0
        for string, n in zip(strings, counts):
            total = sum(s[0] for s in scores[pos:pos + n])
            pos += n
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        res = self._score(requests)
        for (request_str, _, _), answer in zip(requests, res):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return res

    # ------------------------------------------------------------------ the scorer
    def _score(self, requests, greedy: bool = True) -> list[tuple[float, bool]]:
        """[(key, context_enc, continuation_enc)] -> [(sum logprob of continuation, is greedy)]
        (greedy=False: the greedy flags are not computed and come back False)."""
        n = len(requests)
        if n == 0:
            return []
        L = self.max_length
        for _, ctx, cont in requests:
            if not ctx or not cont:
                raise ValueError("a loglikelihood request has an empty context or continuation encoding")
            if len(cont) > L:
                raise ValueError(f"continuation of {len(cont)} tokens is longer than max_length {L}")
        self.stats["requests"] += n
        rows, req_row, req_pos = self._plan_rows(requests)
        conts = [cont for _, _, cont in requests]
        by_row: dict[int, list[int]] = {}
        for i, r in enumerate(req_row):
            by_row.setdefault(r, []).append(i)

        # pack rows (longest first) under the token budget; shared-context rows (with their mask)
        # and plain rows in batches of their own, so that plain batches stay mask-free
        batches = []
        for tree in (False, True):
            cur = []
            for r in sorted((r for r in by_row if (rows[r].segments is not None) == tree),
                            key=lambda r: -len(rows[r].tokens)):
                width = len(rows[cur[0]].tokens) if cur else len(rows[r].tokens)
                if cur and ((len(cur) + 1) * width > self.max_batch_tokens
                            or (self.max_rows and len(cur) >= self.max_rows)):
                    batches.append(cur)
                    cur = []
                cur.append(r)
            if cur:
                batches.append(cur)

        device = self.device
        token_ll, token_who = [], []   # per scored token, summed per request at the end (deterministically)
        miss_out = torch.zeros(n, dtype=torch.int64, device=device)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for batch in batches:
            T = len(rows[batch[0]].tokens)
            tree = rows[batch[0]].segments is not None
            ids = np.full((len(batch), T), pad_id, dtype=np.int64)
            pos = np.zeros((len(batch), T), dtype=np.int64) if tree else None
            seg = np.full((len(batch), T), -1, dtype=np.int64) if tree else None   # -1: padding
            b_idx, t_idx, tgt, who = [], [], [], []
            for b, r in enumerate(batch):
                row = rows[r]
                ids[b, :len(row.tokens)] = row.tokens
                if tree:
                    pos[b, :len(row.tokens)] = row.positions
                    seg[b, :len(row.tokens)] = row.segments
                    pos[b, len(row.tokens):] = np.arange(T - len(row.tokens))
                for i in by_row[r]:
                    b_idx.extend([b] * len(conts[i]))
                    t_idx.extend(req_pos[i])
                    tgt.extend(conts[i])
                    who.extend([i] * len(conts[i]))
            self.stats["forwards"] += 1
            self.stats["forward_rows"] += len(batch)
            self.stats["padded_tokens"] += len(batch) * T
            self.stats["real_tokens"] += sum(len(rows[r].tokens) for r in batch)
            host = [np.array([b_idx, t_idx, tgt, who], dtype=np.int64), ids] + ([pos, seg] if tree else [])
            host = [torch.from_numpy(a) for a in host]
            if device.type == "cuda":
                host = [t.pin_memory() for t in host]
            idx, ids_t, *extra = [t.to(device, non_blocking=True) for t in host]
            inputs = {}
            if tree:
                pos_t, seg_t = extra
                causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
                # a token sees the shared context (segment 0) and the earlier tokens of its own segment
                same = (seg_t[:, None, :] == 0) | (seg_t[:, None, :] == seg_t[:, :, None])
                inputs = {"attention_mask": (causal & same)[:, None], "position_ids": pos_t}
            logits = self._scored_logits(ids_t, idx[0], idx[1], min(t_idx), **inputs)   # [N, V]
            token_ll.append(self._accumulate(logits, idx[2], idx[3], miss_out, greedy))
            token_who.append(idx[3])
            del logits
        # one sequential float64 sum per request, in scoring order (np.bincount): atomic adds on CUDA
        # (index_add_) would sum in a scheduling-dependent order, changing last bits between runs
        ll = np.bincount(torch.cat(token_who).cpu().numpy(), weights=torch.cat(token_ll).cpu().numpy(),
                         minlength=n).tolist()
        miss = miss_out.cpu().tolist()
        return [(float(a), greedy and m == 0) for a, m in zip(ll, miss)]

    def shares_contexts(self) -> bool:
        """Whether requests with one context run as one shared-context row: the model takes a 4D
        visibility mask with position ids (qbench's own models say so), its attention kind keeps its
        fast path under a mask on this device (softpick's Triton kernel is causal-only: on CUDA its
        rows stay plain), and no attention-side quantizer acts (a KV-cache quantizer groups tokens
        along the sequence: in a shared row, one answer's keys would change another's quantization)."""
        if self._share_contexts is None:
            from ..attention import get

            model = self.model
            kind = getattr(getattr(model, "config", None), "attention_kind", None)
            self._share_contexts = bool(
                getattr(model, "accepts_segment_masks", False) and kind is not None
                and (get(kind).fast_takes_masks or self.device.type != "cuda")
                and not any(getattr(m, "attn_quant", None) is not None for m in model.modules()))
        return self._share_contexts

    def _plan_rows(self, requests):
        """The forward rows: (rows, req_row, req_pos) with req_pos[i] the row positions whose logits
        score request i's continuation tokens.

        A plain row is HFLM's input: (context + continuation) truncated on the left to max_length + 1,
        minus the last token; an input that is a prefix of another is read from the longer row.
        With shares_contexts(), the requests of one context (the answer choices of a multiple-choice
        question), when none is truncated, become one row instead: the context once, then each
        distinct continuation but its last token, with position ids restarting after the context
        and a mask under which a continuation sees the context and itself only (segment ids: 0 for
        the context, k for the k-th continuation); a row holds at most max_length tokens (more
        continuations start another row) and one-token contexts are not shared (nothing to save).
        Each token then sees exactly the tokens, at
        exactly the positions, it sees in HFLM's row: the same logits up to rounding."""
        L = self.max_length
        rows: list[_Row] = []
        req_row = [0] * len(requests)
        req_pos: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        if self.shares_contexts():
            for i, (_, ctx, cont) in enumerate(requests):
                if len(ctx) > 1 and len(ctx) + len(cont) <= L + 1:
                    groups.setdefault(tuple(ctx), []).append(i)
            groups = {c: idx for c, idx in groups.items() if len(idx) > 1}
        for ctx, idx in groups.items():
            c = len(ctx)
            row = None
            for i in idx:
                cont = tuple(requests[i][2])
                if row is None or (cont not in row[3] and len(row[0]) + len(cont) - 1 > L):
                    row = ([*ctx], [*range(c)], [0] * c, {})   # tokens, positions, segments, starts
                    rows.append(row)
                tokens, positions, segments, start = row
                if cont not in start:
                    start[cont] = len(tokens)
                    tokens.extend(cont[:-1])
                    positions.extend(range(c, c + len(cont) - 1))
                    segments.extend([len(start)] * (len(cont) - 1))
                req_row[i] = len(rows) - 1
                req_pos[i] = [c - 1] + list(range(start[cont], start[cont] + len(cont) - 1))
        rows = [_Row(tuple(t), p, s) for t, p, s, _ in rows]
        self.stats["shared_context_rows"] += len(rows)

        grouped = {i for idx in groups.values() for i in idx}
        seq_index: dict[tuple, int] = {}
        seqs: list[tuple] = []
        plain = [i for i in range(len(requests)) if i not in grouped]
        req_seq = {}
        for i in plain:
            _, ctx, cont = requests[i]
            inp = tuple((ctx + cont)[-(L + 1):][:-1])
            j = seq_index.get(inp)
            if j is None:
                j = seq_index[inp] = len(seqs)
                seqs.append(inp)
            req_seq[i] = j
        # inputs that are a prefix of another input are read from the longer one's forward
        owner = list(range(len(seqs)))
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        for a, b in zip(reversed(order[:-1]), reversed(order[1:])):
            sa, sb = seqs[a], seqs[b]
            if len(sa) <= len(sb) and sb[:len(sa)] == sa:
                owner[a] = owner[b]
        row_of: dict[int, int] = {}
        for i in plain:
            o = owner[req_seq[i]]
            if o not in row_of:
                row_of[o] = len(rows)
                rows.append(_Row(seqs[o], None, None))
            e, c = len(seqs[req_seq[i]]), len(requests[i][2])
            req_row[i] = row_of[o]
            req_pos[i] = list(range(e - c, e))
        return rows, req_row, req_pos

    def _scored_logits(self, input_ids: torch.Tensor, b_idx: torch.Tensor, t_idx: torch.Tensor,
                       first: int, **inputs) -> torch.Tensor:
        """Logits [N, V] at positions (b_idx, t_idx) of the batch.

        The output layer is run only on those positions: a forward pre-hook on
        model.get_output_embeddings() hands it the gathered hidden states [1, N, H] (checked on the
        output's shape; a model whose forward does not allow that falls back, once and for all, to
        full logits, cut with logits_to_keep where the forward takes it)."""
        n = b_idx.numel()
        head = self.model.get_output_embeddings() if self._gather_in_head else None
        if head is not None:
            def gather(module, args, kwargs):
                h = args[0]
                if h.dim() != 3 or tuple(h.shape[:2]) != tuple(input_ids.shape):
                    raise _NoGather
                return (h[b_idx, t_idx].unsqueeze(0), *args[1:]), kwargs

            handle = head.register_forward_pre_hook(gather, with_kwargs=True)
            try:
                logits = self._call(input_ids, **inputs)
            except _NoGather:
                logits = None
            finally:
                handle.remove()
            if logits is not None and tuple(logits.shape[:-1]) == (1, n):
                return logits[0]
            self._gather_in_head = False
        kwargs = {}
        T = input_ids.shape[1]
        if self._takes_logits_to_keep and first > 0:
            kwargs["logits_to_keep"] = T - first
        logits = self._call(input_ids, **inputs, **kwargs)
        return logits[b_idx, t_idx - (T - logits.shape[1])]

    def _call(self, input_ids: torch.Tensor, **extra) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            out = self.model(input_ids, **self._forward_kwargs, **extra)
        return out.logits if hasattr(out, "logits") else out[0]

    @staticmethod
    def _accumulate(logits, tgt, who, miss_out, greedy: bool = True, chunk: int = 8192) -> torch.Tensor:
        """Float32 log-softmax of the scored positions' logits [N, V] (in chunks of rows): the targets'
        log-probabilities [N] (float64), and greedy misses (argmax != target) counted per request."""
        out = []
        for s in range(0, logits.shape[0], chunk):
            sl = slice(s, s + chunk)
            lp = torch.log_softmax(logits[sl].float(), dim=-1)
            t = tgt[sl]
            out.append(lp.gather(1, t[:, None]).squeeze(1).double())
            if greedy:
                miss_out.index_add_(0, who[sl], (lp.argmax(dim=-1) != t).long())   # integers: order-free
            del lp
        return torch.cat(out)


def estimate_flops_tokens(stats: dict) -> str:
    """One line describing how much work the scorer did (for benchmarks)."""
    pad = stats["padded_tokens"]
    eff = stats["real_tokens"] / pad if pad else math.nan
    return (f"{stats['requests']} requests -> {stats['forward_rows']} rows in {stats['forwards']} forwards, "
            f"{stats['real_tokens']} tokens ({eff:.0%} of padded)")
