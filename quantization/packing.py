"""Real packed storage of b-bit codes in uint8 (so a 4-bit base takes half a byte per weight in memory).

2/4/8 bits: 8/b codes per byte. 3 bits: 8 codes in 3 bytes (a 24-bit word). Unpacking makes a transient
uint8 tensor of the codes of one layer at a time, as a dequantizing kernel would.
"""

from __future__ import annotations

import torch


def packed_nbytes(numel: int, bits: int) -> int:
    return (numel + 7) // 8 * bits


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat uint8 codes (< 2^bits) -> packed uint8 of ``packed_nbytes(numel, bits)`` bytes."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() and int(flat.max()) >= 2**bits:
        raise ValueError(f"codes do not fit in {bits} bits")
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]) if pad else flat
    if bits in (2, 4, 8):
        per = 8 // bits
        v = flat.reshape(-1, per)
        out = torch.zeros(v.shape[0], dtype=torch.uint8, device=flat.device)
        for i in range(per):
            out |= v[:, i] << (bits * i)
        return out
    if bits == 3:
        v = flat.reshape(-1, 8).to(torch.int32)
        word = torch.zeros(v.shape[0], dtype=torch.int32, device=flat.device)
        for i in range(8):
            word |= v[:, i] << (3 * i)
        return torch.stack([(word >> (8 * k)) & 0xFF for k in range(3)], dim=1).to(torch.uint8).reshape(-1)
    raise ValueError(f"cannot pack {bits}-bit codes; supported 2, 3, 4, 8")


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``numel`` codes as uint8."""
    if bits in (2, 4, 8):
        mask = 2**bits - 1
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        codes = (packed.reshape(-1, 1) >> shifts) & mask
        return codes.reshape(-1)[:numel]
    if bits == 3:
        b = packed.reshape(-1, 3).to(torch.int32)
        word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        shifts = torch.arange(0, 24, 3, dtype=torch.int32, device=packed.device)
        return ((word.reshape(-1, 1) >> shifts) & 7).to(torch.uint8).reshape(-1)[:numel]
    raise ValueError(f"cannot unpack {bits}-bit codes; supported 2, 3, 4, 8")
