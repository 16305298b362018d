"""Surveys are data: YAML presets, user-defined surveys (file or inline), validation, u/y bands, and the contract
that every survey generates a data set a model trains and evaluates on."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from uda_core.config import build_config
from uda_core.data import store
from uda_core.data.population import draw_population
from uda_core.data.render import render
from uda_core.data.store import DataSpec, generate
from uda_core.data.surveys import SURVEYS, Survey, get_survey
from uda_core.errors import ConfigError


def _old_gain(zeropoint_e_per_s, exposure_s):
    return 10 ** (0.4 * (zeropoint_e_per_s - 22.5)) * exposure_s


# The presets as uda_core/data/surveys.py defined them in Python before they became YAML (published numbers), but
# for SDSS's sample limit, which generator 1.5 set to the SDSS main sample's r < 17.77.
OLD_PRESETS = {
    "decals": Survey("decals", 0.262, ("g", "r", "z"), (1.3, 1.2, 1.1), (24.0, 23.4, 22.5),
                     (_old_gain(26.6, 166), _old_gain(26.7, 134), _old_gain(26.2, 200)), r_limit=23.4 - 5.6),
    "sdss": Survey("sdss", 0.396, ("g", "r", "z"), (1.5, 1.4, 1.3), (22.2, 22.2, 20.5),
                   (_old_gain(26.3, 53.9), _old_gain(26.5, 53.9), _old_gain(24.7, 53.9)),
                   r_limit=17.77),  # generator 1.5: the SDSS main sample (was 22.2 - 5.6)
    "stripe82": Survey("stripe82", 0.396, ("g", "r", "z"), (1.2, 1.1, 1.1), (25.1, 24.6, 22.8),
                       (_old_gain(26.3, 53.9 * 20), _old_gain(26.5, 53.9 * 20), _old_gain(24.7, 53.9 * 20)),
                       r_limit=24.6 - 5.6),
    "bass_mzls": Survey("bass_mzls", 0.262, ("g", "r", "z"), (1.60, 1.42, 1.04), (24.2, 23.6, 23.0),
                        (_old_gain(25.92, 300), _old_gain(25.81, 300), _old_gain(26.4, 300)), r_limit=23.6 - 5.6,
                        native_pixel_arcsec=0.454),
    "lsst_y1": Survey("lsst_y1", 0.2, ("g", "r", "i"), (0.77, 0.73, 0.71), (26.2, 26.2, 25.8),
                      (_old_gain(28.30, 300), _old_gain(28.13, 690), _old_gain(27.79, 690)), r_limit=26.2 - 5.6),
    "lsst_y10": Survey("lsst_y10", 0.2, ("g", "r", "i"), (0.77, 0.73, 0.71), (27.45, 27.5, 27.0),
                       (_old_gain(28.30, 3000), _old_gain(28.13, 6900), _old_gain(27.79, 6900)), r_limit=27.5 - 5.6),
}


def _ugr_survey(name="ugr_deep", m5_r=24.5) -> dict:
    """A user survey in u, g, r with its gain from zero points and exposures (as a YAML file would hold it)."""
    return {"name": name, "pixel_arcsec": 0.3, "bands": ["u", "g", "r"], "fwhm_arcsec": [1.3, 1.2, 1.1],
            "m5": [23.8, 24.8, m5_r], "zeropoint_e_per_s": [25.0, 26.5, 26.6], "exposure_s": [300, 200, 200]}


def _grz_survey(name="grz_wide") -> dict:
    """A user survey in g, r, z (the presets' bands) with gains given directly and its own sample limit."""
    return {"name": name, "pixel_arcsec": 0.35, "bands": ["g", "r", "z"], "fwhm_arcsec": [1.4, 1.3, 1.2],
            "m5": [23.5, 23.0, 22.2], "gain_e_per_nmgy": [4000.0, 4500.0, 3000.0], "r_limit": 17.5}


def _write(path: Path, definition: dict) -> str:
    path.write_text("# a user's survey\n" + yaml.safe_dump(definition))
    return str(path)


@pytest.fixture
def one_thread():
    """Tiny stamps and a width-8 model gain nothing from a second thread, and on a busy 2-core machine its
    synchronisation can make a run ten times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- presets ----------------------------------------------------------------------------------------------------


def test_yaml_presets_equal_the_old_numbers():
    assert set(SURVEYS) == set(OLD_PRESETS)
    for name, old in OLD_PRESETS.items():
        new = SURVEYS[name]
        for field, value in asdict(old).items():
            assert getattr(new, field) == value, f"{name}.{field}"  # exact: data sets must not change
        assert get_survey(name) is new


def test_every_preset_file_names_its_sources():
    folder = Path(__file__).parents[1] / "uda_core/data/survey_presets"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(SURVEYS)
    for path in folder.glob("*.yaml"):
        assert path.read_text().startswith("# ") and "Sources:" in path.read_text().splitlines()[0], path.name


def test_to_dict_is_plain_json_and_round_trips():
    unusual = get_survey({**_ugr_survey(), "native_pixel_arcsec": 0.5, "r_bright": 15.5, "moffat_beta": 2.5})
    for survey in [*SURVEYS.values(), unusual]:
        definition = json.loads(json.dumps(survey.to_dict()))
        assert get_survey(definition) == survey


def test_preset_hash_is_unchanged_by_surveys_becoming_data():
    # The hash before surveys were data: the spec's fields with the preset names, plus the generator version.
    for src, tgt in (("decals", "sdss"), ("lsst_y10", "lsst_y1"), ("decals", "bass_mzls")):
        spec = DataSpec(source=src, target=tgt, size="tiny")
        old = json.dumps({**asdict(spec), "generator_version": store.GENERATOR_VERSION}, sort_keys=True)
        assert spec.config_hash() == hashlib.sha256(old.encode()).hexdigest()
        assert spec.folder_name().startswith(f"universal-{src}-{tgt}-tiny-seed0-")


# --- user-defined surveys ---------------------------------------------------------------------------------------


def test_user_survey_from_a_file_or_inline(tmp_path):
    path = _write(tmp_path / "ugr.yaml", _ugr_survey())
    from_file, inline = get_survey(path), get_survey(_ugr_survey())
    assert from_file == inline and from_file.bands == ("u", "g", "r")
    assert from_file.gain_e_per_nmgy[1] == _old_gain(26.5, 200)
    assert from_file.r_limit == 24.5 - 5.6  # the default: the r depth minus 5.6
    assert get_survey(tmp_path / "ugr.yaml") == from_file  # a Path works too
    assert get_survey(from_file) is from_file


def test_inline_source_and_file_target_make_a_data_set(tmp_path, one_thread):
    path = _write(tmp_path / "grz.yaml", _grz_survey("grz_file"))
    spec = DataSpec(source=_grz_survey("grz_inline"), target=path, size="tiny")
    assert spec.folder_name().startswith("universal-grz_inline-grz_file-tiny-seed0-")
    folder = generate(spec, tmp_path / spec.folder_name(), progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["bands"] == ["g", "r", "z"]
    for domain, name in (("source", "grz_inline"), ("target", "grz_file")):
        entry = manifest["surveys"][domain]
        assert entry["name"] == name and entry["pixel_arcsec"] == 0.35
        assert entry["definition"] == get_survey(_grz_survey(name)).to_dict()
    cat = pq.read_table(folder / "catalogue.parquet").to_pandas()
    assert set(cat[cat.domain == "source"].survey) == {"grz_inline"}
    assert set(cat[cat.domain == "target"].survey) == {"grz_file"}


def test_run_config_takes_a_survey_file_and_an_inline_mapping(tmp_path):
    path = _write(tmp_path / "grz.yaml", _grz_survey())
    cfg = build_config({"data": {"source": path, "target": _grz_survey("other")}})
    assert cfg.data.source == path and cfg.data.target["name"] == "other"
    assert build_config({"data": {"source": "stripe82"}}).data.source == "stripe82"


def test_hash_changes_when_a_user_survey_file_changes(tmp_path):
    path = tmp_path / "ugr.yaml"
    _write(path, _ugr_survey())
    before = DataSpec(source=str(path), target=str(path))
    same_inline = DataSpec(source=_ugr_survey(), target=_ugr_survey())
    assert before.config_hash() == same_inline.config_hash()  # a survey is its definition, wherever it is written
    assert DataSpec(source=path, target=path) == before  # a Path is kept as its string (manifest.json holds it)
    first = before.config_hash()
    _write(path, _ugr_survey(m5_r=24.7))
    assert DataSpec(source=str(path), target=str(path)).config_hash() != first
    assert before.folder_name().startswith("universal-ugr_deep-ugr_deep-small-seed0-")


# --- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, key",
    [
        ({"fwhm_arcsec": [1.2, 1.1]}, "fwhm_arcsec: needs one value per band"),
        ({"exposure_s": [100, 100, 100, 100]}, "exposure_s: needs one value per band"),
        ({"bands": ["u", "g", "w"]}, "bands.2"),
        ({"colour_terms": [0.1]}, "colour_terms: unknown key"),
        ({"pixel_arcsec": -0.3}, "pixel_arcsec: Input should be greater than 0"),
        ({"m5": [23.0, -24.0, 24.0]}, "m5.1"),
        ({"native_pixel_arcsec": 0.2}, "native_pixel_arcsec: must be coarser"),
        ({"bands": ["u", "g", "i"]}, "r_limit: required when bands has no r"),
        ({"gain_e_per_nmgy": [1.0, 1.0, 1.0]}, "gain_e_per_nmgy: give gain_e_per_nmgy or"),
        ({"exposure_s": None}, "exposure_s: required"),
        ({"name": "my survey/2"}, "name: use 1 to 40"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, change, key):
    definition = {k: v for k, v in {**_ugr_survey(), **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=r"^survey definition: .*" + key):
        get_survey(definition)
    path = _write(tmp_path / "bad.yaml", definition)
    with pytest.raises(ConfigError) as e:
        get_survey(path)
    assert str(e.value).startswith(f"{path}: ") and key in str(e.value) and "\n" not in str(e.value)
    # In a run config, an inline survey's errors sit under data.source; a file's name the file and the key.
    with pytest.raises(ConfigError, match=r"data\.source\." + key):
        build_config({"data": {"source": definition}})
    with pytest.raises(ConfigError, match=f"data.target: {path}: .*{key}"):
        build_config({"data": {"target": path}})


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such survey file"):
        get_survey(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "broken.yml"
    bad.write_text("name: [ugr\npixel_arcsec: 0.3\n")
    with pytest.raises(ConfigError, match=r"broken\.yml: not valid YAML at line \d+") as e:
        get_survey(str(bad))
    assert "\n" not in str(e.value)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: a survey definition is a mapping"):
        get_survey(str(tmp_path / "list.yaml"))
    with pytest.raises(ConfigError, match=r"data\.source: .*broken\.yml: not valid YAML"):
        build_config({"data": {"source": str(bad)}})
    with pytest.raises(ConfigError, match=r"data\.source: source='hubble' is neither a preset"):
        build_config({"data": {"source": "hubble"}})


def test_cli_generate_takes_a_preset_or_a_survey_file(tmp_path, capsys):
    from sweeps.cli import main

    with pytest.raises(SystemExit):
        main(["data", "generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in SURVEYS) and "or a survey YAML file" in text
    missing = tmp_path / "missing.yaml"
    assert main(["data", "generate", "--source", str(missing), "--size", "tiny", "--out", str(tmp_path / "ds")]) == 2
    assert f"{missing}: no such survey file" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


# --- u and y bands ----------------------------------------------------------------------------------------------


def _five_band_survey() -> dict:
    return {"name": "grizy", "pixel_arcsec": 0.2, "bands": ["g", "r", "i", "z", "y"],
            "fwhm_arcsec": [0.8, 0.75, 0.7, 0.7, 0.7], "m5": [25.0, 24.8, 24.4, 23.8, 22.9],
            "gain_e_per_nmgy": [30000.0, 40000.0, 40000.0, 30000.0, 20000.0]}


@pytest.mark.parametrize("definition", [_ugr_survey(), _five_band_survey()], ids=["ugr", "grizy"])
def test_u_and_y_bands_render_with_the_depths_sky_noise(definition, tmp_path):
    survey = get_survey(_write(tmp_path / "survey.yaml", definition))  # through YAML: "y" must stay a band name
    assert list(survey.bands) == definition["bands"]
    galaxies = draw_population(np.random.default_rng(0), ["spiral", "elliptical"] * 8, survey, 48 * survey.pixel_arcsec)
    galaxies["seed"] = np.arange(16) + 1000
    img, flux = render(galaxies, survey, 48)
    assert img.shape == (16, len(survey.bands), 48, 48) and bool(img.isfinite().all())
    assert (flux > 0).all()
    galaxies["r_mag"] = np.full(16, 40.0)  # invisible galaxies: only sky noise remains
    empty, _ = render(galaxies, survey, 48)
    for b in range(len(survey.bands)):
        assert empty[:, b].std().item() == pytest.approx(survey.sky_sigma_nmgy(b), rel=0.05), survey.bands[b]


def test_u_and_y_colours_are_those_of_galaxies():
    survey = get_survey({**_five_band_survey(), "bands": ["u", "g", "r", "i", "z", "y"], "r_limit": 17.0,
                         "fwhm_arcsec": [0.9] + _five_band_survey()["fwhm_arcsec"],
                         "m5": [24.5] + _five_band_survey()["m5"],
                         "gain_e_per_nmgy": [10000.0] + _five_band_survey()["gain_e_per_nmgy"]})
    p = draw_population(np.random.default_rng(1), ["elliptical"] * 300 + ["spiral"] * 300, survey, 20.0)
    low_z = p["redshift"] < 0.1
    u_g = (p["disk_colour_u"] - p["disk_colour_g"])[low_z]
    z_y = (p["disk_colour_z"] - p["disk_colour_y"])[low_z]
    assert low_z.sum() > 50
    assert 1.0 < np.median(u_g) < 1.6 and np.percentile(u_g, 95) < 2.0 and np.percentile(u_g, 5) > 0.6
    assert 0.05 < np.median(z_y) < 0.2
    assert np.median(p["accent_colour_u"] - p["accent_colour_g"]) < np.median(p["bulge_colour_u"] - p["bulge_colour_g"])


# --- the contract: every survey generates, trains and evaluates ---------------------------------------------------


@pytest.fixture(scope="module")
def survey_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("survey_data")


def _pairs_covering_every_preset() -> list[tuple[str, str]]:
    """Source -> target pairs of presets with equal bands in which every preset appears once (a preset whose bands
    no other preset has is paired with itself): a data set is the slow part, so no survey gets two."""
    by_bands: dict[tuple, list[str]] = {}
    for name in sorted(SURVEYS):
        by_bands.setdefault(SURVEYS[name].bands, []).append(name)
    pairs = []
    for names in by_bands.values():
        pairs += list(zip(names[0::2], names[1::2]))
        if len(names) % 2:
            pairs.append((names[-1], names[-1]))
    return pairs


@pytest.mark.parametrize("pair", [*_pairs_covering_every_preset(), "user"],
                         ids=lambda p: p if p == "user" else "->".join(p))
def test_every_survey_trains_and_evaluates(pair, survey_root, tmp_path, one_thread):
    from uda_core.train import train

    if pair == "user":  # a YAML file as the source, an inline mapping with the same bands (u, g, r) as the target
        source, target = _write(tmp_path / "ugr.yaml", _ugr_survey()), _ugr_survey("ugr_shallow", m5_r=23.5)
    else:
        source, target = pair
    cfg = build_config({
        "data": {"size": "tiny", "root": str(survey_root), "source": source, "target": target},
        "model": {"width": 8, "depth": 2, "feature_dim": 16},
        "optim": {"batch_size": 16},
        "train": {"steps": 2, "eval_every": 2, "progress": False, "precision": "fp32"},
        "eval": {"max_source_features": 100, "snd_max_samples": 100, "dev_max_samples": 100,
                 "agreement_max_samples": 50},
    })
    last = train(cfg, lambda *a: None, tmp_path / "run")
    for key in ("source_val/acc", "label_free/snd", "label_free/entropy", "oracle/target_test/acc_shared",
                "oracle/target_test/h_score", "train/source_ce"):
        assert math.isfinite(last.metrics[key]), key
    folder = survey_root / DataSpec(source=source, target=target, size="tiny").folder_name()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["bands"] == list(get_survey(source).bands)
    assert manifest["surveys"]["target"]["definition"] == get_survey(target).to_dict()


def test_the_contract_covers_every_preset():
    covered = {name for pair in _pairs_covering_every_preset() for name in pair}
    assert covered == set(SURVEYS)
    assert all(SURVEYS[a].bands == SURVEYS[b].bands for a, b in _pairs_covering_every_preset())


def test_a_sweep_sends_a_survey_file_to_its_trials_as_its_definition(tmp_path, one_thread, monkeypatch):
    """Trials run in their own folders and on other nodes: the driver reads the file once and ships the mapping."""
    from sweeps.config import parse_sweep
    from sweeps.run import _data_folder, _ensure_data

    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "grz.yaml", _grz_survey("grz_file"))
    sweep = parse_sweep({"name": "user_survey", "run": {"data": {"size": "tiny", "target": "grz.yaml"}}}, "sweep")
    _ensure_data(sweep, tmp_path)
    assert sweep.run.data.target == get_survey(_grz_survey("grz_file")).to_dict() and sweep.run.data.source == "decals"
    _, folder = _data_folder(sweep)
    assert folder.name.startswith("universal-decals-grz_file-tiny-") and (folder / "manifest.json").exists()
    (tmp_path / "grz.yaml").unlink()  # what a trial on another node sees: no file, and it needs none
    assert build_config(sweep.run.model_dump()).data.target["name"] == "grz_file"


# --- bench/gap_anatomy: the source moved to the target one factor at a time --------------------------------------


def _gap_anatomy():
    import importlib.util

    path = Path(__file__).parents[1] / "bench/gap_anatomy.py"
    spec = importlib.util.spec_from_file_location("gap_anatomy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_gap_factor_moves_only_its_own_numbers():
    ga = _gap_anatomy()
    source, target = SURVEYS["decals"], SURVEYS["bass_mzls"]
    assert ga.derived_source(source, target, "unchanged") == "decals"
    moved = {}
    for factor in ga.FACTORS:
        if factor == "unchanged":
            continue
        derived = get_survey(ga.derived_source(source, target, factor))  # a valid survey definition
        assert derived.name not in SURVEYS  # its own noise seeds and data set folder
        moved[factor] = {k for k, v in derived.to_dict().items() if k != "name" and v != source.to_dict()[k]}
        assert all(derived.to_dict()[k] == target.to_dict()[k] for k in moved[factor])
    assert moved["noise"] == {"m5", "gain_e_per_nmgy"}  # the sample limit stays the source's
    assert moved["psf"] == {"fwhm_arcsec"} and moved["pixel"] == {"native_pixel_arcsec"}
    assert moved["selection"] == {"r_limit"}
    assert {k: v for k, v in get_survey(ga.derived_source(source, target, "all")).to_dict().items()
            if k != "name"} == {k: v for k, v in target.to_dict().items() if k != "name"}
