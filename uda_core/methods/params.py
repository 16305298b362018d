"""Each method's hyperparameters, by method name: the only copy of their defaults and ranges.

Apart from the implementations (which import torch), so that a run config or sweep file is validated in a
fraction of a second. `uda_core.methods.METHODS` holds the classes; each class's `Params` is its model here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError

__all__ = ["PARAMS", "TRAINS_ON_TARGET_LABELS", "method_params", "NoParams", "DanceParams", "SphKMeansParams",
           "EmulationParams", "OvanetParams", "ContrastiveParams"]


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DanceParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    eta_nc: float = Field(0.05, ge=0.0, le=10.0)
    eta_es: float = Field(0.05, ge=0.0, le=10.0)
    c_rho: float = Field(0.5, gt=0.0, lt=1.0)
    c_m: float = Field(0.5, ge=0.0, lt=1.0)
    memory_momentum: float = Field(0.0, ge=0.0, lt=1.0)  # 0 replaces memory entries (the reference default)


class SphKMeansParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # Share of the steps spent training the source model; > 0, or K-means would start from random prototypes.
    warmup_frac: float = Field(0.5, gt=0.0, lt=1.0)
    clusters_per_answer: int = Field(1, ge=1, le=10)
    confidence_frac: float = Field(0.1, gt=0.0, le=1.0)  # Ye et al.: 0.1
    threshold_start: float = Field(0.9, ge=-1.0, le=1.0)  # cosine similarity; Ye et al.: 0.9
    threshold_decay: float = Field(0.005, ge=0.0, le=0.2)  # per re-clustering; Ye et al.: 0.005 per epoch
    tau: float = Field(0.05, gt=0.0, le=1.0)  # Ye et al.: 0.05
    recluster_every: int = Field(50, ge=1, le=100_000)  # steps between re-clusterings (Ye et al.: one epoch)
    adapt_lr_scale: float = Field(0.1, gt=0.0, le=1.0)  # adaptation learning rate / the run's
    source_weight: float = Field(1.0, ge=0.0, le=10.0)  # source losses kept during adaptation (Ye et al.: 0)
    tree_filter: bool = True
    kmeans_iters: int = Field(100, ge=1, le=1000)


class EmulationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # 0: the source as observed; 1: degraded to the target survey's PSF, pixel scale and sky noise; > 1 overshoots.
    strength: float = Field(1.0, ge=0.0, le=1.5)
    prob: float = Field(0.5, ge=0.0, le=1.0)  # share of source stamps degraded (the rest keep the source's view)


class OvanetParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    ova_weight: float = Field(1.0, ge=0.0, le=10.0)  # one-vs-all loss on the source (Saito & Saenko: 1)
    ent_weight: float = Field(0.1, ge=0.0, le=10.0)  # open-set entropy minimisation on the target (their 0.1)
    # Survey emulation of the source (0: off). On by default: the claim to test is what the method adds to the
    # strongest simple baseline, AdaBN + emulation (methods.emulation).
    emulation_strength: float = Field(1.0, ge=0.0, le=1.5)
    emulation_prob: float = Field(0.5, ge=0.0, le=1.0)


class ContrastiveParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    weight: float = Field(0.5, ge=0.0, le=10.0)  # of the NT-Xent loss beside the source cross-entropy
    tau: float = Field(0.2, gt=0.01, le=1.0)  # NT-Xent temperature (SimCLR: 0.1-0.5)
    noise: float = Field(0.05, ge=0.0, le=0.5)  # most extra sky noise in a view (stretched units)
    max_shift: int = Field(2, ge=0, le=8)  # pixels
    emulation_strength: float = Field(1.0, ge=0.0, le=1.5)  # survey emulation of the source, as OVANet's
    emulation_prob: float = Field(0.5, ge=0.0, le=1.0)


PARAMS: dict[str, type[BaseModel]] = {
    "source_only": NoParams, "adabn": NoParams, "dance": DanceParams, "target_oracle": NoParams,
    "sphkmeans": SphKMeansParams, "emulation": EmulationParams, "ovanet": OvanetParams,
    "open_set_oracle": NoParams, "contrastive": ContrastiveParams,
}


# Methods that train on every labelled target stamp (their class's target_labels is "all" or "all+unknown"): upper
# bounds for benchmarks, refused on a target without training labels. The others use target labels only through
# data.few_shot_per_class.
TRAINS_ON_TARGET_LABELS = frozenset({"target_oracle", "open_set_oracle"})


def method_params(name: str) -> type[BaseModel]:
    """The hyperparameter model of method `name`; an unknown name is a ConfigError listing the methods."""
    try:
        return PARAMS[name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {name!r}; choose one of {sorted(PARAMS)}") from None
