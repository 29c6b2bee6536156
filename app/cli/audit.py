"""`memaudit audit DATASET --out DIR`: a whole memorization audit on this machine, no server needed.

Every input is checked before any training starts; a bad input is one line on stderr and exit code 2.
Options left out keep the defaults of models.config (the paper's), so there is one source of defaults.
Only the options live here: the work (torch and the science core) is imported when the command runs,
so that `memaudit serve`, `status` and the other commands do not load torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.config import ARCHS, EVAL_NOISES, LIKELIHOODS, PRESET_NAMES, STRATEGIES


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the `audit` sub-command."""
    parser = subparsers.add_parser(
        "audit",
        help="cross-validated memorization scores of a VAE on a dataset (runs locally)",
        description="Train K*L fold VAEs and score every training sample by M = log p_in - log p_out.",
    )
    parser.add_argument(
        "dataset",
        metavar="DATASET",
        help="built-in name (digits, fashion-mnist[:test][:pad32]), .npz (images, optional labels and "
        "keys), .npy, a folder / .zip / .tar(.gz) of PNG, JPEG, BMP or WebP images (ImageFolder), Hugging "
        "Face parquet, WebDataset shards ('train-{000..009}.tar', quoted) or CIFAR-10 .bin batches",
    )
    add_reading_options(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        help="the paper's settings for this data set (architecture, likelihood, latent, S, epochs, "
        "padding; docs/science.md); options given explicitly override it",
    )
    model = parser.add_argument_group("model (defaults: the paper's MNIST setup)")
    model.add_argument("--arch", choices=ARCHS)
    model.add_argument("--hidden", type=_widths, help="MLP widths, comma-separated (default 512,256)")
    model.add_argument("--latent", type=int)
    model.add_argument("--likelihood", choices=LIKELIHOODS)
    model.add_argument("--base-filters", type=int, help="conv VAE filters of the first stage (default 32)")
    model.add_argument(
        "--pad-to", type=int, help="zero-pad the images, centred, to N x N and score them whole (mnist: 32)"
    )
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int)
    training.add_argument("--lr", type=float)
    training.add_argument("--batch-size", type=int)
    training.add_argument("--weight-decay", type=float)
    audit = parser.add_argument_group("cross-validation and scoring")
    audit.add_argument("--folds", type=int, help="K (default 10)")
    audit.add_argument("--repeats", type=int, help="L (default 10)")
    audit.add_argument(
        "--is-samples", type=int, help="importance samples S per sample and model (default 256)"
    )
    audit.add_argument("--eval-every", type=int, help="also score every E epochs (M quantiles per epoch)")
    audit.add_argument(
        "--eval-noise", choices=EVAL_NOISES, help="fixed (default) or redraw (the reference's)"
    )
    audit.add_argument("--seed", type=int)
    audit.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    audit.add_argument("--strategy", choices=STRATEGIES)
    audit.add_argument("--models-per-unit", type=int, help="models trained together (default: automatic)")
    audit.add_argument(
        "--stop-when-stable",
        type=float,
        metavar="OVERLAP",
        help="stop adding repetitions once the top-k overlap reaches OVERLAP twice in a row (SPEC §7)",
    )
    nn = parser.add_argument_group("nearest-neighbour comparison (SPEC §3)")
    nn.add_argument("--heldout", help="held-out set (same image shape): adds d_heldout, d_model and rho")
    nn.add_argument("--nn-downscale", type=int, default=1, help="average-pool factor before distances")
    output = parser.add_argument_group("output")
    output.add_argument("--format", choices=("csv", "parquet"), default="csv", dest="table_format")
    output.add_argument("--top", type=int, default=10, help="how many top samples to print")
    parser.set_defaults(func=audit_command)


def audit_command(args: argparse.Namespace) -> int:
    from app.cli.audit_run import audit_command as run

    return run(args)


def add_reading_options(parser: argparse.ArgumentParser) -> None:
    """--resize, --mode, --format: how every dataset of the command is read (docs/science.md)."""
    group = parser.add_argument_group("reading the datasets")
    group.add_argument("--resize", type=_size, metavar="H,W",
                       help="resize every image to H x W (bilinear, antialiased); needed for mixed sizes")
    group.add_argument("--image-mode", choices=("L", "RGB"), help="convert every image to grayscale or RGB")
    group.add_argument("--data-format", dest="data_format",
                       choices=("auto", "array", "images", "parquet", "webdataset", "cifar10"),
                       help="how to read the path (default auto)")


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected H,W like 32,32, got {text!r}") from error
    if not (1 <= height <= 4096 and 1 <= width <= 4096):
        raise argparse.ArgumentTypeError(f"sides must lie in 1..4096, got {text!r}")
    return height, width


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 512,256, got {text!r}"
        ) from error
    return widths
