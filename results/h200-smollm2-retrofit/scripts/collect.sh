#!/usr/bin/env bash
# Packs what the retrofit pipeline and the determinism runs produced so far into $OUT (one tar each):
# cells, tables, diagnostics, training logs and the fine-tuned weights' hashes (not the weights).
source scripts/gpu/env.sh
cp /tmp/retro/pipeline.log "$OUT/" 2>/dev/null
(cd /tmp/retro && sha256sum ft/*/*.safetensors /tmp/smollm2/*.gguf > weights.sha256 2>/dev/null)
tar -czf "$OUT/retrofit.tar.gz" -C /tmp/retro --exclude='*.safetensors' --exclude='*.bin' --exclude='*.npy' \
  --exclude='*.u16' $(cd /tmp/retro && ls -d gguf.sha256 weights.sha256 measure ft diagnostics diagnose.log results 2>/dev/null) 2>/dev/null
tar -czf "$OUT/determinism.tar.gz" -C /tmp/det . 2>/dev/null
ls -la "$OUT"
