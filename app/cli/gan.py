"""`memaudit copytest` and `memaudit mrgan`: GAN data-copying checks and MR-GAN tau sweeps, locally.

Every input is checked before any training starts; a bad input is one line on stderr and exit code 2.
Only the options live here: the work (torch and the science core) is imported when a command runs, so
that the other commands do not load torch. The two choice lists mirror models.gan.config (a test keeps
them equal) because importing that package imports torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

GAN_ARCHS = ("mlp", "dcgan")
REJECTION_MODES = ("G", "GD")
DATASET_HELP = ("built-in name (digits, fashion-mnist[:test][:pad32]), .npz, .npy, a folder / .zip / "
                ".tar(.gz) of images, parquet, WebDataset shards or CIFAR-10 batches (docs/science.md)")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the `copytest` and `mrgan` sub-commands."""
    _register_copytest(subparsers)
    _register_mrgan(subparsers)


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--embedding",
        default="pixels",
        help="pixels (default), autoencoder, torchscript:PATH or onnx:PATH (the content decides)",
    )
    parser.add_argument("--cells", type=int, help="C_T k-means cells (default 50, fewer for small test sets)")
    parser.add_argument(
        "--copy-quantile",
        type=float,
        default=0.05,
        help="copy threshold = this quantile of test->train NN distances (default 0.05)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--top", type=int, default=10, help="how many most-copied samples to print")
    from app.cli.audit import add_reading_options

    add_reading_options(parser)


def _register_copytest(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "copytest",
        help="data-copying test (C_T, rho, copy counts) of generated samples or a generator file",
        description="Meehan et al.'s C_T test, the NN ratio rho and per-training-sample copy counts.",
    )
    parser.add_argument("--train", required=True, help=f"training set: {DATASET_HELP}")
    parser.add_argument("--test", required=True, help="held-out test set from the same distribution")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--generated", help="generated samples (same formats as --train)")
    source.add_argument(
        "--generator",
        help="TorchScript or ONNX generator (by content) z (B, latent) -> images (B, C, H, W) in [0, 1]",
    )
    parser.add_argument("--latent-dim", type=int, help="latent size of --generator")
    parser.add_argument(
        "--n-generated", type=int, help="samples to draw from --generator (default: test size)"
    )
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    parser.add_argument(
        "--tau",
        type=float,
        nargs="+",
        help="radii (in --metric) of the per-training-sample within-tau counts (default: the copy threshold)",
    )
    _common_options(parser)
    parser.set_defaults(func=copytest_command)


def _register_mrgan(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "mrgan",
        help="train GANs with memorization rejection over a sweep of tau and measure copying",
        description="MR-GAN (Bai et al. 2022): one GAN per tau; C_T, Fréchet distance and copy counts each.",
    )
    parser.add_argument("dataset", metavar="DATASET", help=DATASET_HELP)
    parser.add_argument("--heldout", help="held-out set (default: every sixth image of DATASET)")
    taus = parser.add_argument_group("tau (cosine distance; at least one of the two)")
    taus.add_argument("--tau", type=float, nargs="+", default=[], help="rejection thresholds")
    taus.add_argument(
        "--tau-quantile",
        type=float,
        nargs="+",
        default=[],
        help="taus as quantiles of held-out -> training NN distances",
    )
    gan = parser.add_argument_group("GAN (defaults: MLP for small images, DCGAN for 28/32 px)")
    gan.add_argument("--arch", choices=GAN_ARCHS)
    gan.add_argument("--latent-dim", type=int)
    gan.add_argument("--width", type=int, help="MLP hidden units or DCGAN base filters")
    training = parser.add_argument_group("training")
    training.add_argument("--mode", choices=REJECTION_MODES, default="G")
    training.add_argument("--steps", type=int, help="generator steps (default 2000)")
    training.add_argument("--batch-size", type=int, help="default 64")
    training.add_argument("--d-steps", type=int, help="discriminator steps per generator step (default 1)")
    training.add_argument("--lr", type=float, help="Adam learning rate (default 2e-4)")
    parser.add_argument(
        "--n-generated", type=int, help="samples per tau to evaluate (default: held-out size)"
    )
    parser.add_argument("--ct-metric", choices=("euclidean", "cosine"), default="euclidean")
    _common_options(parser)
    parser.set_defaults(func=mrgan_command)


# ----------------------------------------------------------------------------------------------- copytest


def copytest_command(args: argparse.Namespace) -> int:
    from app.cli.gan_run import copytest_command as run

    return run(args)


def mrgan_command(args: argparse.Namespace) -> int:
    from app.cli.gan_run import mrgan_command as run

    return run(args)
