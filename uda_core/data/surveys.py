"""Surveys: the published numbers that make one survey's images differ from another's.

A survey is data: a YAML definition validated into a frozen `Survey`. The presets ship as
`survey_presets/<name>.yaml`, each naming the sources of its numbers; a user's survey is a YAML file or an inline
mapping with the same keys (see `SurveyDefinition`). `get_survey` takes any of these. Depths are 5-sigma
point-source AB magnitudes; fluxes are in nanomaggies (m = 22.5 - 2.5 log10 f), the unit of SDSS and Legacy
Survey images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..errors import ConfigError

__all__ = ["Survey", "SURVEYS", "SIMULATED_BANDS", "SurveyDefinition", "get_survey", "is_survey_file",
           "load_survey_file", "survey_from_definition"]

# The bands the population model gives colours for (population.band_magnitudes); a survey may use any of them.
SIMULATED_BANDS = ("u", "g", "r", "i", "z", "y")

# Effective number of pixels under a point source for a Gaussian-like PSF: n_eff = 2.266 (FWHM / pix)^2.
_NEFF_COEFF = 2.266


@dataclass(frozen=True)
class Survey:
    name: str
    pixel_arcsec: float
    bands: tuple[str, ...]
    fwhm_arcsec: tuple[float, ...]
    m5: tuple[float, ...]
    # Electrons per nanomaggy over the total exposure: sets the source Poisson noise.
    gain_e_per_nmgy: tuple[float, ...]
    # The morphology sample is what the survey sees well: r brighter than this (AB mag).
    r_limit: float
    # Surveys whose cutouts are resampled (BASS: 0.454"/px native, delivered at 0.262"/px) are drawn natively.
    native_pixel_arcsec: float | None = None
    r_bright: float = 14.0
    moffat_beta: float = 3.5

    @property
    def draw_pixel_arcsec(self) -> float:
        return self.native_pixel_arcsec or self.pixel_arcsec

    def sky_sigma_nmgy(self, band_index: int) -> float:
        """Per-pixel sky sigma implied by the 5-sigma depth: 10^(-0.4 (m5 - 22.5)) / (5 sqrt(n_eff))."""
        pix = self.draw_pixel_arcsec
        n_eff = _NEFF_COEFF * (self.fwhm_arcsec[band_index] / pix) ** 2
        return 10 ** (-0.4 * (self.m5[band_index] - 22.5)) / (5.0 * math.sqrt(n_eff))

    def to_dict(self) -> dict[str, Any]:
        """The full definition as plain JSON types; `get_survey` of it gives this survey back."""
        return {
            "name": self.name,
            "pixel_arcsec": self.pixel_arcsec,
            "bands": list(self.bands),
            "fwhm_arcsec": list(self.fwhm_arcsec),
            "m5": list(self.m5),
            "gain_e_per_nmgy": list(self.gain_e_per_nmgy),
            "r_limit": self.r_limit,
            "native_pixel_arcsec": self.native_pixel_arcsec,
            "r_bright": self.r_bright,
            "moffat_beta": self.moffat_beta,
        }


def _gain(zeropoint_e_per_s: float, exposure_s: float) -> float:
    """Electrons per nanomaggy from a zero point (mag giving 1 e-/s) and an exposure."""
    return 10 ** (0.4 * (zeropoint_e_per_s - 22.5)) * exposure_s


# By default the morphology-sample limit sits 5.6 mag above a survey's r depth, so each survey selects its own
# population: GZ DECaLS' r < 17.77 for DECaLS (23.4 - 5.6 = 17.8), fainter and more distant galaxies for Stripe 82
# and LSST. A survey with a published sample limit gives it (SDSS: the main galaxy sample's r < 17.77).
_LIMIT_OFFSET = 5.6

Band = Literal[SIMULATED_BANDS]  # type: ignore[valid-type]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SurveyDefinition(BaseModel):
    """One survey as written in YAML (or inline in a run config); `to_survey()` fills in the defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str  # also names data set folders and seeds the noise
    pixel_arcsec: PositiveFloat
    bands: list[Band] = Field(min_length=1)
    fwhm_arcsec: list[PositiveFloat]
    m5: list[PositiveFloat]
    # The gain (electrons per nanomaggy over the total exposure) sets the source Poisson noise: give it, or the
    # zero point (mag giving 1 e-/s) and the total exposure per band.
    zeropoint_e_per_s: list[PositiveFloat] | None = None
    exposure_s: list[PositiveFloat] | None = None
    gain_e_per_nmgy: list[PositiveFloat] | None = None
    r_limit: PositiveFloat | None = None  # default: the r depth minus 5.6 (see _LIMIT_OFFSET)
    native_pixel_arcsec: PositiveFloat | None = None
    r_bright: PositiveFloat = 14.0
    moffat_beta: float = Field(3.5, gt=1.0, allow_inf_nan=False)  # at beta <= 1 a Moffat profile's total flux diverges

    @field_validator("name")
    @classmethod
    def _usable_in_folder_names(cls, name: str) -> str:
        if not name or len(name) > 40 or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in name):
            raise ValueError("use 1 to 40 letters, digits, '_', '.' or '-' (the name goes into data set folder names)")
        return name

    @field_validator("bands")
    @classmethod
    def _distinct_bands(cls, bands: list[str]) -> list[str]:
        if len(set(bands)) < len(bands):
            raise ValueError("each band may appear once")
        return bands

    @field_validator("fwhm_arcsec", "m5", "zeropoint_e_per_s", "exposure_s", "gain_e_per_nmgy")
    @classmethod
    def _one_value_per_band(cls, values: list[float] | None, info) -> list[float] | None:
        bands = info.data.get("bands")  # absent when the bands themselves were invalid
        if values is not None and bands is not None and len(values) != len(bands):
            raise ValueError(f"needs one value per band ({len(bands)}: {', '.join(bands)}), not {len(values)}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "SurveyDefinition":
        if self.native_pixel_arcsec is not None and self.native_pixel_arcsec <= self.pixel_arcsec:
            raise _key_error("native_pixel_arcsec", "must be coarser than pixel_arcsec "
                             "(the native grid is resampled to the finer delivered one)", self.native_pixel_arcsec)
        self._resolved_gain()
        if self.r_bright >= self._resolved_r_limit():
            raise _key_error("r_bright", "must be brighter (a smaller magnitude) than r_limit", self.r_bright)
        return self

    def _resolved_gain(self) -> list[float]:
        has_zeropoint, has_exposure = self.zeropoint_e_per_s is not None, self.exposure_s is not None
        if self.gain_e_per_nmgy is not None:
            if has_zeropoint or has_exposure:
                raise _key_error("gain_e_per_nmgy", "give gain_e_per_nmgy or zeropoint_e_per_s with exposure_s, "
                                 "not both", self.gain_e_per_nmgy)
            return self.gain_e_per_nmgy
        if has_zeropoint and has_exposure:
            return [_gain(zp, t) for zp, t in zip(self.zeropoint_e_per_s, self.exposure_s)]
        missing = "exposure_s" if has_zeropoint else "zeropoint_e_per_s" if has_exposure else "gain_e_per_nmgy"
        raise _key_error(missing, "required: give gain_e_per_nmgy, or zeropoint_e_per_s with exposure_s", None)

    def _resolved_r_limit(self) -> float:
        if self.r_limit is not None:
            return self.r_limit
        if "r" not in self.bands:
            raise _key_error("r_limit", "required when bands has no r (the default is the r depth minus 5.6)", None)
        return self.m5[self.bands.index("r")] - _LIMIT_OFFSET

    def to_survey(self) -> Survey:
        return Survey(
            self.name,
            self.pixel_arcsec,
            tuple(self.bands),
            tuple(self.fwhm_arcsec),
            tuple(self.m5),
            tuple(self._resolved_gain()),
            r_limit=self._resolved_r_limit(),
            native_pixel_arcsec=self.native_pixel_arcsec,
            r_bright=self.r_bright,
            moffat_beta=self.moffat_beta,
        )


def _key_error(key: str, message: str, value: Any) -> ValidationError:
    """A validation error located at `key`, so a run config reports it as data.source.<key>."""
    detail = InitErrorDetails(type=PydanticCustomError("survey", message), loc=(key,), input=value)
    return ValidationError.from_exception_data("SurveyDefinition", [detail])


def _describe(e: ValidationError) -> str:
    """The problems on one line, each as `key: what is wrong (got value)`."""
    problems = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            text = f"unknown key; a survey has keys {', '.join(SurveyDefinition.model_fields)}"
        elif err["type"] == "missing":
            text = "required"
        else:
            got = "" if err["input"] is None else f" (got {err['input']!r})"
            text = err["msg"].removeprefix("Value error, ") + got
        problems.append(f"{key}: {text}" if key else text)
    return "; ".join(problems)


def survey_from_definition(raw: Any, where: str = "survey definition") -> Survey:
    """The survey a plain mapping defines; any problem is a ConfigError naming `where` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a survey definition is a mapping with keys "
                          f"{', '.join(SurveyDefinition.model_fields)}, not {type(raw).__name__}")
    try:
        return SurveyDefinition.model_validate(raw).to_survey()
    except ValidationError as e:
        raise ConfigError(f"{where}: {_describe(e)}") from None


def load_survey_file(path: str | os.PathLike) -> Survey:
    """The survey defined by the YAML file at `path`."""
    return survey_from_definition(_read_yaml(Path(path)), str(path))


def _read_yaml(path: Path) -> Any:
    from ..config import read_yaml  # the strict reader (duplicate keys refused); config imports this module

    return read_yaml(path, "survey file")


def is_survey_file(spec: Any) -> bool:
    """Whether `spec` names a survey YAML file (rather than a preset)."""
    if isinstance(spec, os.PathLike):
        return True
    return isinstance(spec, str) and (spec.endswith((".yaml", ".yml")) or os.path.isfile(spec))


def _load_presets() -> dict[str, Survey]:
    folder = resources.files(__package__).joinpath("survey_presets")
    presets = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        survey = survey_from_definition(yaml.safe_load(entry.read_text()), f"survey preset {entry.name}")
        if f"{survey.name}.yaml" != entry.name:  # pragma: no cover - a packaging mistake, caught by the tests
            raise ConfigError(f"survey preset {entry.name}: its name {survey.name!r} must match the file name")
        presets[survey.name] = survey
    return presets


SURVEYS: dict[str, Survey] = _load_presets()


def get_survey(spec: str | os.PathLike | dict | Survey) -> Survey:
    """A survey from a preset name, a YAML file holding one definition, an inline definition or a Survey."""
    if isinstance(spec, Survey):
        return spec
    if isinstance(spec, dict):
        return survey_from_definition(spec)
    if isinstance(spec, str) and spec in SURVEYS:
        return SURVEYS[spec]
    if is_survey_file(spec):
        return load_survey_file(spec)
    if not isinstance(spec, str):
        raise ConfigError(f"a survey is a preset name, a YAML file, a mapping or a Survey, not {type(spec).__name__}")
    raise ConfigError(f"unknown survey {spec!r}: choose one of the presets {sorted(SURVEYS)} or give a survey "
                      "YAML file (a path ending .yaml or .yml)")
