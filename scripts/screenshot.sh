#!/usr/bin/env bash
# Shows the Easel window under Xvfb after an inpainting generation with the tiny parity model,
# and saves a screenshot: scripts/screenshot.sh [OUT.png] (default: screenshot.png).
#
# It prepares a session (prompt, an init image with a painted mask), starts the real window,
# presses Ctrl+Enter as an artist would, waits for the result to be saved, then captures the
# screen. Needs ../shared/parity (or EASEL_PARITY_DIR) and, on Debian/Ubuntu, the packages
# below (installed when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-screenshot.png}")
parity=$(realpath "${EASEL_PARITY_DIR:-../shared/parity}")

packages=(xvfb xauth imagemagick mesa-vulkan-drivers xdotool)
if ! command -v xvfb-run >/dev/null || ! command -v xdotool >/dev/null || ! command -v import >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "screenshot.sh: install ${packages[*]} first" >&2
        exit 1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

# The dev profile (dependencies optimised) is the one the tests build: no second build.
cargo build --quiet

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/data/masks" "$work/outputs" "$work/xdg"
chmod 700 "$work/xdg"
convert -size 256x256 gradient:'#8ec5ff'-'#f6d365' \
    -fill '#2f6f4f' -draw 'rectangle 0,190 256,256' \
    -fill '#c0392b' -draw 'circle 128,150 128,120' "$work/init.png"
convert -size 256x256 xc:black -fill white -draw 'circle 128,150 128,112' "$work/data/masks/mask-init.png"
cat > "$work/data/session.json" <<JSON
{
  "prompt": {
    "model": "$parity/models/sd15-tiny",
    "prompt": "a red apple on a lawn, morning light",
    "negative_prompt": "blurry",
    "sampler": "euler",
    "steps": 12,
    "guidance": 7.5,
    "seed": 1234,
    "seed_locked": true,
    "width_px": 256,
    "height_px": 256,
    "strength": 0.8,
    "batch_count": 1
  },
  "references": [{ "path": "$work/init.png", "mask_file": "mask-init.png", "is_init": true }]
}
JSON

# A settings file of this machine's own must not change the picture.
export EASEL_CONFIG="$work/easel.toml"
export EASEL_DATA_DIR="$work/data" EASEL_MODELS_DIR="$parity/models" EASEL_OUTPUTS_DIR="$work/outputs"
export XDG_RUNTIME_DIR="$work/xdg" OUT="$out"
# shellcheck disable=SC2016 # expanded by the inner shell, from the exported variables
xvfb-run -a -s '-screen 0 1400x900x24' bash -c '
    set -euo pipefail
    target/debug/easel >"$EASEL_DATA_DIR/easel.log" 2>&1 &
    app=$!
    window=""
    for _ in $(seq 60); do
        window=$(xdotool search --name "^Easel$" 2>/dev/null | head -n1 || true)
        [ -n "$window" ] && break
        sleep 1
    done
    [ -n "$window" ] || { echo "screenshot.sh: the window did not appear" >&2; cat "$EASEL_DATA_DIR/easel.log" >&2; exit 1; }
    sleep 3
    xdotool windowfocus --sync "$window" key --clearmodifiers ctrl+Return
    for _ in $(seq 120); do
        compgen -G "$EASEL_OUTPUTS_DIR/*.png" >/dev/null && break
        sleep 1
    done
    compgen -G "$EASEL_OUTPUTS_DIR/*.png" >/dev/null || { echo "screenshot.sh: no result was saved" >&2; exit 1; }
    sleep 2
    import -window root "$OUT"
    kill "$app"
'
echo "saved $out"
