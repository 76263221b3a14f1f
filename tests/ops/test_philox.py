"""contract §3's random-number stream: Philox4x32-10 against Random123's published answers, and the uniform map."""
import torch

from electra_fast.ops import reference

# Random123's known-answer vectors for philox4x32_10: (counter, key) -> output words.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox_known_answers():
    for counter, (k0, k1), expected in KNOWN_ANSWERS:
        seed = torch.tensor(k0 | (k1 << 32) if k1 < 2**31 else k0 | ((k1 - 2**32) << 32))
        words = reference.philox4x32_10(seed, *[torch.tensor(c) for c in counter])
        assert tuple(int(w) for w in words) == expected


def test_uniform_map_matches_triton_definition():
    words = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789, 3000000000])
    u = reference.uniform_from_words(words)
    as_int32 = [w if w < 2**31 else w - 2**32 for w in words.tolist()]
    folded = [x if x >= 0 else -x - 1 for x in as_int32]
    expected = torch.tensor(folded, dtype=torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)
    assert torch.equal(u, expected)
    assert (u >= 0).all() and (u < 1).all()


def test_gumbel_noise_is_indexed_by_row_stream_and_id():
    seed = torch.tensor(12345)
    rows = torch.arange(3)[:, None]
    j = torch.arange(10)[None, :]
    g = reference.gumbel_noise(seed, rows, 0, j)
    assert g.shape == (3, 10) and g.dtype == torch.float32
    # One id alone gives the same value as inside a block: noise never depends on tiling.
    assert torch.equal(reference.gumbel_noise(seed, torch.tensor([[2]]), 0, torch.tensor([[7]]))[0, 0], g[2, 7])
    assert not torch.equal(g, reference.gumbel_noise(seed, rows, 1, j))
    assert not torch.equal(g, reference.gumbel_noise(torch.tensor(12346), rows, 0, j))
