"""diffusers' FLUX.1 dev transformer at `easel bench --model flux`'s reduced depth.

FluxTransformer2DModel with FLUX.1 dev's widths (24 heads of 128, joint attention 4096,
pooled 768, guidance embeddings) and Easel's bench depth (1 double-stream, 2 single-stream
blocks), random weights, timed on the shapes of one step at `--size` px: (size/16)^2 image
tokens and 512 text tokens (dev's prompt length), batch 1. Prints one JSON object with the
median forward time (3 forwards after a warm-up) and the peak RSS.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
from diffusers import FluxTransformer2DModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=512)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(1)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ).eval()
    side = args.size // 16
    image_tokens = side * side
    hidden = torch.randn(1, image_tokens, 64)
    text = torch.randn(1, args.text_tokens, 4096)
    pooled = torch.randn(1, 768)
    img_ids = torch.zeros(image_tokens, 3)
    img_ids[:, 1] = torch.arange(side).repeat_interleave(side)
    img_ids[:, 2] = torch.arange(side).repeat(side)
    txt_ids = torch.zeros(args.text_tokens, 3)

    def forward() -> float:
        started = time.perf_counter()
        model(
            hidden_states=hidden,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=torch.tensor([0.5]),
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=torch.tensor([3.5]),
        )
        return time.perf_counter() - started

    forward()
    times = [forward() for _ in range(3)]
    json.dump(
        {
            "torch": torch.__version__,
            "image_tokens": image_tokens,
            "text_tokens": args.text_tokens,
            "forward_secs_median": statistics.median(times),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
