"""SCALE-Sim topology files: the layers, their GEMM shapes and MACs, and every error."""

import math
from pathlib import Path

import pytest

from compiler.topology import Layer, TopologyError, parse_topology, read_topology

# SCALE-Sim's files as the project keeps them; absent from a clean clone, hence INLINE below.
ANCHORS = Path(__file__).resolve().parents[2] / "shared/anchors/scalesim/topologies"

RESNET18 = """\
Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,
Conv1,224,224,7,7,3,64,2,
Conv2_1a,56,56,3,3,64,64,1,
Conv2_1b,56,56,3,3,64,64,1,
Conv2_2a,56,56,3,3,64,64,1,
Conv2_2b,56,56,3,3,64,64,1,
Conv3_1a,56,56,3,3,64,128,2,
Conv3_1b,28,28,3,3,128,128,1,
Conv3_s,56,56,1,1,64,128,2,
Conv3_2a,28,28,3,3,128,128,1,
Conv3_2b,28,28,3,3,128,128,1,
Conv4_1a,28,28,3,3,128,256,2,
Conv4_1b,14,14,3,3,256,256,1,
Conv4_s,28,28,1,1,128,256,2,
Conv4_2a,14,14,3,3,256,256,1,
Conv4_2b,14,14,3,3,256,256,1,
Conv5_1a,14,14,3,3,256,512,2,
Conv5_1b,7,7,3,3,512,512,1,
Conv5_s,14,14,1,1,256,512,2,
Conv5_2a,7,7,3,3,512,512,1,
Conv5_2b,7,7,3,3,512,512,1,
FC,1,1,1,1,512,1000,1,"""

GEMM256 = "Layer Name, M, N, K,\nGEMM_256, 256, 256, 256,\n"

CONV_HEADER = (
    "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, "
    "Strides,\n"
)

# The head of Resnet50.csv: extra annotated columns (Eh, Ew, e2: the output size) and a row of
# empty fields.
RESNET50_HEAD = (
    CONV_HEADER.rstrip(",\n")
    + ",,,Eh,Ew,e2\n"
    + ",,,,,,,,,,,,\n"
    + "Conv1,224,224,7,7,3,64,2,,,110,110,12100\n"
    + "CB2a_1,56,56,1,1,64,64,1,,,,,\n"
)

# The head of mobilenet.csv: spaces around the fields, depthwise layers as C channels, 1 filter.
MOBILENET_HEAD = CONV_HEADER + (
    "Conv1,  224, 224,    3, 3,      3,      32,     2,\n"
    "Conv2,  112, 112,    3, 3,      32,      1,     1,\n"
)

# name: (text, layers, MACs) for a clean clone
INLINE = {
    "Resnet18.csv": (RESNET18, 21, 1_471_181_568),
    "gemm256.csv": (GEMM256, 1, 16_777_216),
    "resnet18_conv2x_56.csv": (CONV_HEADER + "Conv2_1a,56,56,3,3,64,64,1,\n", 1, 107_495_424),
    "resnet18_conv2x_58padded.csv": (
        CONV_HEADER + "Conv2_1a_padded,58,58,3,3,64,64,1,\n",
        1,
        115_605_504,
    ),
    "Resnet50.csv": (RESNET50_HEAD, 2, 113_836_800 + 12_845_056),
    "mobilenet.csv": (MOBILENET_HEAD, 2, 10_838_016 + 3_484_800),
}

# name: (layers, MACs) of the whole file, as SCALE-Sim 3.0.0's get_all_mac_ops counts them.
# SCALE-Sim cannot read Resnet50.csv (its annotated columns); its total is that of SCALE-Sim's
# mlperf/Resnet50.csv, the same network without them.
WHOLE = {
    "Resnet18.csv": (21, 1_471_181_568),
    "Resnet50.csv": (54, 3_479_536_384),
    "gemm256.csv": (1, 16_777_216),
    "mobilenet.csv": (27, 565_519_488),
    "resnet18_conv2x_56.csv": (1, 107_495_424),
    "resnet18_conv2x_58padded.csv": (1, 115_605_504),
}


def total_macs(layers):
    return sum(layer.macs for layer in layers)


def gemm(layer):
    return layer.m, layer.k, layer.n, layer.macs


# ---- the files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WHOLE))
def test_scalesim_topology_files(name):
    path = ANCHORS / name
    if path.is_file():
        layers, expected = read_topology(path), WHOLE[name]
    else:
        text, *expected = INLINE[name]
        layers = parse_topology(text, source=name)
    assert (len(layers), total_macs(layers)) == tuple(expected)


def test_every_anchor_file_is_checked():
    assert {path.name for path in ANCHORS.glob("*.csv")} <= set(WHOLE)


@pytest.mark.parametrize("name", sorted(INLINE))
def test_inline_copies(name):
    text, count, macs = INLINE[name]
    layers = parse_topology(text, source=name)
    assert (len(layers), total_macs(layers)) == (count, macs)


# ---- GEMM shapes, by hand ---------------------------------------------------------------


def test_resnet18_layers_by_hand():
    layers = {layer.name: layer for layer in parse_topology(RESNET18)}
    conv1 = layers["Conv1"]
    assert (conv1.kind, conv1.stride) == ("conv", 2)
    # 7x7 stride 2 on 224: ceil((224 - 7 + 2) / 2) = ceil(109.5) = 110 outputs a side
    assert (conv1.ofmap_h, conv1.ofmap_w) == (110, 110)
    assert gemm(conv1) == (110 * 110, 7 * 7 * 3, 64, 12_100 * 147 * 64)
    assert gemm(conv1)[3] == 113_836_800
    # 3x3 stride 1 on 56: 54 a side, no padding
    assert gemm(layers["Conv2_1a"]) == (54 * 54, 3 * 3 * 64, 64, 2916 * 576 * 64)
    # 1x1 stride 2 on 56: ceil(57 / 2) = 29 a side, where a floor would give 28
    assert gemm(layers["Conv3_s"]) == (29 * 29, 64, 128, 841 * 64 * 128)
    assert gemm(layers["FC"]) == (1, 512, 1000, 512_000)


def test_resnet18_total_matches_scalesim_ideal_cycles():
    layers = parse_topology(RESNET18)
    assert total_macs(layers) == 1_471_181_568
    # README: 1,436,701 ideal cycles on 32x32 PEs, 89,794 on 128x128: MACs / PEs rounded up
    assert math.ceil(total_macs(layers) / (32 * 32)) == 1_436_701
    assert math.ceil(total_macs(layers) / (128 * 128)) == 89_794


def test_gemm256_by_hand():
    (layer,) = parse_topology(GEMM256)
    assert layer.kind == "gemm"
    assert gemm(layer) == (256, 256, 256, 2**24)
    assert layer.macs // (32 * 32) == 16_384  # the README's ideal cycles


def test_gemm_columns_are_m_n_k():
    (layer,) = parse_topology("Layer, M, N, K,\nG, 3, 5, 16,\n")
    assert (layer.m, layer.n, layer.k, layer.macs) == (3, 5, 16, 240)
    # SCALE-Sim's conv layer for it: an M x K input, a 1 x K filter, N filters
    assert layer == Layer("G", "gemm", 3, 16, 1, 16, 1, 5, 1)
    assert layer == Layer.from_gemm("G", m=3, n=5, k=16)


@pytest.mark.parametrize(
    "size, filt, stride, out",
    [(224, 7, 2, 110), (56, 1, 2, 29), (5, 3, 1, 3), (7, 3, 2, 3), (8, 3, 2, 4), (3, 3, 4, 1)],
)
def test_output_size_is_scalesims_ceiling(size, filt, stride, out):
    layer = Layer("c", "conv", size, size + 1, filt, filt, 1, 1, stride)
    assert layer.ofmap_h == out == math.ceil((size - filt + stride) / stride)


def test_resnet50_extra_columns():
    layers = parse_topology(RESNET50_HEAD)
    assert [layer.name for layer in layers] == ["Conv1", "CB2a_1"]
    # the file's own Eh, Ew, e2 annotation of Conv1 agrees with the output size
    assert (layers[0].ofmap_h, layers[0].ofmap_w, layers[0].m) == (110, 110, 12100)


# ---- how rows are read -----------------------------------------------------------------


def test_spaces_blank_lines_crlf_and_bom():
    text = "\ufeff" + CONV_HEADER + "\n  \r\n Conv1 , 224 ,224,3, 3, 3,32, 2 ,\r\n\n"
    (layer,) = parse_topology(text)
    assert layer == Layer("Conv1", "conv", 224, 224, 3, 3, 3, 32, 2)


def test_text_after_the_last_comma_is_not_read():
    rows = "a,8,8,3,3,1,1,1\nb,8,8,3,3,1,1,1,#dw\nc,8,8,3,3,1,1,1,1:4\nd,8,8,3,3,1,1,1,1:4,\n"
    layers = parse_topology(CONV_HEADER + rows)
    assert [(layer.name, layer.sparsity) for layer in layers] == [
        ("a", (1, 1)),
        ("b", (1, 1)),
        ("c", (1, 1)),
        ("d", (1, 4)),
    ]


def test_sparsity_is_kept_not_applied():
    (layer,) = parse_topology("Layer Name, M, N, K, Sparsity,\nG, 3, 5, 16, 2 : 4,\n")
    assert (layer.sparsity, layer.macs) == ((2, 4), 240)


def test_depthwise_dp_layers_split_by_channel():
    layers = parse_topology(CONV_HEADER + "conv_DP,7,7,3,3,4,2,1,\nDp,7,7,3,3,4,2,1,\n")
    assert [layer.name for layer in layers] == [
        "conv_DPChannel_0",
        "conv_DPChannel_1",
        "conv_DPChannel_2",
        "conv_DPChannel_3",
        "Dp",
    ]
    assert {(layer.channels, layer.k, layer.n) for layer in layers[:4]} == {(1, 9, 2)}


@pytest.mark.parametrize(
    "header, kind",
    [
        ("Layer,M,N,K,", "gemm"),
        ("L,M,N,K,", "gemm"),
        (
            "Layer name,Ifmap height,ifmap width,filter height,filter width,channels,"
            "num filters,strides,",
            "conv",
        ),
        (
            "Layer, IFMAP Width, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, "
            "Strides",
            "conv",
        ),
    ],
)
def test_headers_detected(header, kind):
    row = "x,4,4,4," if kind == "gemm" else "x,4,4,1,1,1,1,1,"
    assert parse_topology(f"{header}\n{row}\n")[0].kind == kind


def test_kind_forced_with_any_header():
    layers = parse_topology("name,rows,cols,depth\nG,2,3,4,\n", kind="gemm")
    assert gemm(layers[0]) == (2, 4, 3, 24)


def test_read_topology_file(tmp_path):
    path = tmp_path / "gemm.csv"
    path.write_text(GEMM256)
    assert read_topology(path) == read_topology(str(path), kind="gemm") == parse_topology(GEMM256)


# ---- errors ------------------------------------------------------------------------------


def conv_rows(*rows):
    return CONV_HEADER + "Conv1,224,224,7,7,3,64,2,\n" + "".join(f"{row}\n" for row in rows)


def test_error_field_count():
    with pytest.raises(TopologyError, match=r"^layers\.csv:3: expected 8 fields .*, found 7$"):
        parse_topology(conv_rows("Conv2,56,56,3,3,64,64"), source="layers.csv")


def test_error_field_count_past_the_header():
    with pytest.raises(TopologyError, match=r"^layers\.csv:3: expected 8 fields .*, found 10$"):
        parse_topology(conv_rows("Conv2,56,56,3,3,64,64,1,1:1,7,"), source="layers.csv")


def test_error_not_an_integer():
    message = r"^layers\.csv:3: column 5 \(Filter Width\): 'x' is not a positive integer$"
    with pytest.raises(TopologyError, match=message):
        parse_topology(conv_rows("Conv2,56,56,3,x,64,64,1,"), source="layers.csv")


def test_error_not_an_integer_gemm():
    message = r"^g\.csv:2: column 3 \(N\): '2\.5' is not a positive integer$"
    with pytest.raises(TopologyError, match=message):
        parse_topology("Layer, M, N, K,\nG, 3, 2.5, 16,\n", source="g.csv")


@pytest.mark.parametrize("value", ["0", "-2"])
def test_error_size_not_positive(value):
    message = rf"^layers\.csv:3: column 6 \(Channels\): '{value}' is not a positive integer$"
    with pytest.raises(TopologyError, match=message):
        parse_topology(conv_rows(f"Conv2,56,56,3,3,{value},64,1,"), source="layers.csv")


def test_error_stride_not_positive():
    message = r"^layers\.csv:3: column 8 \(Strides\): '0' is not a positive integer$"
    with pytest.raises(TopologyError, match=message):
        parse_topology(conv_rows("Conv2,56,56,3,3,64,64,0,"), source="layers.csv")


def test_error_filter_larger_than_input():
    message = r"^layers\.csv:3: column 4 \(Filter Height\): 9 is larger than the IFMAP Height 7$"
    with pytest.raises(TopologyError, match=message):
        parse_topology(conv_rows("Conv2,7,9,9,9,64,64,1,"), source="layers.csv")


def test_error_filter_wider_than_input():
    message = r"^layers\.csv:3: column 5 \(Filter Width\): 5 is larger than the IFMAP Width 4$"
    with pytest.raises(TopologyError, match=message):
        parse_topology(conv_rows("Conv2,9,4,3,5,64,64,1,"), source="layers.csv")


def test_error_sparsity():
    message = r"^layers\.csv:3: column 9 \(Sparsity\): '5:4' is not a sparsity ratio N:M"
    with pytest.raises(TopologyError, match=message):
        parse_topology(conv_rows("Conv2,56,56,3,3,64,64,1,5:4,"), source="layers.csv")


def test_error_line_numbers_count_blank_lines():
    with pytest.raises(TopologyError, match=r"^layers\.csv:5: column 2 "):
        parse_topology(conv_rows("", "", "Conv2,big,56,3,3,64,64,1,"), source="layers.csv")


def test_error_unknown_header():
    message = r"^layers\.csv:1: unknown header 'Layer, Height, Width'; .* kind='conv'"
    with pytest.raises(TopologyError, match=message):
        parse_topology("Layer, Height, Width,\nConv1,2,2,\n", source="layers.csv")


def test_error_header_of_the_other_kind():
    message = r"^layers\.csv:1: the header is a gemm header, but kind='conv'$"
    with pytest.raises(TopologyError, match=message):
        parse_topology(GEMM256, kind="conv", source="layers.csv")


def test_error_layer_in_place_of_the_header():
    message = r"^layers\.csv:2: expected a header row, found a layer$"
    with pytest.raises(TopologyError, match=message):
        parse_topology("\nConv1,224,224,7,7,3,64,2,\n", kind="conv", source="layers.csv")


@pytest.mark.parametrize("text", ["", " \n\n\t\n"])
def test_error_empty_file(text):
    with pytest.raises(TopologyError, match=r"^layers\.csv: empty file; expected a header row"):
        parse_topology(text, source="layers.csv")


def test_error_no_layers():
    message = r"^layers\.csv: no layers after the header on line 1$"
    with pytest.raises(TopologyError, match=message):
        parse_topology(CONV_HEADER + "\n,,,,,,,,\n", source="layers.csv")


def test_error_not_utf8(tmp_path):
    path = tmp_path / "layers.csv"
    path.write_bytes(CONV_HEADER.encode() + b"Conv\xff1,1,1,1,1,1,1,1,\n")
    with pytest.raises(TopologyError, match=r"layers\.csv: not UTF-8 text"):
        read_topology(path)


def test_error_is_a_value_error():
    assert issubclass(TopologyError, ValueError)


def test_error_unknown_kind():
    with pytest.raises(ValueError, match=r"^kind must be 'auto', 'conv' or 'gemm', not 'fc'$"):
        parse_topology(GEMM256, kind="fc")


@pytest.mark.parametrize(
    "args, message",
    [
        (("c", "conv", 8, 8, 0, 3, 1, 1), r"^filter_h must be a positive integer, not 0$"),
        (("c", "conv", 8, 8, 3, 3, 1, 1, 1.5), r"^stride must be a positive integer, not 1\.5$"),
        (("c", "conv", 2, 8, 3, 3, 1, 1), r"^filter 3x3 is larger than the input 2x8$"),
        (("c", "fc", 8, 8, 3, 3, 1, 1), r"^kind must be 'conv' or 'gemm', not 'fc'$"),
        (("c", "conv", 8, 8, 3, 3, 1, 1, 1, (3, 2)), r"^sparsity must be N:M .*, not 3:2$"),
    ],
)
def test_layer_checks_its_fields(args, message):
    with pytest.raises(ValueError, match=message):
        Layer(*args)
