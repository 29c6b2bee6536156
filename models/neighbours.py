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
