"""Loss functions as pure functions of tensors (formulas from DANCE's code; see shared/research/uda.md 1.3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["entropy", "neighbourhood_clustering", "entropy_separation", "es_threshold_and_margin"]


def entropy(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-row H(softmax(logits)) = -sum_k p_k log(p_k + eps); shape (N,). eps as in DANCE's code."""
    p = F.softmax(logits.float(), dim=1)
    return -(p * torch.log(p + eps)).sum(dim=1)


def neighbourhood_clustering(
    logits: torch.Tensor, feats: torch.Tensor, memory: torch.Tensor, index: torch.Tensor, temperature: float
) -> torch.Tensor:
    """DANCE's neighbourhood clustering loss, mean_i H(p_i).

    p_i = softmax over [class logits z_i (K) | f_i . V_j / T over the memory bank (N_t) | f_i . f_k / T over the
    batch (B)]. Memory columns of samples in the current batch are set to -1/T (their live features appear in the
    batch block, which carries gradient), as is the batch diagonal (a sample is not its own neighbour).
    logits (B, K), feats (B, D) L2-normalised, memory (N_t, D), index (B,) rows of the batch in the memory.
    """
    with torch.autocast(feats.device.type, enabled=False):  # similarities / T need fp32 (see UdaNet.forward)
        return _nc(logits.float(), feats.float(), memory.float(), index, temperature)


def _nc(logits, feats, memory, index, temperature):
    fill = -1.0 / temperature
    mem_sim = feats @ memory.t() / temperature
    mem_sim[:, index] = fill
    batch_sim = feats @ feats.t() / temperature
    batch_sim = batch_sim.masked_fill(torch.eye(len(feats), dtype=torch.bool, device=feats.device), fill)
    return entropy(torch.cat([logits, mem_sim, batch_sim], dim=1)).mean()


def entropy_separation(logits: torch.Tensor, rho: float, margin: float) -> torch.Tensor:
    """DANCE's entropy separation: -mean_i max(|H(p_i) - rho|, m).

    Minimising it pushes confident samples to lower entropy (known) and uncertain ones to higher (unknown);
    samples within m of rho contribute a constant, i.e. no gradient.
    """
    return -torch.clamp((entropy(logits) - rho).abs(), min=margin).mean()


def es_threshold_and_margin(num_known: int, c_rho: float, c_m: float) -> tuple[float, float]:
    """rho = c_rho ln K and m = c_m min(rho, ln K - rho).

    Entropy lies in [0, ln K], so |H - rho| <= max(rho, ln K - rho). DeepAstroUDA's shipped rho = 0.263, m = 0.5
    for K = 2 makes max |H - rho| = 0.43 < m: the loss is constant and silently does nothing. Tying m to
    min(rho, ln K - rho) with c_m < 1 guarantees both ends of the entropy range get a gradient.
    """
    ln_k = math.log(num_known)
    rho = c_rho * ln_k
    return rho, c_m * min(rho, ln_k - rho)
