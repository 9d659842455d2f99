"""numba kernels for Hamming distances on packed uint64 codes (XOR + ``llvm.ctpop``).

Module-level functions, so numba's on-disk cache finds them again in the next process (a kernel
built inside a function closes over the intrinsic, whose pickle changes every process).
"""

from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def popc(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@njit(parallel=True, cache=True)
def pairwise(a, b, out):
    """``out[i, j] = popcount(a[i] ^ b[j])``, four rows of ``a`` per pass over ``b``."""
    na, w = a.shape
    nb = b.shape[0]
    for q in prange((na + 3) // 4):
        i0 = 4 * q
        if i0 + 4 <= na:
            for j in range(nb):
                s0 = s1 = s2 = s3 = 0
                for t in range(w):
                    v = b[j, t]
                    s0 += popc(a[i0, t] ^ v)
                    s1 += popc(a[i0 + 1, t] ^ v)
                    s2 += popc(a[i0 + 2, t] ^ v)
                    s3 += popc(a[i0 + 3, t] ^ v)
                out[i0, j], out[i0 + 1, j], out[i0 + 2, j], out[i0 + 3, j] = s0, s1, s2, s3
        else:
            for i in range(i0, na):
                for j in range(nb):
                    s = 0
                    for t in range(w):
                        s += popc(a[i, t] ^ b[j, t])
                    out[i, j] = s


@njit(parallel=True, cache=True)
def knn(a, b, k, self_offset, out_d, out_i):
    """Row i of ``a`` keeps its k best (distance, index) over ``b``, sorted; strict < keeps the
    lower index on ties. self_offset >= 0: skip j == i + self_offset (a row's own copy)."""
    na, w = a.shape
    nb = b.shape[0]
    for i in prange(na):
        for p in range(k):
            out_d[i, p] = 2147483647
            out_i[i, p] = -1
        worst = 2147483647
        skip = i + self_offset if self_offset >= 0 else -1
        for j in range(nb):
            if j == skip:
                continue
            s = 0
            for t in range(w):
                s += popc(a[i, t] ^ b[j, t])
            if s < worst:
                p = k - 1
                while p > 0 and out_d[i, p - 1] > s:
                    out_d[i, p] = out_d[i, p - 1]
                    out_i[i, p] = out_i[i, p - 1]
                    p -= 1
                out_d[i, p] = s
                out_i[i, p] = j
                worst = out_d[i, k - 1]
