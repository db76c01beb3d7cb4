"""PyTorch reference for the dim-train throughput benchmark.

The same work as one dim-train step, written in plain PyTorch eager mode: the basic32x32 encoder,
the local "encode and dot" critic, the JSD estimator, the prior discriminator with its gradient
penalty, and two Adam optimisers (encoder + critic, discriminator) stepped separately. Reading
the losses with .item() mirrors dim-train's per-step finiteness checks.

Prints one JSON object: images per second over the timed steps. With --device cuda the modules
and the batches live on the GPU (the batches made once, as dim-train's --data-on-device holds its
data there), and the timer waits for the GPU's queue before it stops.
"""

import argparse
import json
import math
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
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    encoder = Encoder(args.channels).to(device)
    critic = LocalCritic(128, args.critic_width).to(device)
    discriminator = nn.Sequential(
        nn.Linear(64, 1000), nn.ReLU(), nn.Linear(1000, 200), nn.ReLU(), nn.Linear(200, 1)
    ).to(device)
    encoder_optimizer = torch.optim.Adam(
        list(encoder.parameters()) + list(critic.parameters()), lr=1e-4, betas=(0.5, 0.999)
    )
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.5, 0.999))
    batches = [torch.rand(args.batch, args.channels, 32, 32, device=device) for _ in range(8)]
    if args.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]

    def step(images):
        local, y = encoder(images)
        local_loss = jsd_loss(critic(local, y))
        prior_loss = F.softplus(-discriminator(torch.sigmoid(y)).squeeze(1)).mean()
        total = local_loss + 0.1 * prior_loss
        if not math.isfinite(total.item()):
            raise SystemExit("non-finite loss")
        encoder_optimizer.zero_grad()
        total.backward()
        encoder_optimizer.step()

        discriminator_optimizer.zero_grad()
        encoded = torch.sigmoid(y).detach().requires_grad_(True)
        prior = torch.rand_like(encoded).requires_grad_(True)
        prior_logits = discriminator(prior).squeeze(1)
        encoded_logits = discriminator(encoded).squeeze(1)
        gan = F.softplus(-prior_logits).mean() + F.softplus(encoded_logits).mean()
        grads = torch.autograd.grad([prior_logits.sum(), encoded_logits.sum()], [prior, encoded], create_graph=True)
        penalty = sum(g.square().sum(1).mean() for g in grads) / len(grads)
        disc_total = gan + penalty
        if not math.isfinite(disc_total.item()):
            raise SystemExit("non-finite discriminator loss")
        disc_total.backward()
        discriminator_optimizer.step()

    for index in range(args.warmup_steps):
        step(batches[index % len(batches)])
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    started = time.perf_counter()
    for index in range(args.timed_steps):
        step(batches[index % len(batches)])
    synchronize()
    seconds = time.perf_counter() - started
    print(json.dumps({"images_per_second": args.batch * args.timed_steps / seconds, "seconds": seconds}))


if __name__ == "__main__":
    main()
