import pytest

from odconv import ATTENTIONS, ConvSpec, make_conv, parse_conv_spec
from odconv.layers import CondConv2d, DyConv2d, ODConv2d


@pytest.mark.parametrize("text", [
    "static", "odconv1x", "odconv4x", "odconv1x-channel", "odconv1x-channel+spatial", "odconv1x-filter+spatial",
    "odconv4x-kernel", "odconv4x-filter+kernel", "odconv2x-channel+filter+kernel", "condconv8x", "dyconv4x",
    "odconv8x-spatial+kernel",
])
def test_round_trip(text):
    assert str(parse_conv_spec(text)) == text
    assert parse_conv_spec(str(parse_conv_spec(text))) == parse_conv_spec(text)


def test_canonical_order_and_full_sets():
    assert str(parse_conv_spec("odconv1x-spatial+channel")) == "odconv1x-channel+spatial"
    # Naming every attention is the same variant as the short form.
    assert str(parse_conv_spec("odconv4x-kernel+spatial+filter+channel")) == "odconv4x"
    assert str(parse_conv_spec("odconv1x-channel+filter+spatial")) == "odconv1x"
    assert parse_conv_spec("odconv4x").attentions == frozenset(ATTENTIONS)
    assert parse_conv_spec("odconv1x").attentions == frozenset({"channel", "filter", "spatial"})
    assert parse_conv_spec("condconv8x") == ConvSpec("condconv", 8)


@pytest.mark.parametrize("bad, fragment", [
    ("odconv4x-channel", "needs 'kernel' attention"),
    ("odconv1x-kernel", "needs kernel_num >= 2"),
    ("odconv1x-colour", "unknown attention"),
    ("odconv1x-channel+channel", "named twice"),
    ("condconv8x-channel", "takes no attention"),
    ("odconv0x", "must be >= 1"),
    ("odconv", "bad conv spec"),
    ("resnet", "bad conv spec"),
    ("", "bad conv spec"),
])
def test_bad_specs_name_the_value_and_the_grammar(bad, fragment):
    with pytest.raises(ValueError) as err:
        parse_conv_spec(bad)
    msg = str(err.value)
    assert fragment in msg
    assert repr(bad) in msg
    assert "static" in msg and "odconv4x" in msg  # lists what is valid


def test_factory_builds_each_kind():
    conv = make_conv("static", 8, 16, 3)
    assert type(conv).__name__ == "Conv2d" and conv.padding == (1, 1) and conv.bias is None
    od = make_conv("odconv1x-channel+spatial", 8, 16, 3, stride=2, reduction=0.25, min_channel=4)
    assert isinstance(od, ODConv2d) and od.active_attentions == {"channel", "spatial"} and od.stride == 2
    assert od.attention.hidden == 4
    cc = make_conv("condconv8x", 8, 16, 3, bias=True)
    assert isinstance(cc, CondConv2d) and cc.weight.shape == (8, 16, 8, 3, 3) and cc.bias.shape == (8, 16)
    dy = make_conv("dyconv4x", 8, 16, 1)
    assert isinstance(dy, DyConv2d) and dy.weight.shape == (4, 16, 8, 1, 1) and dy.padding == 0
    assert make_conv("static", 8, 8, 3, dilation=2).padding == (2, 2)


def test_factory_rejects_options_of_other_kinds():
    with pytest.raises(ValueError, match=r"min_channel.*condconv"):
        make_conv("condconv8x", 8, 8, 3, min_channel=4)
    with pytest.raises(ValueError, match="reduction"):
        make_conv("static", 8, 8, 3, reduction=0.5)
    # None means "not set" and is accepted everywhere (configs pass options through).
    make_conv("static", 8, 8, 3, reduction=None)
