"""Data-copying statistics: the C_T test (SPEC §4), the NN ratio rho (§3) and per-training-sample copy counts.

All inputs are features (N, F) in one embedding space (models.embeddings). PCA and k-means are implemented
here in torch (seeded, deterministic on a given device) so the science core needs no sklearn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch

from models.neighbours import DEFAULT_BLOCK_BYTES, Metric, Neighbours, nearest

REFERENCE_MIN_GENERATED = 20  # the reference keeps cells with more than 20 generated samples: tau = 20 / m
REFERENCE_CELLS = 50
TEST_SAMPLES_PER_AUTO_CELL = 50


def resolve_cells(cells: int | None, n_test: int) -> int:
    """``cells`` when given; otherwise the reference 50, fewer for small test sets (about 50 test samples
    per cell, at least 1) so that every cell can hold test samples and more than 20 generated ones."""
    if cells is not None:
        return cells
    return max(1, min(REFERENCE_CELLS, n_test // TEST_SAMPLES_PER_AUTO_CELL))


@dataclass(frozen=True)
class CopyTestConfig:
    cells: int = 50  # k: 50 is the reference for MNIST-like codes, 3 is dgm-eval's default
    pca_dims: int = 64  # features with more dimensions are projected to this many (PCA fitted on T)
    metric: Metric = "euclidean"  # within-cell nearest-neighbour distance (the reference uses Euclidean)
    min_generated_share: float | None = None  # tau of SPEC §4 step 4; None -> 20 / m
    seed: int = 0
    kmeans_max_iters: int = 100

    def __post_init__(self) -> None:
        if self.cells < 1:
            raise ValueError("cells: must be >= 1")
        if self.pca_dims < 1:
            raise ValueError("pca_dims: must be >= 1")
        if self.metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric: unknown metric {self.metric!r}; use euclidean or cosine")


# ---------------------------------------------------------------------------------------------- PCA, k-means


@dataclass(frozen=True)
class Projection:
    mean: torch.Tensor  # (F,)
    components: torch.Tensor  # (F, d), orthonormal columns, largest variance first

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) @ self.components  # (N, d)


def fit_pca(train: torch.Tensor, dims: int) -> Projection | None:
    """Principal components of the training features, or None when they have at most ``dims`` dimensions."""
    if train.shape[1] <= dims:
        return None
    flat = train.double()
    mean = flat.mean(0)
    centred = flat - mean  # (N, F)
    covariance = centred.T @ centred / max(1, flat.shape[0] - 1)  # (F, F)
    _, eigenvectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    components = eigenvectors[:, -dims:].flip(1)  # (F, d)
    # Eigenvector signs are arbitrary; pin them so results do not depend on the solver's choice.
    pivot = components.abs().argmax(0)
    signs = torch.sign(components[pivot, torch.arange(dims, device=components.device)])
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
    return Projection(mean=mean.to(train.dtype), components=components.to(train.dtype))


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling). Sampling runs on the CPU generator so it is device-independent."""
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [points[first]]
    closest_sq = (points - points[first]).pow(2).sum(1).double()  # (N,)
    for _ in range(1, k):
        total = float(closest_sq.sum())
        # When every point coincides with a centroid, any point will do.
        weights = (closest_sq / total).cpu() if total > 0.0 else torch.ones(n, dtype=torch.float64)
        chosen = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(points[chosen])
        closest_sq = torch.minimum(closest_sq, (points - points[chosen]).pow(2).sum(1).double())
    return torch.stack(centroids)  # (k, d)


def _recentre(points: torch.Tensor, assignment: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Lloyd update; an emptied cell is moved to the point farthest from its current centroid."""
    k = centroids.shape[0]
    sums = torch.zeros_like(centroids, dtype=torch.float64).index_add_(0, assignment, points.double())
    counts = torch.bincount(assignment, minlength=k)  # (k,)
    updated = (sums / counts.clamp_min(1)[:, None]).to(points.dtype)  # (k, d)
    empty = (counts == 0).nonzero().squeeze(1)
    if empty.numel() > 0:
        spread = (points - centroids[assignment]).pow(2).sum(1)  # (N,)
        farthest = spread.argsort(descending=True, stable=True)[: empty.numel()]
        updated[empty] = points[farthest]
    return updated


def fit_kmeans(points: torch.Tensor, k: int, *, seed: int = 0, max_iters: int = 100) -> torch.Tensor:
    """Centroids (k, d) of k-means on points (N, d): k-means++ seeding, Lloyd until assignments settle."""
    if k > points.shape[0]:
        raise ValueError(f"cells: {k} cells need at least {k} training samples, got {points.shape[0]}")
    centroids = _kmeans_plus_plus(points, k, torch.Generator().manual_seed(seed))
    previous: torch.Tensor | None = None
    for _ in range(max_iters):
        assignment = nearest(points, centroids).index  # (N,)
        if previous is not None and torch.equal(assignment, previous):
            break
        centroids = _recentre(points, assignment, centroids)
        previous = assignment
    return centroids


# ------------------------------------------------------------------------------------- Mann-Whitney, C_T


def mann_whitney_u(generated_distances: torch.Tensor, test_distances: torch.Tensor) -> float:
    """U = number of pairs (a in L_Q, b in L_P) with a > b, ties counting 1/2 (via mid-ranks)."""
    a = generated_distances.double().cpu().numpy()
    b = test_distances.double().cpu().numpy()
    ranks = scipy.stats.rankdata(np.concatenate([a, b]))
    return float(ranks[: a.size].sum() - a.size * (a.size + 1) / 2.0)


def z_u(u: float, m: int, n: int) -> float:
    """SPEC §4: Z_U = (U - m n / 2 + 0.5) / sqrt(m n (m + n + 1) / 12), the reference's continuity term."""
    return (u - m * n / 2.0 + 0.5) / math.sqrt(m * n * (m + n + 1) / 12.0)


@dataclass(frozen=True)
class CellRow:
    cell: int
    n_train: int
    n_test: int  # n_c
    n_generated: int  # m_c
    u: float  # NaN when the cell has no generated samples
    z_u: float  # NaN when the cell has no generated samples
    test_share: float  # P(c) = n_c / n
    generated_share: float  # Q(c) = m_c / m
    kept: bool  # Q(c) > tau


@dataclass(frozen=True)
class CopyingResult:
    c_t: float
    cells: list[CellRow]
    min_generated_share: float  # the tau that was applied
    pca_dims: int | None  # None when no projection was needed
    generated_cell_distance: torch.Tensor  # (m,) L_Q entries, per generated sample
    test_cell_distance: torch.Tensor  # (n,) L_P entries, per test sample


def check_features(name: str, features: torch.Tensor, dim: int | None = None) -> None:
    if features.dim() != 2 or features.shape[0] == 0:
        shape = tuple(features.shape)
        raise ValueError(f"{name}: expected a non-empty (N, F) feature matrix, got shape {shape}")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(f"{name}: features have {features.shape[1]} dimensions, the training set has {dim}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name}: contains NaN or infinite values")


def _cell_distances(
    points: torch.Tensor, cell_of: torch.Tensor, cell: int, cell_train: torch.Tensor, metric: Metric
) -> tuple[torch.Tensor, torch.Tensor]:
    members = (cell_of == cell).nonzero().squeeze(1)
    if members.numel() == 0:
        return members, points.new_zeros(0)
    return members, nearest(points[members], cell_train, metric=metric).distance


def data_copying_test(
    train: torch.Tensor, test: torch.Tensor, generated: torch.Tensor, cfg: CopyTestConfig | None = None
) -> CopyingResult:
    """C_T of Meehan et al. exactly as SPEC §4. Features (N, F), (n, F), (m, F) on one device."""
    cfg = cfg or CopyTestConfig()
    check_features("train", train)
    check_features("test", test, train.shape[1])
    check_features("generated", generated, train.shape[1])
    projection = fit_pca(train, cfg.pca_dims)
    if projection is not None:
        train, test, generated = (projection.apply(x) for x in (train, test, generated))
    centroids = fit_kmeans(train, cfg.cells, seed=cfg.seed, max_iters=cfg.kmeans_max_iters)
    train_cell, test_cell, generated_cell = (nearest(x, centroids).index for x in (train, test, generated))
    n, m = test.shape[0], generated.shape[0]
    tau = cfg.min_generated_share if cfg.min_generated_share is not None else REFERENCE_MIN_GENERATED / m
    hint = "use fewer cells"
    rows: list[CellRow] = []
    generated_distance = generated.new_full((m,), float("nan"))
    test_distance = test.new_full((n,), float("nan"))
    for cell in range(cfg.cells):
        cell_train = train[train_cell == cell]
        if cell_train.shape[0] == 0:
            raise ValueError(f"cell {cell} has no training samples; {hint}")
        test_members, l_p = _cell_distances(test, test_cell, cell, cell_train, cfg.metric)
        if test_members.numel() == 0:
            raise ValueError(f"cell {cell} has no test samples; {hint} or a larger test set")
        gen_members, l_q = _cell_distances(generated, generated_cell, cell, cell_train, cfg.metric)
        test_distance[test_members], generated_distance[gen_members] = l_p, l_q
        m_c, n_c = gen_members.numel(), test_members.numel()
        u = mann_whitney_u(l_q, l_p) if m_c > 0 else float("nan")
        rows.append(
            CellRow(
                cell=cell, n_train=cell_train.shape[0], n_test=n_c, n_generated=m_c, u=u,
                z_u=z_u(u, m_c, n_c) if m_c > 0 else float("nan"),
                test_share=n_c / n, generated_share=m_c / m, kept=m_c / m > tau,
            )
        )  # fmt: skip
    kept = [row for row in rows if row.kept]
    if not kept:
        raise ValueError(
            f"no cell holds a share of generated samples above tau={tau:.4g}; "
            "use fewer cells or more generated samples"
        )
    c_t = sum(row.test_share * row.z_u for row in kept) / sum(row.test_share for row in kept)
    return CopyingResult(
        c_t=c_t, cells=rows, min_generated_share=tau,
        pca_dims=None if projection is None else cfg.pca_dims,
        generated_cell_distance=generated_distance, test_cell_distance=test_distance,
    )  # fmt: skip


# ------------------------------------------------------------------------------------- rho and copy counts


@dataclass(frozen=True)
class NnRatio:
    heldout_distance: torch.Tensor  # (N,) d_H(i)
    generated_distance: torch.Tensor  # (N,) d_S(i)
    rho: torch.Tensor  # (N,) d_H / d_S; > 1 means the model reproduces x_i more closely than fresh data
    sample_size: int  # |S| = |H| used


def nn_ratio(
    train: torch.Tensor, heldout: torch.Tensor, generated: torch.Tensor, metric: Metric = "euclidean"
) -> NnRatio:
    """SPEC §3 rho per training sample. |S| = |H| is enforced by using the first min(|H|, |S|) of each."""
    size = min(heldout.shape[0], generated.shape[0])
    d_h = nearest(train, heldout[:size], metric=metric).distance
    d_s = nearest(train, generated[:size], metric=metric).distance
    return NnRatio(heldout_distance=d_h, generated_distance=d_s, rho=d_h / d_s, sample_size=size)


@dataclass(frozen=True)
class CopyCounts:
    threshold: float  # a generated sample within this distance of its nearest training sample is a copy
    count: torch.Tensor  # (N,) int64: generated samples that have training sample i as NN within threshold
    closest: torch.Tensor  # (N,) distance of the closest generated sample that has i as its NN (inf: none)

    def ranking(self) -> torch.Tensor:
        """Training indices, most copied first (count descending, then closeness ascending)."""
        by_closeness = torch.argsort(self.closest, stable=True)
        return by_closeness[torch.argsort(-self.count[by_closeness], stable=True)]


def copy_threshold(heldout_nn_distance: torch.Tensor, quantile: float) -> float:
    """The held-out-calibrated copy threshold: this quantile of held-out -> training NN distances."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"copy quantile: must lie in [0, 1], got {quantile}")
    return float(torch.quantile(heldout_nn_distance.double(), quantile))


def copy_counts(train_size: int, generated_nn: Neighbours, threshold: float) -> CopyCounts:
    """Per training sample: generated samples whose nearest training sample it is, within threshold."""
    index, distance = generated_nn.index, generated_nn.distance
    within = distance <= threshold
    count = torch.bincount(index[within], minlength=train_size)
    closest = torch.full((train_size,), float("inf"), dtype=distance.dtype, device=distance.device)
    closest = closest.scatter_reduce(0, index, distance, reduce="amin")
    return CopyCounts(threshold=threshold, count=count, closest=closest)


# ------------------------------------------------------------------------------ SPEC §5 radius counts


def _scaled_distance_bound(dims: int, dtype: torch.dtype) -> float:
    """A bound on the rounding error of the matmul-based block distances, relative to their scale.

    Each dot product of ``dims`` terms is off by at most ~dims * eps times the product of the norms
    (any summation order); twice that, plus the two norms, covers ||q||^2 + ||r||^2 - 2 q.r, whose
    scale is ||q||^2 + ||r||^2 (euclidean), or 1 - q.r for unit vectors (cosine, scale 1)."""
    return 2.0 * (dims + 2) * torch.finfo(dtype).eps


def within_tau_counts(
    train: torch.Tensor,
    generated: torch.Tensor,
    taus: list[float] | tuple[float, ...],
    *,
    metric: Metric = "cosine",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> torch.Tensor:
    """SPEC §5 count_tau(i) = #{g : d(f(g), f(x_i)) <= tau} per training sample, for every tau.

    A radius count over every training sample: a generated sample near two near-duplicate training
    images counts for both (unlike ``copy_counts``, which credits only the nearest one). Features
    train (N, F) and generated (m, F) on one device; returns (len(taus), N) int64. Distances come from
    one matrix product per block (memory bounded by ``block_bytes`` like ``models.neighbours``); a pair
    whose block distance lies within the rounding bound of a tau is decided by its exact float64 distance.
    """
    if train.shape[0] == 0 or generated.shape[0] == 0:
        raise ValueError("within_tau_counts: the training and generated sets must not be empty")
    raw_train, raw_gen = train.flatten(1), generated.flatten(1)
    if raw_train.shape[1] != raw_gen.shape[1]:
        dims = (raw_gen.shape[1], raw_train.shape[1])
        raise ValueError(f"generated: features have {dims[0]} dimensions, the training set {dims[1]}")
    if metric == "cosine":
        refs, queries = (torch.nn.functional.normalize(x, dim=1) for x in (raw_train, raw_gen))
    else:  # distances do not change under a shift; centring shrinks the norms and so the rounding
        centre = raw_train.mean(0)
        refs, queries = raw_train - centre, raw_gen - centre
    bound = _scaled_distance_bound(refs.shape[1], refs.dtype)
    thresholds = [t * t if metric == "euclidean" else t for t in taus]
    n_refs, n_queries = refs.shape[0], queries.shape[0]
    element = refs.element_size()
    ref_block = max(1, min(n_refs, block_bytes // (element * max(1, min(n_queries, 4096)))))
    query_block = max(1, min(n_queries, block_bytes // (element * ref_block)))
    ref_sq = refs.pow(2).sum(1)  # (N,)
    counts = torch.zeros((len(taus), n_refs), dtype=torch.int64, device=refs.device)
    for q0 in range(0, n_queries, query_block):
        q = queries[q0 : q0 + query_block]  # (q, F)
        q_sq = q.pow(2).sum(1)[:, None]  # (q, 1)
        for r0 in range(0, n_refs, ref_block):
            r = refs[r0 : r0 + ref_block]  # (r, F)
            product = q @ r.T  # (q, r)
            if metric == "euclidean":
                scale = q_sq + ref_sq[r0 : r0 + ref_block][None, :]
                block = scale - 2.0 * product  # squared distances
            else:
                scale = torch.ones((), dtype=product.dtype, device=product.device)
                block = 1.0 - product
            margin = bound * scale
            for t, (tau, threshold) in enumerate(zip(taus, thresholds, strict=True)):
                counts[t, r0 : r0 + r.shape[0]] += (block <= threshold - margin).sum(0)
                borderline = (block > threshold - margin) & (block <= threshold + margin)
                rows, cols = torch.nonzero(borderline, as_tuple=True)
                if rows.numel():
                    exact = _exact_distance(raw_gen[q0 + rows], raw_train[r0 + cols], metric)
                    inside = r0 + cols[exact <= tau]
                    counts[t].index_add_(0, inside, torch.ones_like(inside))
    return counts


def _exact_distance(a: torch.Tensor, b: torch.Tensor, metric: Metric) -> torch.Tensor:
    """Row-wise distance in float64 from the raw vectors (the decision for borderline pairs)."""
    a, b = a.double(), b.double()
    if metric == "euclidean":
        return (a - b).norm(dim=1)
    cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    return 1.0 - cosine
