"""PyTorch reference for the dim-train throughput benchmark.

The same work as one dim-train step, written in plain PyTorch eager mode. `--recipe dim-l`: the
basic32x32 encoder, the local "encode and dot" critic, the JSD estimator, the prior discriminator
with its gradient penalty, and two Adam optimisers (encoder + critic, discriminator) stepped
separately. `--recipe cross` (dim-train's cross-view recipe, `--views cross --gamma 0
--global-to-global 1 --score-clip 10 --score-penalty 1e-3`): two augmented views per image made
on the device (a random resized crop and flip by one affine grid and bilinear sampling, brightness
and contrast jitter, for RGB saturation and random grey), the encoder on both views as one batch,
each view's Y scored against the other view's local features (JSD on soft-clipped scores plus the
score penalty, both directions averaged) and the global-to-global infoNCE at temperature 0.1; no
prior. Reading the losses with .item() mirrors dim-train's per-step finiteness checks.
`--autocast bf16` runs the forward passes and losses under torch.autocast in bfloat16 (backward
and optimiser steps outside it, as PyTorch's mixed-precision recipe has them): what that lever is
worth in PyTorch on the same device, measured before anyone builds it into dim-train.
`--cuda-graph` (CUDA only) captures the step after the views (forward passes, backward passes
and both optimisers' updates) as one CUDA graph and replays it per batch: the ceiling of what
removing per-kernel launch costs is worth. The losses are then checked after each replay rather
than before the updates, and Adam runs in its capturable form.

Prints one JSON object: images per second over the timed steps. With --device cuda the modules
and the batches live on the GPU (the batches made once, as dim-train's --data-on-device holds its
data there), and the timer waits for the GPU's queue before it stops.
"""

import argparse
import json
import math
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Encoder(nn.Module):
    def __init__(self, channels):
        super().__init__()

        def conv(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.conv1, self.conv2, self.conv3 = conv(channels, 64), conv(64, 128), conv(128, 256)
        self.fc1 = nn.Sequential(nn.Linear(256 * 4 * 4, 1024), nn.BatchNorm1d(1024), nn.ReLU())
        self.y = nn.Linear(1024, 64)

    def forward(self, images):
        x = images * 2 - 1
        local = self.conv2(self.conv1(x))
        y = self.y(self.fc1(self.conv3(local).flatten(1)))
        return local, y


class EncodeBlock(nn.Module):
    """1x1-conv block on [positions, channels] rows, as dim-train computes it."""

    def __init__(self, n_in, width):
        super().__init__()
        self.hidden = nn.Linear(n_in, width, bias=False)
        self.bn = nn.BatchNorm1d(width)
        self.output = nn.Linear(width, width)
        self.shortcut = nn.Linear(n_in, width, bias=False)
        with torch.no_grad():
            self.shortcut.weight.uniform_(-0.01, 0.01)
            eye = torch.eye(width, n_in, dtype=torch.bool)
            self.shortcut.weight.masked_fill_(eye, 1.0)
        self.layer_norm = nn.LayerNorm(width)

    def forward(self, rows):
        return self.layer_norm(self.output(F.relu(self.bn(self.hidden(rows)))) + self.shortcut(rows))


class LocalCritic(nn.Module):
    def __init__(self, channels, width):
        super().__init__()
        self.local = EncodeBlock(channels, width)
        self.globl = EncodeBlock(64, width)

    def forward(self, local, y):
        n, c, h, w = local.shape
        rows = local.permute(0, 2, 3, 1).reshape(n * h * w, c)
        return (self.globl(y) @ self.local(rows).t()).reshape(n, n, h * w)


def jsd_loss(scores):
    n = scores.shape[0]
    mask = torch.eye(n, dtype=torch.bool, device=scores.device).unsqueeze(-1)
    positives = scores.diagonal(0, 0, 1).t()
    e_pos = (math.log(2) - F.softplus(-positives)).mean()
    negatives = (F.softplus(-scores) + scores - math.log(2)).masked_fill(mask, 0.0)
    e_neg = negatives.sum() / (n * (n - 1) * scores.shape[2])
    return e_neg - e_pos


LUMA = (0.299, 0.587, 0.114)


def grey_level(images):
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(LUMA, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def make_views(images, generator):
    """One augmented view of each image, drawn as dim-train draws them (area 0.3-1, aspect 3/4-4/3,
    flip 0.5, brightness 0.2, contrast 0.3, saturation 0.4, grey 0.2); the draws are made on the
    host, the view on the images' device."""
    n, channels = images.shape[0], images.shape[1]
    thetas, brightness, contrast, saturation, grey = [], [], [], [], []
    for _ in range(n):
        width = height = 1.0
        centre_x = centre_y = 0.5
        for _ in range(10):
            area = 0.3 + 0.7 * generator.random()
            aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * generator.random())
            w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if w <= 1 and h <= 1:
                width, height = w, h
                centre_x = w / 2 + (1 - w) * generator.random()
                centre_y = h / 2 + (1 - h) * generator.random()
                break
        sign = -1.0 if generator.random() < 0.5 else 1.0
        thetas.append([[sign * width, 0.0, 2 * centre_x - 1], [0.0, height, 2 * centre_y - 1]])
        brightness.append(1 + 0.2 * (2 * generator.random() - 1))
        contrast.append(1 + 0.3 * (2 * generator.random() - 1))
        saturation.append(1 + 0.4 * (2 * generator.random() - 1) if channels == 3 else 1.0)
        grey.append(channels == 3 and generator.random() < 0.2)
    column = lambda values, dtype=torch.float32: torch.tensor(values, dtype=dtype, device=images.device).view(n, 1, 1, 1)
    theta = torch.tensor(thetas, device=images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    views = (views * column(brightness)).clamp(0, 1)
    mean_grey = grey_level(views).mean(dim=(1, 2, 3), keepdim=True)
    views = ((views - mean_grey) * column(contrast) + mean_grey).clamp(0, 1)
    if channels == 3:
        level = grey_level(views)
        views = ((views - level) * column(saturation) + level).clamp(0, 1)
        views = torch.where(column(grey, torch.bool), grey_level(views).expand_as(views), views)
    return views


def stabilised_jsd(scores, clip=10.0, penalty=1e-3):
    return jsd_loss(clip * torch.tanh(scores / clip)) + penalty * scores.square().mean()


def global_to_global(a, b, temperature=0.1):
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / temperature
    a_to_b = logits.log_softmax(1).diagonal().mean()
    b_to_a = logits.log_softmax(0).diagonal().mean()
    return -(a_to_b + b_to_a) / 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--critic-width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--timed-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for modules and inputs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--recipe", choices=["dim-l", "cross"], default="dim-l")
    parser.add_argument("--autocast", choices=["off", "bf16"], default="off",
                        help="run the forward passes and losses under torch.autocast in bfloat16")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="capture the step as one CUDA graph and replay it (CUDA only)")
    args = parser.parse_args()
    if args.cuda_graph and not args.device.startswith("cuda"):
        parser.error("--cuda-graph needs --device cuda")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    encoder = Encoder(args.channels).to(device)
    critic = LocalCritic(128, args.critic_width).to(device)
    discriminator = nn.Sequential(
        nn.Linear(64, 1000), nn.ReLU(), nn.Linear(1000, 200), nn.ReLU(), nn.Linear(200, 1)
    ).to(device)
    encoder_optimizer = torch.optim.Adam(
        list(encoder.parameters()) + list(critic.parameters()), lr=1e-4, betas=(0.5, 0.999),
        capturable=args.cuda_graph,
    )
    discriminator_optimizer = torch.optim.Adam(
        discriminator.parameters(), lr=1e-4, betas=(0.5, 0.999), capturable=args.cuda_graph
    )
    batches = [torch.rand(args.batch, args.channels, 32, 32, device=device) for _ in range(8)]
    if args.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    view_generator = random.Random(0)

    def forward_precision():
        # A graph cannot hold autocast's cache of cast weights.
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast == "bf16",
                              cache_enabled=not args.cuda_graph)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    # Off while a graph is being captured: nothing may be read back then.
    checking = [True]

    def check_finite(loss, what):
        if checking[0] and not math.isfinite(loss.item()):
            raise SystemExit(f"non-finite {what}")

    def cross_view_inputs(images):
        with torch.no_grad():
            return (make_views(images, view_generator).contiguous(memory_format=layout),
                    make_views(images, view_generator).contiguous(memory_format=layout))

    def cross_view_step(view_a, view_b):
        n = view_a.shape[0]
        with forward_precision():
            local, y = encoder(torch.cat([view_a, view_b]))
            local_a, local_b, y_a, y_b = local[:n], local[n:], y[:n], y[n:]
            local_loss = (stabilised_jsd(critic(local_b, y_a)) + stabilised_jsd(critic(local_a, y_b))) / 2
            total = local_loss + global_to_global(y_a, y_b)
        check_finite(total, "loss")
        encoder_optimizer.zero_grad()
        total.backward()
        encoder_optimizer.step()
        return [total.detach()]

    def dim_l_step(images):
        with forward_precision():
            local, y = encoder(images)
            local_loss = jsd_loss(critic(local, y))
            prior_loss = F.softplus(-discriminator(torch.sigmoid(y)).squeeze(1)).mean()
            total = local_loss + 0.1 * prior_loss
        check_finite(total, "loss")
        encoder_optimizer.zero_grad()
        total.backward()
        encoder_optimizer.step()

        discriminator_optimizer.zero_grad()
        encoded = torch.sigmoid(y.float()).detach().requires_grad_(True)
        prior = torch.rand_like(encoded).requires_grad_(True)
        with forward_precision():
            prior_logits = discriminator(prior).squeeze(1)
            encoded_logits = discriminator(encoded).squeeze(1)
            gan = F.softplus(-prior_logits).mean() + F.softplus(encoded_logits).mean()
        grads = torch.autograd.grad([prior_logits.sum(), encoded_logits.sum()], [prior, encoded], create_graph=True)
        penalty = sum(g.square().sum(1).mean() for g in grads) / len(grads)
        disc_total = gan + penalty
        check_finite(disc_total, "discriminator loss")
        disc_total.backward()
        discriminator_optimizer.step()
        return [total.detach(), disc_total.detach()]

    inputs_of, body = (cross_view_inputs, cross_view_step) if args.recipe == "cross" else (lambda b: (b,), dim_l_step)
    if args.cuda_graph:
        # As torch.cuda.graphs' whole-network recipe has it: warm up on a side stream (Adam's state
        # is created there), capture one step into fixed input buffers, then copy each batch's
        # inputs in and replay.
        static_inputs = [tensor.clone() for tensor in inputs_of(batches[0])]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                body(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        # No gradient may carry over from the warm-up into the capture: the encoder's backward
        # also reaches the discriminator's weights, and adding into a warm-up buffer would be
        # captured as such.
        encoder_optimizer.zero_grad(set_to_none=True)
        discriminator_optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        checking[0] = False
        with torch.cuda.graph(graph):
            static_losses = body(*static_inputs)
        checking[0] = True

        def step(images):
            for static, fresh in zip(static_inputs, inputs_of(images)):
                static.copy_(fresh)
            graph.replay()
            if not all(math.isfinite(value) for value in torch.stack(static_losses).tolist()):
                raise SystemExit("non-finite loss")
    else:
        def step(images):
            body(*inputs_of(images))
    for index in range(args.warmup_steps):
        step(batches[index % len(batches)])
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    started = time.perf_counter()
    for index in range(args.timed_steps):
        step(batches[index % len(batches)])
    synchronize()
    seconds = time.perf_counter() - started
    print(json.dumps({"images_per_second": args.batch * args.timed_steps / seconds, "seconds": seconds,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
