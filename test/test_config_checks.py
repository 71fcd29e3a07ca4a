"""Every localization setting is checked on load: a bad value fails with an error that names the setting
(and only it), and the edge of each valid range is accepted."""
import dataclasses
import re

import pytest

from densernet_core.config import ConfigError
from densernet_core.localization.belief import BeliefConfig
from densernet_core.localization.metric import MetricConfig
from densernet_core.localization.observation import ObservationConfig
from densernet_core.localization.pose import PoseEstimatorConfig

# Two-sided ranges are tried past either end.
INVALID = {
    BeliefConfig: {"max_speed": 0.0, "max_step": 0.0, "odom_noise": -0.1, "likelihood_temperature": 0.0,
                   "odom_noise_floor": 0.0, "uniform_mix": (0.0, 1.0), "likelihood_floor": (0.0, 1.5),
                   "contradiction_level": (-0.1, 1.0), "relocalize_after": 0, "fix_radius": -1.0,
                   "fix_mass": (0.0, 1.5), "position_floor": 0.0, "yaw_floor_deg": 0.0,
                   "observation": "absolute", "out_prior": (0.0, 1.0), "leave_rate": (-0.1, 1.0),
                   "enter_rate": (0.0, 1.5), "velocity_change": (-0.1, 1.5), "route_noise": -0.1,
                   "stop_penalty": (0.0, 1.5), "moving_similarity": (-1.5, 1.5), "least_evidence": (0.0, 1.5)},
    PoseEstimatorConfig: {"cluster_radius": 0.0, "ratio_threshold": 0.99, "min_confidence": (-0.1, 1.1),
                          "position_floor": 0.0, "yaw_floor_deg": 0.0, "min_score": (-1.1, 1.1),
                          "confidence": "certain", "out_prior": (0.0, 1.0)},
    MetricConfig: {"candidates": 0, "ratio": (0.0, 1.5), "ransac_px": 0.0, "ransac_iterations": 0, "min_inliers": 3,
                   "max_reproj_px": 0.0, "min_spread_px": -1.0, "max_condition": 1.0, "min_pixel_sigma": 0.0,
                   "max_jump_sigmas": 0.0, "focal_tolerance": (0.0, 1.0), "focal_prior": 0.0},
    ObservationConfig: {"recognition_margin": (0.0, 1.1), "positive_spacings": 0.0, "max_queries": 19,
                        "regularization": -1.0, "miss_rate": (0.0, 1.0)},
}
# out_of_map needs the calibrated observation: set apart so an unknown observation is the only fault
ALSO = {(BeliefConfig, "observation"): {"out_of_map": False}}
EDGES = {
    BeliefConfig: {"odom_noise": 0.0, "likelihood_floor": 1.0, "contradiction_level": 0.0, "relocalize_after": 1,
                   "fix_radius": 0.0, "fix_mass": 1.0, "leave_rate": 0.0, "enter_rate": 1.0,
                   "velocity_change": 1.0, "route_noise": 0.0, "stop_penalty": 1.0, "moving_similarity": -1.0,
                   "least_evidence": 1.0},
    PoseEstimatorConfig: {"ratio_threshold": 1.0, "min_confidence": 0.0, "min_score": -1.0},
    MetricConfig: {"candidates": 1, "ratio": 1.0, "min_inliers": 4, "min_spread_px": 0.0, "ransac_iterations": 1},
    ObservationConfig: {"recognition_margin": 1.0, "max_queries": 20, "regularization": 0.0},
}


@pytest.mark.parametrize("cls,field,value", [(c, f, v) for c, bad in INVALID.items() for f, vs in bad.items()
                                             for v in (vs if isinstance(vs, tuple) else (vs,))],
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_bad_setting_is_refused_by_name(cls, field, value):
    with pytest.raises(ConfigError) as err:
        cls(**{field: value}, **ALSO.get((cls, field), {}))
    named = str(err.value).split("invalid ", 1)[1]
    assert named.startswith(f"{field}={value!r}"), str(err.value)
    fields = {f.name for f in dataclasses.fields(cls)}
    others = [k for k in re.findall(r"(?:^|, )(\w+)=", named) if k in fields and k != field]
    assert not others, f"valid settings named as invalid too: {others}"


@pytest.mark.parametrize("cls,field,value", [(c, f, v) for c, ok in EDGES.items() for f, v in ok.items()],
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_the_edge_of_each_range_is_accepted(cls, field, value):
    assert getattr(cls(**{field: value}), field) == value


def test_dependent_settings_name_both_sides():
    with pytest.raises(ConfigError, match="out_of_map"):
        BeliefConfig(out_of_map=True, observation="relative")
    with pytest.raises(ConfigError, match=r"exclusion_spacings"):
        ObservationConfig(exclusion_spacings=ObservationConfig().positive_spacings)


def test_long_lists_in_messages_say_how_many_more():
    from densernet_core.listing import first_few

    assert first_few(range(3)) == "0, 1, 2"
    assert first_few(range(12)) == "0, 1, 2, 3, 4 and 7 more"
    assert first_few(["a"] * 11, 10).endswith("a and 1 more") and first_few([]) == ""
