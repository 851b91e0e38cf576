"""diffusers' side of scripts/bench-vs-diffusers.sh.

Runs the same job as `easel bench` on the same model folder (Easel's random-weight SD 1.5,
read as diffusers reads any diffusers folder): the prompt through the text encoder, `--steps`
Euler steps of the UNet on a CFG batch of two (guidance 7.5), the VAE decode. Prints one JSON
object: step median (steps after the first), first step, decode, whole job, the bare UNet
forward, and the process's peak RSS.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", help="a diffusers SD folder (unet, vae, text_encoder)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    started = time.perf_counter()
    text_encoder = CLIPTextModel.from_pretrained(f"{args.model}/text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(f"{args.model}/unet").eval()
    vae = AutoencoderKL.from_pretrained(f"{args.model}/vae").eval()
    scheduler = EulerDiscreteScheduler.from_pretrained(f"{args.model}/scheduler")
    load_secs = time.perf_counter() - started

    job_started = time.perf_counter()
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 49408, (2, 77), generator=generator)
    text = text_encoder(tokens)[0]
    side = args.size // 8
    latents = torch.randn((1, 4, side, side), generator=generator)
    scheduler.set_timesteps(args.steps)
    latents = latents * scheduler.init_noise_sigma
    step_secs = []
    for t in scheduler.timesteps:
        step_started = time.perf_counter()
        batch = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise = unet(batch, t, encoder_hidden_states=text).sample
        uncond, cond = noise.chunk(2)
        noise = uncond + 7.5 * (cond - uncond)
        latents = scheduler.step(noise, t, latents).prev_sample
        step_secs.append(time.perf_counter() - step_started)
    decode_started = time.perf_counter()
    image = vae.decode(latents / vae.config.scaling_factor).sample
    decode_secs = time.perf_counter() - decode_started
    job_secs = time.perf_counter() - job_started
    assert image.shape[-1] == args.size

    forwards = []
    batch = torch.cat([latents] * 2)
    for _ in range(3):
        forward_started = time.perf_counter()
        unet(batch, scheduler.timesteps[0], encoder_hidden_states=text)
        forwards.append(time.perf_counter() - forward_started)

    later = step_secs[1:] or step_secs
    json.dump(
        {
            "torch": torch.__version__,
            "threads": threads,
            "load_secs": load_secs,
            "first_step_secs": step_secs[0],
            "step_secs_median": statistics.median(later),
            "vae_decode_secs": decode_secs,
            "job_secs": job_secs,
            "unet_forward_secs_median": statistics.median(forwards),
            # ru_maxrss is in KiB on Linux.
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
