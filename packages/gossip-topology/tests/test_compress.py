"""The numpy compressors against hand-computed values, their definitions and their byte counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gossip_topology import (
    COMPRESSOR_NAMES,
    Cast,
    Compressor,
    Int8,
    LowRank,
    Payload,
    TopK,
    parse_compressor,
)

RNG = np.random.default_rng(20240607)


def _roundtrip(c: Compressor, v: np.ndarray, **kw: object) -> np.ndarray:
    return c.decode(c.encode(v, **kw))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- casts
def test_bf16_rounds_to_nearest_even_on_hand_computed_values() -> None:
    # bf16 keeps 8 significant bits: the spacing above 1 is 2**-7.
    v = np.array([[1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 3 * 2**-8), 0.0, 2.0**-130]])
    expected = [1.0, 1 + 2**-6, 1 + 2**-7, -(1 + 2**-6), 0.0, 2.0**-130]
    np.testing.assert_array_equal(_roundtrip(Cast("bf16"), v), [expected])


def test_bf16_matches_an_independent_significand_rounding() -> None:
    f32 = (RNG.normal(size=(4, 500)) * 10.0 ** RNG.integers(-20, 20, size=(4, 500))).astype(
        np.float32
    )
    m, e = np.frexp(f32.astype(np.float64))  # m in [0.5, 1): 8 bits are m * 2**8 rounded
    expected = np.ldexp(np.rint(m * 2**8) / 2**8, e)
    np.testing.assert_array_equal(_roundtrip(Cast("bf16"), f32.astype(np.float64)), expected)


def test_fp16_is_numpy_float16() -> None:
    v = RNG.normal(size=(3, 100)) * 100
    np.testing.assert_array_equal(
        _roundtrip(Cast("fp16"), v), v.astype(np.float16).astype(np.float64)
    )


# ----------------------------------------------------------------------------- int8
def _scales(v: np.ndarray, block: int) -> np.ndarray:
    """s_b for every element, straight from the definition."""
    E, d = v.shape
    out = np.empty_like(v)
    for r in range(E):
        for b0 in range(0, d, block):
            amax = np.abs(v[r, b0 : b0 + block]).max()
            out[r, b0 : b0 + block] = float(np.float32(amax / 127))
    return out


def test_int8_error_is_at_most_half_a_scale_and_the_last_block_is_short() -> None:
    v = RNG.normal(size=(5, 23)) * np.array([[1e-3], [1.0], [1e3], [7.0], [1e-30]])
    c = Int8(block=8)
    payload = c.encode(v)
    codes, scales = payload.arrays
    assert codes.dtype == np.int8 and codes.shape == (5, 23)
    assert scales.dtype == np.float32 and scales.shape == (5, 3)
    s = _scales(v, 8)
    assert (np.abs(c.decode(payload) - v) <= s / 2).all()
    assert np.abs(codes).max() == 127


def test_int8_is_exact_on_multiples_of_the_scale_and_zero_blocks_stay_zero() -> None:
    scale = np.float32(0.037)
    codes = RNG.integers(-127, 128, size=(2, 12)).astype(np.float64)
    codes[:, ::4] = 127  # each block: max|v| / 127 rounds back to the same float32 scale
    v = codes * np.float64(scale)
    v[1, 4:8] = 0.0  # one all-zero block
    out = _roundtrip(Int8(block=4), v)
    np.testing.assert_array_equal(out, v)
    assert Int8(block=4).encode(v).arrays[1][1, 1] == 0


def test_stochastic_int8_is_unbiased_and_rounds_to_a_neighbour() -> None:
    v = RNG.normal(size=(1, 64))
    rows = np.repeat(v, 4000, axis=0)
    c = Int8(block=16, stochastic=True, seed=3)
    out = c.decode(c.encode(rows))
    s = _scales(v, 16)[0]
    lo = np.floor(v[0] / s) * s
    assert np.all(np.isclose(out, lo) | np.isclose(out, lo + s))
    stderr = out.std(axis=0) / math.sqrt(len(rows))
    # The block maxima cannot round up (clipped at 127): their float32 scale rounding remains.
    assert (np.abs(out.mean(axis=0) - v[0]) < 5 * stderr + 1e-6 * np.abs(v[0])).all()
    again = Int8(block=16, stochastic=True, seed=3)
    np.testing.assert_array_equal(again.decode(again.encode(rows)), out)


# ----------------------------------------------------------------------------- topk
@pytest.mark.parametrize(
    ("fraction", "d", "k"),
    [(0.01, 256, 3), (0.01, 50, 1), (1.0, 7, 7), (0.07, 100, 8), (0.5, 1, 1)],
)
def test_topk_k_follows_the_formula(fraction: float, d: int, k: int) -> None:
    assert TopK(fraction).k(d) == k == max(1, min(d, math.ceil(fraction * d)))  # 0.07 * 100 > 7


def test_topk_keeps_exactly_the_largest_entries() -> None:
    v = RNG.normal(size=(6, 97))
    c = TopK(0.1)
    payload = c.encode(v)
    values, idx = payload.arrays
    assert idx.dtype == np.int32 and idx.shape == values.shape == (6, 10)
    out = c.decode(payload)
    for r in range(6):
        largest = set(np.argsort(-np.abs(v[r]))[:10])
        assert set(idx[r]) == largest == set(np.flatnonzero(out[r]))
        np.testing.assert_array_equal(out[r, idx[r]], v[r, idx[r]])


# ----------------------------------------------------------------------------- lowrank
def test_lowrank_initial_warm_start_is_the_integer_hash() -> None:
    (q,) = LowRank(2).init_state(3, 30, [(5, 6)])
    assert q.shape == (3, 6, 2)
    a, b = 4, 1
    assert q[2, a, b] == ((a * 7919 + b * 104729 + 1) % 65536) / 65536 - 0.5


def test_lowrank_is_exact_on_rank_r_matrices_and_keeps_raw_segments() -> None:
    layout = [(12, 2, 5), (9,), (2, 2), ()]  # a 12 x 10 matrix, a vector, a 2x2 (raw), a scalar
    M = RNG.normal(size=(4, 12, 2)) @ RNG.normal(size=(4, 2, 10))  # rank 2
    raw = RNG.normal(size=(4, 9 + 4 + 1))
    v = np.concatenate([M.reshape(4, 120), raw], axis=1)
    c = LowRank(2)
    state = c.init_state(4, v.shape[1], layout)
    for _ in range(2):  # from the fixed start, then from the warm start
        out = c.decode(c.encode(v, state, layout=layout))
        np.testing.assert_allclose(out[:, :120], v[:, :120], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(out[:, 120:], raw)
    assert [a.shape for a in c.encode(v, state, layout=layout).arrays] == [
        (4, 12, 2),
        (4, 10, 2),
        (4, 9),
        (4, 4),
        (4, 1),
    ]


def test_lowrank_power_steps_converge_to_the_best_rank_r_approximation() -> None:
    U, _ = np.linalg.qr(RNG.normal(size=(20, 20)))
    V, _ = np.linalg.qr(RNG.normal(size=(15, 15)))
    M = U[:, :15] @ np.diag(2.0 ** -np.arange(15.0)) @ V.T
    c = LowRank(2)
    state = c.init_state(1, 300, [(20, 15)])
    for _ in range(60):
        out = c.decode(c.encode(M.reshape(1, -1), state, layout=[(20, 15)]))
    best = U[:, :2] @ np.diag([1.0, 0.5]) @ V[:, :2].T
    np.testing.assert_allclose(out.reshape(20, 15), best, atol=1e-12)


def test_lowrank_without_a_layout_sends_everything_raw() -> None:
    v = RNG.normal(size=(2, 10))
    np.testing.assert_array_equal(_roundtrip(LowRank(1), v), v)
    assert LowRank(1).payload_bytes(10, itemsize=4) == 40


def test_lowrank_rejects_a_state_of_the_wrong_shape() -> None:
    c = LowRank(1)
    state = c.init_state(3, 20, [(4, 5)])
    with pytest.raises(ValueError, match="state must hold arrays of shapes"):
        c.encode(RNG.normal(size=(2, 20)), state, layout=[(4, 5)])


# ----------------------------------------------------------------------------- bytes
@pytest.mark.parametrize(
    ("compressor", "d", "itemsize", "layout", "expected"),
    [
        (Cast("bf16"), 1000, 4, None, 2000),
        (Cast("fp16"), 3, 8, None, 6),
        (Int8(), 2049, 4, None, 2049 + 4 * 3),
        (Int8(block=4), 10, 4, None, 10 + 4 * 3),
        (TopK(0.01), 1000, 4, None, 10 * 8),
        (TopK(0.07), 100, 8, None, 8 * 12),
        (LowRank(2), 196, 4, [(16, 8), (8, 8), (4,)], 4 * ((16 + 8) * 2 + (8 + 8) * 2 + 4)),
        (LowRank(4), 20, 2, [(2, 2), (4, 2, 2)], 2 * (4 + 16)),  # neither is worth compressing
    ],
)
def test_payload_bytes_follow_the_spec_and_match_the_payload(
    compressor: Compressor, d: int, itemsize: int, layout: list[tuple[int, ...]], expected: int
) -> None:
    assert compressor.payload_bytes(d, itemsize, layout) == expected
    payload = compressor.encode(RNG.normal(size=(3, d)), layout=layout)
    # The simulator's buffers are float64: with itemsize 8 the arrays hold exactly that.
    assert payload.nbytes_per_message == compressor.payload_bytes(d, 8, layout)


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bf16", Cast("bf16")),
        ("fp16", Cast("fp16")),
        ("int8", Int8()),
        ("int8:stochastic", Int8(stochastic=True)),
        ("topk:0.01", TopK(0.01)),
        ("topk:1", TopK(1.0)),
        ("lowrank:2", LowRank(2)),
    ],
)
def test_parse_compressor_builds_each_kind_and_round_trips_its_name(
    spec: str, expected: Compressor
) -> None:
    built = parse_compressor(spec)
    assert repr(built) == repr(expected)
    assert built is not None and repr(parse_compressor(built.name)) == repr(built)
    assert built.name.partition(":")[0] in COMPRESSOR_NAMES


def test_parse_compressor_passes_objects_and_none_through() -> None:
    c = TopK(0.5)
    assert parse_compressor(c) is c
    assert parse_compressor(None) is None


@pytest.mark.parametrize(
    "spec",
    [
        *("", "gzip", "fp32", "int8:x", "int8:", "bf16:1"),
        *("topk", "topk:", "topk:0", "topk:1.5", "topk:nan"),
        *("lowrank", "lowrank:0", "lowrank:-1", "lowrank:1.5", "lowrank:two"),
    ],
)
def test_parse_compressor_lists_the_accepted_forms_on_anything_else(spec: str) -> None:
    with pytest.raises(ValueError, match=r"'bf16', 'fp16', 'int8', 'int8:stochastic', 'topk:F'"):
        parse_compressor(spec)


def test_defaults_of_the_consensus_step() -> None:
    assert Cast("bf16").default_consensus_step == Int8().default_consensus_step == 1.0
    assert TopK(0.01).default_consensus_step == 0.02
    assert TopK(0.9).default_consensus_step == 1.0
    assert 0 < LowRank(1).default_consensus_step <= 1


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: parse_compressor(3), TypeError, "compression must be a string"),  # type: ignore[arg-type]
        (lambda: Cast("fp32"), ValueError, "dtype must be 'bf16' or 'fp16'"),
        (lambda: Int8(block=0), ValueError, "block must be >= 1"),
        (lambda: Int8(stochastic=1), TypeError, "stochastic must be a bool"),  # type: ignore[arg-type]
        (lambda: TopK(0.0), ValueError, r"fraction must be in \(0, 1\]"),
        (lambda: TopK(True), TypeError, "fraction must be a real number"),
        (lambda: LowRank(0), ValueError, "rank must be >= 1"),
        (lambda: LowRank(1.5), TypeError, "rank must be an int"),  # type: ignore[arg-type]
        (lambda: Int8().encode(np.zeros(4)), ValueError, r"v must have shape \(E, d\)"),
        (lambda: LowRank(1).encode(np.zeros((2, 6)), layout=[(2, 2)]), ValueError, "layout must"),
        (lambda: Int8().decode((np.zeros(2),)), TypeError, "payload must be a Payload"),  # type: ignore[arg-type]
        (lambda: Int8().payload_bytes(-1), ValueError, "d must be >= 0"),
        (lambda: Int8().payload_bytes(4, itemsize=0), ValueError, "itemsize must be >= 1"),
    ],
)
def test_bad_arguments_raise_named_errors(build: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build()  # type: ignore[operator]


def test_a_payload_knows_its_rows() -> None:
    p = Payload(arrays=(np.zeros((3, 4), np.int8), np.zeros((3, 1), np.float32)), d=4)
    assert (p.rows, p.nbytes_per_message) == (3, 8)
