"""Head names, kinds, and parameter counts (no model weights are allocated)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shb.ablation import KINDS, format_head, parse_heads


def test_parse_and_format_round_trip():
    assert parse_heads("2-26,3-8") == [(2, 26), (3, 8)]
    assert parse_heads(" 0-0 , 31-31 ") == [(0, 0), (31, 31)]
    assert parse_heads("") == []
    assert parse_heads(["1-2", (3, 4)]) == [(1, 2), (3, 4)]
    for h in [(0, 0), (2, 26), (31, 7)]:
        assert parse_heads(format_head(h)) == [h]
    assert format_head((2, 26)) == "2-26"


@pytest.mark.parametrize("bad", ["2", "2-", "a-b", "2-26-1", "-1-3", "2:26"])
def test_parse_rejects_bad_heads_with_the_expected_form(bad):
    with pytest.raises(ValueError, match="layer-head"):
        parse_heads(bad)


def test_kinds_listed():
    assert set(KINDS) == {"undifferentiated", "scaling", "mean", "zero"}


def test_name_modules_import_without_torch():
    code = (
        "import sys; import shb.ablation, shb.models.layout as L; "
        "assert 'torch' not in sys.modules, 'torch imported'; assert 'llama' in L.SUPPORTED"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_llama2_7b_one_head_count_and_share():
    """One head of Llama-2-7B: its 128 query rows of width 4096 (no q bias) = 524,288 weights, 0.0078%."""
    import transformers as T

    from shb.ablation import parameters_modified
    from shb.models.layout import detect

    cfg = T.LlamaConfig(hidden_size=4096, num_attention_heads=32, num_hidden_layers=32,
                        intermediate_size=11008, vocab_size=32000)
    layout = detect(cfg)  # counts parameters on the meta device
    # Llama-2-7B's published parameter count
    assert layout.n_params == 6_738_415_616
    count, share = parameters_modified(layout, [(2, 26)], "undifferentiated")
    assert count == 4096 * 128 == 524_288
    assert f"{100 * share:.4f}%" == "0.0078%"
    # the output side edits the 4096 x 128 columns of o_proj (no o_proj bias is touched)
    assert parameters_modified(layout, "2-26,3-8", "scaling")[0] == 2 * 4096 * 128
    with pytest.raises(ValueError, match="32 layers x 32 heads"):
        parameters_modified(layout, [(32, 0)], "zero")


def test_registry_lists_the_supported_architectures():
    from shb.models.layout import SUPPORTED
    from shb.registry import ARCHITECTURES

    assert set(ARCHITECTURES) == set(SUPPORTED)
