"""ar1_jax/config.py: named configs, dotted overrides, validation messages, dict round trip."""

import dataclasses
import re
import json

import pytest

from ar1_jax import config as C
from ar1_jax.config import Config, ConfigError, apply_overrides, from_dict, get_config, to_dict

NAMED = ("tiny", "tiny_qwen3", "vlm_0p5b", "qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen3_vl_8b")


def test_available_configs_lists_the_shipped_ones():
    names = C.available_configs()
    assert set(NAMED) <= set(names)
    assert names == sorted(names)
    assert not any(n.startswith("_") for n in names)


@pytest.mark.parametrize("name", C.available_configs())
def test_every_named_config_loads_and_validates(name):
    cfg = get_config(name)
    assert isinstance(cfg, Config)
    assert cfg.name == name
    assert cfg.validate() is cfg
    m = cfg.model
    assert m.family in C.FAMILIES and m.vision.family == m.family
    assert sum(m.text.mrope_section) * 2 == m.text.head_dim
    assert m.vision.out_hidden_size == m.text.hidden_size


@pytest.mark.parametrize("name", C.available_configs())
def test_to_dict_from_dict_round_trip(name):
    cfg = get_config(name)
    d = to_dict(cfg)
    assert from_dict(Config, d) == cfg
    # Through JSON too: tuples come back as lists and must be rebuilt as tuples.
    again = from_dict(Config, json.loads(json.dumps(d)))
    assert again == cfg
    assert isinstance(again.model.text.mrope_section, tuple)
    assert isinstance(again.model.vision.fullatt_block_indexes, tuple)


def test_round_trip_keeps_overridden_optional_and_tuple_fields():
    cfg = get_config("tiny", ["model.text.sliding_window=64", "model.vision.fullatt_block_indexes=0,2"])
    assert from_dict(Config, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_from_dict_names_unknown_nested_key():
    d = to_dict(get_config("tiny"))
    d["model"]["text"]["num_layerz"] = 3
    with pytest.raises(ConfigError, match=r"model\.text\.num_layerz"):
        from_dict(Config, d)


def test_known_shapes():
    # A few published numbers, so a typo in a named config is caught.
    q3 = get_config("qwen3_vl_8b").model
    assert (q3.text.num_layers, q3.text.hidden_size, q3.text.num_heads, q3.text.num_kv_heads) == (36, 4096, 32, 8)
    assert q3.text.mrope_interleaved and q3.text.qk_norm and not q3.text.qkv_bias
    assert q3.vision.deepstack_visual_indexes == (8, 16, 24) and q3.vision.patch_size == 16
    q25 = get_config("qwen2_5_vl_3b").model
    assert (q25.text.num_layers, q25.text.hidden_size, q25.text.num_kv_heads) == (36, 2048, 2)
    assert q25.text.tie_word_embeddings and q25.vision.fullatt_block_indexes == (7, 15, 23, 31)
    tiny = get_config("tiny").model
    assert tiny.vision.patch_dim == 3 * 2 * 14 * 14


# ----------------------------------------------------------------------------------------------------
# Overrides.


def test_override_int_float_bool_str():
    cfg = get_config("tiny", [
        "model.text.num_layers=4",
        "model.text.rope_theta=5e5",
        "model.text.qk_norm=true",
        "model.text.qkv_bias=off",
        "model.attention_impl=pallas",
        "seed=1_000",
    ])
    assert cfg.model.text.num_layers == 4 and type(cfg.model.text.num_layers) is int
    assert cfg.model.text.rope_theta == 5e5 and type(cfg.model.text.rope_theta) is float
    assert cfg.model.text.qk_norm is True and cfg.model.text.qkv_bias is False
    assert cfg.model.attention_impl == "pallas"
    assert cfg.seed == 1000


@pytest.mark.parametrize("raw, expected", [("yes", True), ("1", True), ("FALSE", False), ("no", False)])
def test_override_bool_spellings(raw, expected):
    assert get_config("tiny", [f"model.text.scan_layers={raw}"]).model.text.scan_layers is expected


@pytest.mark.parametrize("raw, expected", [("4,2,2", (4, 2, 2)), ("(4, 2, 2)", (4, 2, 2)), ("[4,2,2]", (4, 2, 2))])
def test_override_tuple(raw, expected):
    cfg = get_config("tiny", ["model.text.head_dim=16", f"model.text.mrope_section={raw}"])
    assert cfg.model.text.mrope_section == expected


def test_override_empty_and_single_element_tuple():
    assert get_config("tiny", ["model.vision.fullatt_block_indexes=()"]).model.vision.fullatt_block_indexes == ()
    assert get_config("tiny", ["model.vision.fullatt_block_indexes=2"]).model.vision.fullatt_block_indexes == (2,)


def test_override_optional():
    cfg = get_config("tiny", ["model.text.sliding_window=128"])
    assert cfg.model.text.sliding_window == 128
    assert get_config("tiny", ["model.text.sliding_window=None"]).model.text.sliding_window is None
    assert apply_overrides(cfg, ["model.text.sliding_window=null"]).model.text.sliding_window is None


def test_overrides_apply_in_order_and_do_not_mutate():
    base = get_config("tiny")
    cfg = apply_overrides(base, ["model.text.num_layers=3", "model.text.num_layers=5", "mesh.fsdp=4"])
    assert cfg.model.text.num_layers == 5 and cfg.mesh.fsdp == 4
    assert base.model.text.num_layers == 2 and base.mesh.fsdp == 1
    assert base == get_config("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.seed = 3  # type: ignore[misc]


def test_whitespace_around_key_and_value_is_ignored():
    assert get_config("tiny", [" model.text.num_layers = 3 "]).model.text.num_layers == 3


@pytest.mark.parametrize("override, field", [
    ("model.text.num_layerz=3", "model.text.num_layerz"),
    ("model.txt.num_layers=3", "model.txt.num_layers"),
    ("nope=1", "nope"),
])
def test_unknown_field_names_it(override, field):
    with pytest.raises(ConfigError, match=rf"`{field}`"):
        get_config("tiny", [override])


def test_unknown_field_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean num_layers"):
        get_config("tiny", ["model.text.num_layer=3"])


@pytest.mark.parametrize("override, field", [
    ("model.text.num_layers=four", "model.text.num_layers"),
    ("model.text.num_layers=4.5", "model.text.num_layers"),
    ("model.text.rope_theta=fast", "model.text.rope_theta"),
    ("model.text.qkv_bias=maybe", "model.text.qkv_bias"),
    ("model.text.mrope_section=2,x,3", "model.text.mrope_section"),
    ("model.text.sliding_window=wide", "model.text.sliding_window"),
])
def test_bad_value_names_field(override, field):
    with pytest.raises(ConfigError, match=rf"`{field}`"):
        get_config("tiny", [override])


@pytest.mark.parametrize("override, field", [
    ("model.text=3", "model.text"),
    ("model=tiny", "model"),
    ("mesh=4", "mesh"),
])
def test_section_as_value_names_field(override, field):
    with pytest.raises(ConfigError, match=rf"`{field}` is a section"):
        get_config("tiny", [override])


def test_field_below_a_leaf_names_path():
    with pytest.raises(ConfigError, match=r"model\.text\.num_layers\.deep"):
        get_config("tiny", ["model.text.num_layers.deep=1"])


def test_missing_equals_names_field():
    with pytest.raises(ConfigError, match=r"model\.text\.num_layers") as e:
        get_config("tiny", ["model.text.num_layers"])
    assert "key=value" in str(e.value)


# ----------------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("overrides, field", [
    (["model.text.mrope_section=2,3,4"], "model.text.mrope_section"),
    (["model.text.mrope_section=4,4"], "model.text.mrope_section"),
    (["model.text.num_heads=3"], "model.text.num_heads"),
    (["model.text.num_layers=0"], "model.text.num_layers"),
    (["model.text.remat=sometimes"], "model.text.remat"),
    (["model.family=llama"], "model.family"),
    (["model.family=qwen3_vl"], "model.vision.family"),
    (["model.dtype=float64"], "model.dtype"),
    (["model.param_dtype=int8"], "model.param_dtype"),
    (["model.attention_impl=flash"], "model.attention_impl"),
    (["model.image_token_id=512"], "model.image_token_id"),
    (["model.vision_end_token_id=-1"], "model.vision_end_token_id"),
    (["model.vision.out_hidden_size=32"], "model.vision.out_hidden_size"),
    (["model.vision.num_heads=3"], "model.vision.hidden_size"),
    (["model.vision.hidden_act=relu"], "model.vision.hidden_act"),
    (["model.vision.fullatt_block_indexes=1,4"], "model.vision.fullatt_block_indexes"),
    (["model.vision.window_size=50"], "model.vision.window_size"),
])
def test_validation_names_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"`{field}`"):
        get_config("tiny", overrides)


@pytest.mark.parametrize("overrides, field", [
    (["model.vision.num_position_embeddings=60"], "model.vision.num_position_embeddings"),
    (["model.vision.deepstack_visual_indexes=0,3"], "model.vision.deepstack_visual_indexes"),
    (["model.vision.deepstack_visual_indexes=0,1,2", "model.text.num_layers=2"],
     "model.vision.deepstack_visual_indexes"),
])
def test_qwen3_validation_names_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"`{field}`"):
        get_config("tiny_qwen3", overrides)


def test_validation_message_says_what_was_expected():
    with pytest.raises(ConfigError) as e:
        get_config("tiny", ["model.text.mrope_section=2,3,4"])
    msg = str(e.value)
    assert "model.text.mrope_section" in msg and "head_dim / 2 = 8" in msg and "(2, 3, 4)" in msg


def test_consistent_change_across_fields_validates():
    cfg = get_config("tiny", ["model.text.head_dim=32", "model.text.mrope_section=4,6,6"])
    assert cfg.model.text.head_dim == 32


# ----------------------------------------------------------------------------------------------------
# Loading by name or path.


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(ConfigError) as e:
        get_config("tinyy")
    msg = str(e.value)
    assert "'tinyy'" in msg and "did you mean tiny" in msg and "qwen3_vl_8b" in msg


def test_config_from_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from ar1_jax.config import Config, get_config as _get\n"
        "def get_config() -> Config:\n"
        "    import dataclasses\n"
        "    return dataclasses.replace(_get('tiny'), name='mine')\n"
    )
    cfg = get_config(str(path), ["model.text.num_layers=3"])
    assert cfg.name == "mine" and cfg.model.text.num_layers == 3


def test_config_file_missing_or_without_get_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        get_config(str(tmp_path / "absent.py"))
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        get_config(str(empty))


def test_mesh_defaults():
    mesh = get_config("tiny").mesh
    assert (mesh.data, mesh.fsdp, mesh.tensor) == (-1, 1, 1)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    mesh = get_config("tiny", ["mesh.fsdp=4", "mesh.tensor=2"]).mesh
    assert (mesh.fsdp, mesh.tensor) == (4, 2)


@pytest.mark.parametrize("override,field", [
    ("model.text.num_kv_heads=0", "model.text.num_kv_heads"),
    ("model.vision.patch_size=0", "model.vision.patch_size"),
    ("model.vision.num_heads=-2", "model.vision.num_heads"),
    ("mesh.fsdp=0", "mesh.fsdp"),
    ("mesh.fsdp=-1", "mesh.fsdp"),  # data is already -1: two wildcard axes
    ("mesh.rules=bogus", "mesh.rules"),
])
def test_degenerate_values_fail_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=re.escape(f"`{field}`")):
        get_config("tiny", [override])


def test_config_file_that_fails_to_import_or_returns_wrong_type(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match="failed to import"):
        get_config(str(bad))
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def get_config():\n    return {'model': 1}\n")
    with pytest.raises(ConfigError, match="expected ar1_jax.config.Config"):
        get_config(str(wrong))


def test_synth_section_is_part_of_the_config_and_takes_overrides():
    cfg = get_config("ar1_tiny")
    assert cfg.synth == C.SynthConfig() and cfg.synth.supersample == 2
    got = apply_overrides(cfg, ["synth.supersample=3", "synth.families=turn,jaywalker", "synth.frequencies=1,3",
                                "synth.extra_seconds=5"])
    assert got.synth == C.SynthConfig(families=("turn", "jaywalker"), frequencies=(1.0, 3.0), supersample=3,
                                      extra_seconds=5.0)
    assert got.validate() is got and cfg.synth.supersample == 2  # the original is untouched
    assert from_dict(Config, json.loads(json.dumps(to_dict(got)))) == got  # and survives the round trip
    d = to_dict(cfg)
    del d["synth"]  # a config saved before the section existed loads with the defaults
    assert from_dict(Config, d) == cfg
    for override in ("synth.supersample=0", "synth.frequencies=1", "synth.extra_seconds=-1"):
        with pytest.raises(ConfigError, match=re.escape(f"`{override.split('=')[0]}`")):
            get_config("ar1_tiny", [override])
    with pytest.raises(ConfigError, match="synth.supersampel.*did you mean supersample"):
        apply_overrides(cfg, ["synth.supersampel=3"])
    from ar1_jax import config_data

    assert C.SceneConfig is config_data.SceneConfig and C.DataConfig is config_data.DataConfig
