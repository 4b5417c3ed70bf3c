"""The expert registry (`core.experts`): one name rule, experts filed by their manifests."""

import shutil

import pytest

from core import experts
from core.errors import UserInputError
from core.manifest import ManifestError
from edge_router import register
from edge_router.options import Defaults, RouterError, parse_options

GOOD = ["pristine", "gaussian_blur", "gaussian_noise_adapt_bn", "a", "A-1", "x" * 64]
BAD = ["", "x" * 65, "gaußian", "blur/../x", "a b", "a.b", "ñ", "edge\n", None, 3]


@pytest.mark.parametrize("name", GOOD)
def test_names_that_follow_the_rule(name):
    assert experts.is_expert_name(name) and experts.check_expert_name(name) == name
    for role in experts.ARCHIVE_ROLES:
        assert experts.parse_archive_name(experts.archive_name(role, name)) == (role, name)


@pytest.mark.parametrize("name", BAD)
def test_names_refused_everywhere_alike(name):
    assert not experts.is_expert_name(name)
    with pytest.raises(UserInputError, match="ASCII"):
        experts.check_expert_name(name)
    if isinstance(name, str):
        # the router refuses it in a request ...
        with pytest.raises(RouterError) as exc:
            parse_options({"expert": [name]}, Defaults())
        assert exc.value.status == 400
        # ... and the register command before it talks to any server
        args = register.get_args_parser().parse_args(["add", name, "--run-dir", "/nonexistent"])
        with pytest.raises(UserInputError, match="expert name"):
            register.main(args)


def test_archive_names_that_are_not_ours():
    for model in ["distortion_classifier", "edge_", "edgeX_pristine", "cloud", "full_gauß", "mymodel"]:
        assert experts.parse_archive_name(model) is None
    with pytest.raises(ValueError):
        experts.archive_name("classifier", "pristine")


def test_standard_experts_are_the_training_recipe():
    assert experts.standard_experts() == (
        "conventional",
        "pristine",
        "gaussian_blur",
        "gaussian_noise",
        "motion_blur",
    )


def test_export_filed_by_manifest(exported):
    out, _ = exported
    registry = experts.from_export(out, verify=True)
    assert registry.classifier is not None
    assert set(registry.pairs()) == set(experts.standard_experts())
    for name, ((edge, _), (cloud, _)) in registry.pairs().items():
        assert (edge.role, edge.name, cloud.role, cloud.name) == ("edge", name, "cloud", name)
        # python -m export measured what the expert's exits are worth (core.operating_points)
        assert edge.operating_points["samples"] > 0 and not cloud.operating_points
    assert set(registry.manifests()) == {p.stem for p in out.glob("*.json")} - {"export_report"}


def test_renamed_manifest_is_refused(exported, tmp_path):
    out, _ = exported
    for path in out.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    # a user "adds an expert" by copying the pristine one under another name
    shutil.copy(out / "edge_pristine.json", tmp_path / "edge_mine.json")
    with pytest.raises(ManifestError, match="edge_mine carries the edge manifest of expert 'pristine'"):
        experts.from_export(tmp_path)
    (tmp_path / "edge_mine.json").unlink()
    shutil.copy(out / "cloud_pristine.json", tmp_path / "edge_pristine.json")
    with pytest.raises(ManifestError, match="carries the cloud manifest"):
        experts.from_export(tmp_path)


def test_an_edge_half_without_its_cloud_half(exported, tmp_path):
    out, _ = exported
    for path in out.glob("*.json"):
        if path.name != "cloud_gaussian_noise.json":
            shutil.copy(path, tmp_path / path.name)
    with pytest.raises(UserInputError, match="edge_gaussian_noise has no cloud_gaussian_noise"):
        experts.from_export(tmp_path).pairs()
