#!/usr/bin/env bash
# Easel against diffusers on this machine, on the same random-weight SD 1.5, in one run:
#   scripts/bench-vs-diffusers.sh [--size PX] [--steps N] [--runs N] [--flux] [--f16]
#   (defaults 512, 4, 1; --flux adds FLUX.1 dev's transformer at the bench's reduced depth;
#   --f16 adds Easel with its weights held in f16 in both modes, computed in f32)
#
# Installs torch and diffusers from PyPI into a virtual environment (.bench-venv, or
# $EASEL_BENCH_VENV) when it is missing, builds Easel (the dev profile the tests build, its
# dependencies optimised), and alternates the two: `easel bench` (which builds the model into
# models/bench once) and scripts/bench_diffusers.py on that same folder. Both run the prompt
# through the text encoder, N Euler steps on a CFG batch of two, and the VAE decode, with
# every core. Prints the machine, each side's medians and the ratios Easel / diffusers (below
# 1 is Easel faster or smaller), for Easel's full mode (f32 weights) and its low-memory mode
# (staged, weights held in f16; both compute in f32). Needs about 6 GB of disk for the
# environment and 4 GB for the model; at 512 px a run takes about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

size=512
steps=4
runs=1
flux=0
f16=0
while [ $# -gt 0 ]; do
    case "$1" in
        --size) size=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --flux) flux=1; shift ;;
        --f16) f16=1; shift ;;
        *) echo "usage: $0 [--size PX] [--steps N] [--runs N] [--flux] [--f16]" >&2; exit 2 ;;
    esac
done

venv=${EASEL_BENCH_VENV:-.bench-venv}
# accelerate: diffusers loads without a second copy of the weights with it, as it recommends.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, diffusers, transformers, accelerate" 2>/dev/null; then
    echo "bench-vs-diffusers: installing torch and diffusers into $venv (PyPI)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet torch diffusers transformers safetensors accelerate
fi

cargo build --quiet
cache=models/bench
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for run in $(seq 1 "$runs"); do
    echo "bench-vs-diffusers: run $run of $runs: easel" >&2
    target/debug/easel bench --model sd15 --size "$size" --steps "$steps" --references none \
        --cache "$cache" --json > "$out/easel-$run.json" 2> "$out/easel-$run.log" ||
        { cat "$out/easel-$run.log" >&2; exit 1; }
    echo "bench-vs-diffusers: run $run of $runs: diffusers" >&2
    "$venv/bin/python" scripts/bench_diffusers.py "$cache/sd15-random" --size "$size" \
        --steps "$steps" > "$out/diffusers-$run.json"
done

if [ "$f16" = 1 ]; then
    # Full mode with the UNet's and VAE's weights in f16 (auto holds f32 there, f16 staged).
    echo "bench-vs-diffusers: easel with f16 weights" >&2
    target/debug/easel bench --model sd15 --size "$size" --steps "$steps" --references none \
        --cache "$cache" --dtype f16 --json > "$out/easel-f16.json" 2> "$out/easel-f16.log" ||
        { cat "$out/easel-f16.log" >&2; exit 1; }
fi

if [ "$flux" = 1 ]; then
    # FLUX.1 dev at 1 double- and 2 single-stream blocks: the bare transformer forward on
    # one step's shapes (256 px: 256 image and 512 text tokens), each side the same.
    echo "bench-vs-diffusers: FLUX.1 dev (reduced): easel" >&2
    target/debug/easel bench --model flux --size 256 --steps 2 --references none \
        --cache "$cache" --json > "$out/easel-flux.json" 2> "$out/easel-flux.log" ||
        { cat "$out/easel-flux.log" >&2; exit 1; }
    echo "bench-vs-diffusers: FLUX.1 dev (reduced): diffusers" >&2
    "$venv/bin/python" scripts/bench_flux_diffusers.py --size 256 > "$out/diffusers-flux.json"
fi

"$venv/bin/python" - "$out" "$runs" <<'EOF'
import json, os, platform, statistics, sys

out, runs = sys.argv[1], int(sys.argv[2])
easel = [json.load(open(f"{out}/easel-{i}.json")) for i in range(1, runs + 1)]
torch = [json.load(open(f"{out}/diffusers-{i}.json")) for i in range(1, runs + 1)]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
print(f"machine: {cpu}, {os.cpu_count()} threads, {'AVX-512' if 'avx512f' in flags else 'no AVX-512'}, "
      f"{easel[0]['machine']['total_memory_bytes'] / 1e9:.1f} GB; torch {torch[0]['torch']}")
print(f"job: SD 1.5 (random weights), {easel[0]['size_px']} px, {easel[0]['steps']} Euler steps, CFG 7.5, "
      f"f32, medians of {runs} run(s) each, alternated")
m = statistics.median
rows = [
    ("UNet step", m(e["modes"]["full"]["step_secs_median"] for e in easel), m(t["step_secs_median"] for t in torch), "s"),
    ("bare UNet forward", m(e["denoiser_forward_secs_median"] for e in easel), m(t["unet_forward_secs_median"] for t in torch), "s"),
    ("VAE decode", m(e["modes"]["full"]["vae_decode_secs"] for e in easel), m(t["vae_decode_secs"] for t in torch), "s"),
    ("peak RSS (full)", m(e["modes"]["full"]["peak_rss_bytes"] for e in easel) / 1e9, m(t["peak_rss_bytes"] for t in torch) / 1e9, "GB"),
    # Low-memory mode: one stage's components at a time, weights held in 16 bits (computed in f32).
    ("UNet step (staged)", m(e["modes"]["staged"]["step_secs_median"] for e in easel), m(t["step_secs_median"] for t in torch), "s"),
    ("VAE decode (staged)", m(e["modes"]["staged"]["vae_decode_secs"] for e in easel), m(t["vae_decode_secs"] for t in torch), "s"),
    ("peak RSS (staged)", m(e["modes"]["staged"]["peak_rss_bytes"] for e in easel) / 1e9, m(t["peak_rss_bytes"] for t in torch) / 1e9, "GB"),
]
print(f"{'':20}{'easel':>10}{'diffusers':>12}{'ratio':>8}")
for name, ours, theirs, unit in rows:
    print(f"{name:20}{ours:>9.2f}{unit:<1}{theirs:>11.2f}{unit:<1}{ours / theirs:>8.2f}")
if os.path.exists(f"{out}/easel-f16.json"):
    half = json.load(open(f"{out}/easel-f16.json"))["modes"]["full"]
    for name, ours, theirs, unit in [
        ("UNet step, f16", half["step_secs_median"], m(t["step_secs_median"] for t in torch), "s"),
        ("peak RSS (full, f16)", half["peak_rss_bytes"] / 1e9, m(t["peak_rss_bytes"] for t in torch) / 1e9, "GB"),
    ]:
        print(f"{name:20}{ours:>9.2f}{unit:<1}{theirs:>11.2f}{unit:<1}{ours / theirs:>8.2f}"
              "   (Easel's weights in f16, one run)")
if os.path.exists(f"{out}/easel-flux.json"):
    ours = json.load(open(f"{out}/easel-flux.json"))["denoiser_forward_secs_median"]
    theirs = json.load(open(f"{out}/diffusers-flux.json"))["forward_secs_median"]
    print(f"{'FLUX.1 forward':20}{ours:>9.2f}s{theirs:>11.2f}s{ours / theirs:>8.2f}"
          "   (dev, 1+2 blocks, 256 px: 256 image + 512 text tokens)")
EOF
