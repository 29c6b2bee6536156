"""Exact nearest-neighbour search, chunked so that any query x reference size fits a memory budget.

Used by the nearest-neighbour comparison next to the memorization score (SPEC §3), by the C_T test (§4)
and by memorization rejection (§5). Everything is exact: no approximate index, every pair is compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Metric = Literal["euclidean", "cosine"]

# A block of query x reference distances never holds more than this many bytes.
DEFAULT_BLOCK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Neighbours:
    distance: torch.Tensor  # (Q,) distance from each query to its nearest reference
    index: torch.Tensor  # (Q,) int64 index of that reference


def prepare_references(references: torch.Tensor, metric: Metric) -> torch.Tensor:
    """Put references in the form the search uses; do it once when searching them many times."""
    references = references.flatten(1)
    if metric == "cosine":
        return torch.nn.functional.normalize(references, dim=1)
    return references


def nearest(
    queries: torch.Tensor,
    references: torch.Tensor,
    *,
    metric: Metric = "euclidean",
    references_prepared: bool = False,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    exclude_self: bool = False,
) -> Neighbours:
    """Nearest reference of every query.

    queries: (Q, ...) and references: (R, ...), flattened to vectors, on the same device.
    Euclidean distances come from one matrix product per block; the distance reported for the chosen
    neighbour is recomputed from the difference vector, so near-duplicates get an accurate (not cancelled)
    distance. Cosine distance is 1 - cos(q, r) as in SPEC §5. With ``exclude_self`` queries and references
    are the same set and each point's own index is skipped (leave-one-out nearest neighbour).
    """
    if references.shape[0] == 0:
        raise ValueError("references: the reference set is empty")
    flat_queries = queries.flatten(1)  # (Q, D)
    flat_refs = references if references_prepared else prepare_references(references, metric)
    flat_refs = flat_refs.flatten(1)  # (R, D)
    if flat_queries.shape[1] != flat_refs.shape[1]:
        raise ValueError(
            f"queries and references differ in dimension: {flat_queries.shape[1]} vs {flat_refs.shape[1]}"
        )
    if metric == "cosine":
        flat_queries = torch.nn.functional.normalize(flat_queries, dim=1)
    q_count, r_count = flat_queries.shape[0], flat_refs.shape[0]
    element_bytes = flat_queries.element_size()
    ref_block = max(1, min(r_count, block_bytes // (element_bytes * max(1, min(q_count, 4096)))))
    query_block = max(1, min(q_count, block_bytes // (element_bytes * ref_block)))
    ref_sq = (flat_refs * flat_refs).sum(1) if metric == "euclidean" else None  # (R,)

    best_score = torch.full((q_count,), float("inf"), dtype=flat_queries.dtype, device=flat_queries.device)
    best_index = torch.zeros(q_count, dtype=torch.long, device=flat_queries.device)
    for q0 in range(0, q_count, query_block):
        q = flat_queries[q0 : q0 + query_block]  # (q, D)
        for r0 in range(0, r_count, ref_block):
            r = flat_refs[r0 : r0 + ref_block]  # (r, D)
            if metric == "euclidean":
                assert ref_sq is not None
                # ||q - r||^2 up to the per-query constant ||q||^2, which does not change the argmin.
                score = ref_sq[r0 : r0 + ref_block][None, :] - 2.0 * (q @ r.T)  # (q, r)
            else:
                score = -(q @ r.T)  # (q, r)
            if exclude_self:
                rows = torch.arange(q0, q0 + q.shape[0], device=q.device)
                cols = rows - r0
                inside = (cols >= 0) & (cols < r.shape[0])
                score[inside.nonzero().squeeze(1), cols[inside]] = float("inf")
            block_best, block_index = score.min(dim=1)  # (q,)
            rows_of_block = slice(q0, q0 + q.shape[0])
            better = block_best < best_score[rows_of_block]
            best_score[rows_of_block] = torch.where(better, block_best, best_score[rows_of_block])
            best_index[rows_of_block] = torch.where(better, block_index + r0, best_index[rows_of_block])
    distance = torch.empty_like(best_score)
    for q0 in range(0, q_count, query_block):
        q = flat_queries[q0 : q0 + query_block]  # (q, D)
        chosen = flat_refs[best_index[q0 : q0 + query_block]]  # (q, D)
        if metric == "euclidean":
            distance[q0 : q0 + q.shape[0]] = (q - chosen).norm(dim=1)
        else:
            distance[q0 : q0 + q.shape[0]] = (1.0 - (q * chosen).sum(1)).clamp_min(0.0)
    return Neighbours(distance=distance, index=best_index)


@dataclass(frozen=True)
class KNeighbours:
    distance: torch.Tensor  # (Q, k) distances to the k nearest references, ascending; inf where fewer exist
    index: torch.Tensor  # (Q, k) int64 indices of those references; -1 where fewer exist


def nearest_k(
    queries: torch.Tensor,
    references: torch.Tensor,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> KNeighbours:
    """The k nearest references (Euclidean) of every query, exact, in blocks of at most ``block_bytes``.

    queries: (Q, ...), references: (R, ...), flattened to vectors. ``exclude``: (Q,) int64, one reference
    index per query that may not be chosen (the query itself when queries are a subset of the references;
    -1 excludes nothing). Like :func:`nearest`, candidates come from one matrix product per block and the
    reported distances are recomputed from the difference vectors; the final order is (distance, index).
    """
    if k < 1:
        raise ValueError("k: at least 1")
    flat_queries, flat_refs = queries.flatten(1), references.flatten(1)  # (Q, D), (R, D)
    if flat_queries.shape[1] != flat_refs.shape[1]:
        raise ValueError(
            f"queries and references differ in dimension: {flat_queries.shape[1]} vs {flat_refs.shape[1]}"
        )
    q_count, r_count = flat_queries.shape[0], flat_refs.shape[0]
    keep = min(k, r_count)
    element_bytes = flat_queries.element_size()
    query_block = max(1, min(q_count, 4096))
    ref_block = max(1, min(r_count, block_bytes // (element_bytes * query_block)))
    device = flat_queries.device
    best_score = torch.full((q_count, keep), float("inf"), dtype=flat_queries.dtype, device=device)
    best_index = torch.full((q_count, keep), -1, dtype=torch.long, device=device)
    for q0 in range(0, q_count, query_block):
        q = flat_queries[q0 : q0 + query_block]  # (q, D)
        rows = slice(q0, q0 + q.shape[0])
        for r0 in range(0, r_count, ref_block):
            r = flat_refs[r0 : r0 + ref_block]  # (r, D)
            score = (r * r).sum(1)[None, :] - 2.0 * (q @ r.T)  # (q, r): ||q - r||^2 - ||q||^2
            if exclude is not None:
                cols = exclude[rows] - r0  # (q,)
                inside = (cols >= 0) & (cols < r.shape[0])
                score[inside.nonzero().squeeze(1), cols[inside]] = float("inf")
            candidates = torch.cat([best_score[rows], score], dim=1)  # (q, keep + r)
            indices = torch.cat([best_index[rows], torch.arange(r0, r0 + r.shape[0], device=q.device)
                                 .expand(q.shape[0], -1)], dim=1)  # fmt: skip
            top_score, top_at = candidates.topk(keep, dim=1, largest=False)  # (q, keep)
            best_score[rows], best_index[rows] = top_score, indices.gather(1, top_at)
    # Exact distances of the chosen references (per query block), then the stable (distance, index) order.
    distance = torch.empty_like(best_score)
    for q0 in range(0, q_count, query_block):
        rows = slice(q0, q0 + query_block)
        chosen = flat_refs[best_index[rows].clamp_min(0)]  # (q, keep, D)
        distance[rows] = (flat_queries[rows][:, None, :] - chosen).norm(dim=2)
    missing = torch.isinf(best_score)
    distance = distance.masked_fill(missing, float("inf"))
    index = best_index.masked_fill(missing, -1)
    order = torch.sort(index, dim=1, stable=True).indices
    index, distance = index.gather(1, order), distance.gather(1, order)
    order = torch.sort(distance, dim=1, stable=True).indices
    index, distance = index.gather(1, order), distance.gather(1, order)
    if keep < k:  # fewer references than k: pad
        pad = k - keep
        distance = torch.cat([distance, distance.new_full((q_count, pad), float("inf"))], dim=1)
        index = torch.cat([index, index.new_full((q_count, pad), -1)], dim=1)
    return KNeighbours(distance=distance, index=index)
